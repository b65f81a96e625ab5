"""Every CTR preset's prompt, pinned character for character for one fixed example.

The expected texts below are written out by hand from HistLLM's Appendix A.1 (Fig. 6-8) and A.3
(Fig. 11-12), with the example's titles, descriptions and codes in the placeholders; they are not produced
by llmrec. Where the appendix leaves a choice open (our choices, listed in docs/explanations/histllm.md under "What the paper
does not fix"): titles in double quotes and items joined by ", " (CoLLM's public code), descriptions
unquoted and joined the same way, and HistLLM's own prompt (Fig. 3 prints none). "\\n#Answer:" is a
backslash and an "n", as printed (and as in CoLLM's prompt files). A registered preset without a pin
here fails ``test_every_preset_has_a_pin``.

The example: user 3 liked Heat, Fargo and Toy Story (oldest first) and the target is Alien.
"""

import json
import logging

import numpy as np
import pytest
import torch

from llmrec.data.dataset import Dataset
from llmrec.errors import LlmrecError
from llmrec.features.store import ids_checksum, save_feature
from llmrec.models.base import build_model, load_model
from llmrec.models.llm.ctr_presets import PRESETS
from llmrec.training import fit

USER, HISTORY, TARGET = 3, [5, 6, 7], 9
ITEMS = {  # item index: (title, description)
    5: ("Heat (1995)", "A master thief and a driven detective face off in Los Angeles."),
    6: ("Fargo (1996)", "A pregnant police chief investigates a botched kidnapping in snowy Minnesota."),
    7: ("Toy Story (1995)", "Toys come to life and compete for their owner's attention."),
    9: ("Alien (1979)", "The crew of a space freighter is hunted by a deadly alien creature."),
}
USER_CODE, ITEM_CODE = "00000011", "10001001"  # BinLLM's 0/1 codes of user 3 and item 9 (set below)

# The prompts as the appendix prints them, the example written in.
TALLREC = (  # Fig. 6
    '#Question: A user has given high ratings to the following movies: "Heat (1995)", "Fargo (1996)", '
    '"Toy Story (1995)". Leverage the information to predict whether the user would enjoy the movie titled '
    '"Alien (1979)" Answer with "Yes" or "No". \\n#Answer:'
)
TALLREC_DESC = (  # Fig. 8
    "#Question: A user has given high ratings to the following movies: A master thief and a driven detective "
    "face off in Los Angeles., A pregnant police chief investigates a botched kidnapping in snowy Minnesota., "
    "Toys come to life and compete for their owner's attention.. Leverage the information to predict whether "
    "the user would enjoy the movie with the description as follows: The crew of a space freighter is hunted "
    'by a deadly alien creature. Answer with "Yes" or "No". \\n#Answer:'
)
TALLREC_IMAGE = (  # Fig. 7
    '#Question: A user has given high ratings to the following movies: "Heat (1995)"[VISUAL], '
    '"Fargo (1996)"[VISUAL], "Toy Story (1995)"[VISUAL]. Leverage the information to predict whether the '
    'user would enjoy the movie titled "Alien (1979)"[VISUAL] Answer with "Yes" or "No". \\n#Answer:'
)
COLLM = (  # Fig. 11
    '#Question: A user has given high ratings to the following movies: "Heat (1995)", "Fargo (1996)", '
    '"Toy Story (1995)". Additionally, we have information about the user\'s preferences encoded in the '
    "feature [USERID]. Using all available information, make a prediction about whether the user would "
    'enjoy the movie titled "Alien (1979)" with the feature [ITEMID]? Answer with "Yes" or "No". \\n#Answer:'
)
COLLM_IMAGE = (  # Fig. 12
    '#Question: A user has given high ratings to the following movies: "Heat (1995)"[VISUAL], '
    '"Fargo (1996)"[VISUAL], "Toy Story (1995)"[VISUAL]. Additionally, we have information about the '
    "user's preferences encoded in the feature [USERID]. Using all available information, make a prediction "
    'about whether the user would enjoy the movie titled "Alien (1979)"[VISUAL] with the feature [ITEMID]? '
    'Answer with "Yes" or "No". \\n#Answer:'
)
BINLLM = (  # Fig. 11, the features written as BinLLM's text codes
    '#Question: A user has given high ratings to the following movies: "Heat (1995)", "Fargo (1996)", '
    '"Toy Story (1995)". Additionally, we have information about the user\'s preferences encoded in the '
    "feature 00000011. Using all available information, make a prediction about whether the user would "
    'enjoy the movie titled "Alien (1979)" with the feature 10001001? Answer with "Yes" or "No". \\n#Answer:'
)
BINLLM_IMAGE = (  # Fig. 12, same
    '#Question: A user has given high ratings to the following movies: "Heat (1995)"[VISUAL], '
    '"Fargo (1996)"[VISUAL], "Toy Story (1995)"[VISUAL]. Additionally, we have information about the '
    "user's preferences encoded in the feature 00000011. Using all available information, make a prediction "
    'about whether the user would enjoy the movie titled "Alien (1979)"[VISUAL] with the feature 10001001? '
    'Answer with "Yes" or "No". \\n#Answer:'
)
HISTLLM = (  # ours (Fig. 3 prints no text): the CoLLM form, the history as [HIST], the target's KE text + image
    "#Question: A user has given high ratings to the following movies: [HIST]. Additionally, we have "
    "information about the user's preferences encoded in the feature [USERID]. Using all available "
    "information, make a prediction about whether the user would enjoy the movie with the description as "
    "follows: The crew of a space freighter is hunted by a deadly alien creature.[VISUAL] with the feature "
    '[ITEMID]? Answer with "Yes" or "No". \\n#Answer:'
)

# preset: (the prompt it trains and scores on, its step-1 prompt: TALLRec's for a two-step model, Sec. 3.3)
EXPECTED = {
    "tallrec": (TALLREC, TALLREC),
    "tallrec_desc": (TALLREC_DESC, TALLREC_DESC),
    "tallrec_image": (TALLREC_IMAGE, TALLREC),
    "collm": (COLLM, TALLREC),
    "collm_image": (COLLM_IMAGE, TALLREC),
    "binllm": (BINLLM, BINLLM),
    "binllm_image": (BINLLM_IMAGE, BINLLM),
    "histllm": (HISTLLM, TALLREC),
}


def chatml(question: str) -> str:
    """The question as the test LM's ChatML template wraps it (conftest.CHATML), ready for the answer."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
def example_dataset(synthetic_dataset):
    """The synthetic dataset with the example's titles and descriptions, an image and MF features."""
    ds = Dataset(synthetic_dataset)
    for i, (title, description) in ITEMS.items():
        ds.items.loc[i, ["title", "description"]] = [title, description]
    rng = np.random.default_rng(0)
    items = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    users = {"kind": "user", "encoder": "test", "ids_sha256": ids_checksum(ds.users["user_id"].tolist())}
    save_feature(ds.features_dir, "image", rng.normal(size=(ds.n_items, 6)).astype(np.float32), items)
    save_feature(ds.features_dir, "mf_item", rng.normal(size=(ds.n_items, 8)).astype(np.float32), items)
    save_feature(ds.features_dir, "mf_user", rng.normal(size=(ds.n_users, 8)).astype(np.float32), users)
    return ds


def attached(name, ds, tiny_llm, chat_template=True, **options):
    opts = {
        **options,
        "mapper_hidden": 16,
        "encoder_dim": 16,
        "binary_bits": 8,
        "description_texts": None,  # KE texts = the items' own descriptions (the example's)
        "max_text_tokens": 400,  # nothing is cut: the tiny test tokenizer spends a token on almost every byte
        "backbone": {"llm": tiny_llm, "lora": True, "chat_template": chat_template},
    }
    torch.manual_seed(0)
    model = build_model(name, opts, ds.n_users, ds.n_items)
    model.attach(ds)
    if model.cfg.cf == "binary":
        # codes fixed here so the pins can be written by hand (how codes derive from MF: test_histllm.py)
        model.user_codes = [f"{u:08b}" for u in range(ds.n_users)]
        model.item_codes = [f"1{i:07b}" for i in range(ds.n_items)]
        assert (model.user_codes[USER], model.item_codes[TARGET]) == (USER_CODE, ITEM_CODE)
    return model


def test_every_preset_has_a_pin():
    assert set(EXPECTED) == set(PRESETS) | {"histllm"}


def raw(question: str) -> str:
    """The question as ``prompt_format=raw`` (``recipe=paper``) feeds it: the bare text; the test tokenizer
    puts no BOS before a text (a LLaMA tokenizer would: see test_raw_framing_keeps_the_tokenizers_bos)."""
    return question


FRAMINGS = {  # option(s) -> how the pinned question is framed
    "chat": ({}, chatml),  # llmrec's default
    "raw": ({"prompt_format": "raw"}, raw),
    "recipe=paper": ({"recipe": "paper"}, raw),
}


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
@pytest.mark.parametrize("name", sorted(set(PRESETS) | {"histllm"}))
def test_preset_prompt_is_the_appendix_text(name, framing, example_dataset, tiny_llm):
    """The exact text of the example under each framing (chat-wrapped by default; raw under recipe=paper), at
    both steps, and the tokens :meth:`prompts` feeds the LM decode back to it with one token per placeholder."""
    full, step1 = EXPECTED[name]
    options, framed = FRAMINGS[framing]
    model = attached(name, example_dataset, tiny_llm, **options)
    assert model.cfg.prompt_format == ("chat" if framing == "chat" else "raw")
    assert model.prompt_text(USER, np.array(HISTORY), TARGET) == framed(full)
    assert model.prompt_text(USER, np.array(HISTORY), TARGET, step=1) == framed(step1)
    batch = model.prompts(np.array([USER]), [np.array(HISTORY)], np.array([TARGET]))
    tok = model.backbone.tokenizer
    assert tok.decode(batch["ids"][0][batch["mask"][0].bool()]) == framed(full)
    for placeholder, token in model.backbone.token_ids.items():
        assert int((batch["ids"] == token).sum()) == full.count(placeholder), placeholder
    if framing == "chat":
        bare = attached(name, example_dataset, tiny_llm, chat_template=False)
        assert bare.prompt_text(USER, np.array(HISTORY), TARGET) == full


def test_the_answer_is_read_where_each_framing_puts_it(example_dataset, tiny_llm):
    """chat: the first token of "Yes" right after the assistant header; raw: the token after "#Answer:"
    (" Yes", with its space, as the paper's "#Answer: Yes")."""
    chat = attached("tallrec", example_dataset, tiny_llm)
    paper = attached("tallrec", example_dataset, tiny_llm, recipe="paper")
    tok = chat.backbone.tokenizer
    answers = {"Yes": [], "No": []}
    for word in answers:
        answers[word] = [
            tok(chatml(TALLREC) + word, add_special_tokens=False)["input_ids"][
                len(tok(chatml(TALLREC))["input_ids"])
            ],
            tok(TALLREC + " " + word, add_special_tokens=False)["input_ids"][len(tok(TALLREC)["input_ids"])],
        ]
    assert chat.answer_ids == [answers["Yes"][0], answers["No"][0]]
    assert paper.answer_ids == [answers["Yes"][1], answers["No"][1]]
    assert paper.answer_ids != chat.answer_ids  # " Yes" and "Yes" are other tokens


def test_a_step1_lora_is_not_shared_across_framings(example_dataset, tiny_llm):
    """step1_from compares step-1 signatures: a LoRA trained on chat-wrapped prompts is not reused under
    recipe=paper (raw) or back; a chat-framed signature is what it was before the option (old runs match)."""
    chat = attached("collm", example_dataset, tiny_llm).step1_signature()
    paper = attached("collm", example_dataset, tiny_llm, recipe="paper").step1_signature()
    assert chat != paper and "prompt_format" not in chat and paper["prompt_format"] == "raw"
    assert attached("tallrec", example_dataset, tiny_llm, recipe="paper").step1_signature() == paper


def test_raw_framing_keeps_the_tokenizers_bos(example_dataset, tiny_llm):
    """A tokenizer that puts a BOS before every text (LLaMA's <s>, as in CoLLM's code) keeps it under the raw
    framing, once, added by the tokenizer (never written into the text: test_ctr_tokenisation.py)."""
    from tokenizers.processors import TemplateProcessing

    model = attached("histllm", example_dataset, tiny_llm, recipe="paper")
    tok = model.backbone.tokenizer
    bos = tok.bos_token
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)]
    )
    assert model.prompt_text(USER, np.array(HISTORY), TARGET) == HISTLLM
    batch = model.prompts(np.array([USER]), [np.array(HISTORY)], np.array([TARGET]))
    assert int((batch["ids"][0] == tok.bos_token_id).sum()) == 1 and batch["ids"][0, 0] == tok.bos_token_id
    assert model.framed_prefix(model.instruction_head) == model.instruction_head


@pytest.mark.parametrize("framing", ["chat", "recipe=paper"])
def test_constant_prefix_scores_equal_under_both_framings(framing, example_dataset, tiny_llm):
    """The constant instruction start, computed once (shared_prefix), gives the scores of whole prompts under
    either framing, and it covers the instruction up to the history."""
    options, _ = FRAMINGS[framing]
    users, histories, targets = (
        np.array([USER, USER]),
        [np.array(HISTORY), np.array(HISTORY[:1])],
        np.array([9, 5]),
    )
    scores = {}
    for shared in (True, False):
        model = attached("histllm", example_dataset, tiny_llm, shared_prefix=shared, **options)
        model.eval()
        with torch.no_grad():
            batch = model.prompts(users, histories, targets)
            scores[shared] = model.answer_logits(batch)
            head = model.framed_prefix(model.instruction_head)
            prefix = model.backbone.constant_prefix(head, [(batch["ids"], batch["mask"])])
        if shared:  # the whole instruction start (its last token may merge with what follows)
            assert (
                prefix is not None and len(prefix) >= len(model.backbone.tokenize([head])["input_ids"][0]) - 1
            )
            assert model.backbone.prefixes  # and answer_logits used it
    torch.testing.assert_close(scores[True], scores[False], rtol=1e-4, atol=1e-5)


def test_print_config_shows_the_recipe_and_an_option_wins_over_it(example_dataset, capsys):
    from llmrec.cli import main

    def config(*options):
        args = ["train", "collm", "--data", str(example_dataset.root), "--print-config"]
        for o in options:
            args += ["-o", o]
        assert main(args) == 0
        return json.loads(capsys.readouterr().out)["options"]

    assert (config()["recipe"], config()["prompt_format"]) == ("llmrec", "chat")
    assert (config("recipe=paper")["recipe"], config("recipe=paper")["prompt_format"]) == ("paper", "raw")
    over = config("recipe=paper", "prompt_format=chat", "backbone.lora_r=4")
    assert (over["recipe"], over["prompt_format"], over["backbone"]["lora_r"]) == ("paper", "chat", 4)
    assert over["backbone"]["lora_alpha"] == 16  # a nested option keeps the other backbone values


def test_only_the_most_recent_history_len_items_are_shown(example_dataset, tiny_llm):
    model = attached("tallrec", example_dataset, tiny_llm, chat_template=False, history_len=2)
    text = model.prompt_text(USER, np.array(HISTORY), TARGET)
    assert text == TALLREC.replace('"Heat (1995)", ', "")


def test_a_model_saved_under_other_prompt_words_warns_and_lends_no_lora(
    example_dataset, tiny_llm, tmp_path, caplog
):
    """A model saved before the prompts followed the appendix (its step-1 signature holds no or other prompt
    words) still loads, with a warning; its LoRA is not reused as another model's step 1."""
    small = {"train_examples": 16, "eval_examples": 16, "epochs": 1, "step1_epochs": 1}
    tallrec = attached("tallrec", example_dataset, tiny_llm, **small)
    fit(tallrec, example_dataset)
    tallrec.save(tmp_path / "tallrec")
    with caplog.at_level(logging.WARNING, logger="llmrec.models.llm.histllm"):
        load_model(tmp_path / "tallrec")
    assert "prompt words differ" not in caplog.text
    sources = tmp_path / "tallrec" / "sources.json"
    record = json.loads(sources.read_text())
    del record["step1"]["prompt"]  # as saved before the step-1 signature carried the prompt words
    sources.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="llmrec.models.llm.histllm"):
        load_model(tmp_path / "tallrec")
    assert "its step-1 prompt words differ from those llmrec writes now" in caplog.text
    collm = attached("collm", example_dataset, tiny_llm, step1_from=str(tmp_path / "tallrec"), **small)
    with pytest.raises(LlmrecError, match="step-1 prompt"):
        fit(collm, example_dataset)


# Tokens of each pinned prompt under the offline default LLM (SmolLM2-135M-Instruct; each placeholder one
# token), chat-framed (its chat template with its system turn) and raw (recipe=paper: the bare text; SmolLM2's
# tokenizer adds no BOS). Recorded from the tokenizer, not derived by hand: a change means the tokenizer or
# the framing changed.
SMOLLM2_TOKENS = {  # preset: (chat, raw)
    "tallrec": (108, 78),
    "tallrec_desc": (132, 102),
    "tallrec_image": (115, 85),
    "collm": (134, 104),
    "collm_image": (141, 111),
    "binllm": (148, 118),
    "binllm_image": (155, 125),
    "histllm": (122, 92),
}


@pytest.mark.slow
def test_prompt_token_counts_with_the_default_llm():
    from llmrec.llm.backbone import Backbone, BackboneConfig

    backbone = Backbone(BackboneConfig())
    counts = {
        name: tuple(
            len(backbone.tokenize([frame(full)], special_tokens=raw)["input_ids"][0])
            for frame, raw in ((backbone.chat, False), (str, True))
        )
        for name, (full, _) in EXPECTED.items()
    }
    assert counts == SMOLLM2_TOKENS
    assert backbone.encode("x", True) == backbone.encode("x")  # no BOS: SmolLM2's tokenizer puts none
    # the answer: "Yes" after the chat template's assistant header, " Yes" after the raw "#Answer:"
    tokens = backbone.tokenizer.convert_ids_to_tokens
    assert tokens([backbone.answer_token_id("Yes")]) == ["Yes"]
    assert tokens([backbone.answer_token_id("Yes", TALLREC)]) == ["\u0120Yes"]


@pytest.mark.parametrize("framing", ["chat", "recipe=paper"])
def test_prompts_command_shows_the_models_framing(framing, example_dataset, tiny_llm, capsys):
    """`llmrec prompts collm` prints the prompt the model reads: chat-wrapped, or raw under recipe=paper."""
    from llmrec.cli import main

    args = ["prompts", "collm", "--data", str(example_dataset.root), "-o", f"backbone.llm={tiny_llm}"]
    args += ["-o", "description_texts=null", "--json"] + (["-o", "recipe=paper"] if framing != "chat" else [])
    assert main(args) == 0
    shown = json.loads(capsys.readouterr().out)["prompts"]
    step1, full = shown[0]["text"], shown[1]["text"]
    for text in (step1, full):
        assert text.endswith(
            'Answer with "Yes" or "No". \\n#Answer:'
            + ("<|im_end|>\n<|im_start|>assistant\n" if framing == "chat" else "")
        )
        assert text.startswith("<|im_start|>user\n#Question: " if framing == "chat" else "#Question: ")
    assert (
        shown[1]["constant_prefix_tokens"] > 0
    )  # the instruction start is computed once under either framing
