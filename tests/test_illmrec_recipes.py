"""I-LLMRec as the paper and as the official code (issue 13): recipes, prompt framing, the trained input-embedding
matrix, ILA values from feature bullets, and ``llmrec prompts``. Expected strings are written out by hand from
what the official I-LLMRec code (github.com/rlqja1107/torch-I-LLMRec) does, not produced by the code under
test."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import test_illmrec
from conftest import one_error_line
from llmrec.cli import main
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError
from llmrec.models.base import load_model, model_config
from llmrec.training import fit

ill_dataset = test_illmrec.ill_dataset  # fixture
_model = test_illmrec._model

HEAD = (
    "Your job is to recommend a suitable next item based on a user's interacted items. This user has "
    "chronologically interacted with following items: ["
)
ITEMS = "{Title: Item 3, Visual representation: [VISUAL]}, {Title: Item 4, Visual representation: [VISUAL]}"
TAIL = "], where each interacted item's information is contained in curly brackets (i.e.,{}). "
IRE = (
    "Please conduct an analysis of user preferences based on the interacted items, and then generate a "
    "recommendation token for the next item to be consumed: [REC]"
)
ILA = "Please conduct an analysis of user preference, taking into account the interacted items. Based on your analysis, "
VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
BRAND_QUESTIONS = (
    "What brand will this user go for with the next item?",
    "Which brand will the user choose for their next item?",
    "What brand is the user likely to pick for their next purchase?",
    "What brand will the user decide on for their next item?",
    "Which brand could this user go with for their next product?",
)


def _texts(model, enc, row=0):
    """(question text, answer text) of one tokenised row, decoded with every special token kept."""
    tok = model.backbone.tokenizer
    ids = enc["ids"][row][enc["mask"][row].bool()]
    scored = enc["labels"][row][: len(ids)] != -100 if "labels" in enc else torch.zeros(len(ids), dtype=bool)
    return tok.decode(ids[~scored], skip_special_tokens=False), tok.decode(
        ids[scored], skip_special_tokens=False
    )


def test_official_framing_pins_ire_and_ila_text_and_ids(ill_dataset, tiny_llm):
    m = _model(ill_dataset, tiny_llm, prompt_format="official", ila_fields=["brand"])
    tok = m.backbone.tokenizer
    history, target = np.array([3, 4]), np.array([5])
    ire = m.build_ire([history])
    text, _ = _texts(m, ire)
    # raw text, no chat template, tokenised as tokenizer(text): this tokenizer adds no BOS, so there is none
    assert text == HEAD + ITEMS + TAIL + IRE
    ids = ire["ids"][0][ire["mask"][0].bool()].tolist()
    assert ids == tok(HEAD + ITEMS + TAIL + IRE)["input_ids"] and tok.bos_token_id not in ids
    ila = m.build_ila([history], target, np.random.default_rng(0))
    question, answer = _texts(m, ila)
    start = VICUNA + " USER: " + HEAD + ITEMS + TAIL + ILA
    assert question.startswith(start) and question.endswith(" ASSISTANT:")
    assert question[len(start) : -len(" ASSISTANT:")] in BRAND_QUESTIONS
    assert answer == " The brand of the next item to be consumed is 'brand2'<|im_end|>"  # item 5: brand 5 % 3
    ids = ila["ids"][0][ila["mask"][0].bool()].tolist()
    assert ids == tok(question + answer)["input_ids"]  # one call (tests/test_illmrec_tokenisation.py: LLaMA)


def test_chat_framing_is_the_backbone_template_without_an_extra_bos(ill_dataset, tiny_llm):
    m = _model(ill_dataset, tiny_llm)  # recipe llmrec: the chat format
    text, _ = _texts(m, m.build_ire([np.array([3, 4])]))
    assert text == "<|im_start|>user\n" + HEAD + ITEMS + TAIL + IRE + "<|im_end|>\n<|im_start|>assistant\n"
    question, answer = _texts(m, m.build_ila([np.array([3, 4])], np.array([5]), np.random.default_rng(0)))
    assert question.endswith("<|im_end|>\n<|im_start|>assistant\n") and not answer.startswith(" ")


def test_official_framing_shares_no_text_between_ire_and_ila(ill_dataset, tiny_llm):
    m = _model(ill_dataset, tiny_llm, prompt_format="official")
    assert m.prompt_head(["ire"]) == HEAD
    assert m.prompt_head(["ila"]) == VICUNA + " USER: " + HEAD
    assert m.prompt_head(["ire", "ila"]) == ""  # (a tokenizer's own BOS is shared by the tree pass)
    batch = next(m.train_batches(ill_dataset, np.random.default_rng(0)))
    loss = m.loss(batch)  # one pass: same loss as whole prompts, one by one
    with m.switched(one_pass=False, shared_prefix=False):
        assert torch.allclose(loss, m.loss(batch), atol=1e-5)


def test_recipes_set_defaults_and_any_option_overrides(tiny_llm):
    official = model_config("illmrec", {"recipe": "official"})
    expected = {
        "prompt_format": "official",
        "ila_values": "official",
        "window_sampler": "official",
        "negative_sampling": "official",
        "adaptor_ln_eps": 1e-8,
        "rec_init": "xavier_uniform",
        "adaptor_activation": "gelu",
        "scaled_scores": False,
        "max_history_tokens": 3850,
        "max_prompt_tokens": None,
        "lr": 5e-5,
        "batch_size": 8,
        "epochs": 8,
    }
    assert {k: getattr(official, k) for k in expected} == expected
    assert official.backbone.train_embeddings
    paper = model_config("illmrec", {"recipe": "paper"})
    assert (paper.lr, paper.batch_size, paper.adaptor_activation) == (1e-3, 32, "relu")
    assert not paper.backbone.train_embeddings and paper.prompt_format == "official"
    ours = model_config("illmrec", {})
    assert (ours.recipe, ours.prompt_format, ours.lr, ours.scaled_scores) == ("llmrec", "chat", 1e-3, True)
    assert not ours.backbone.train_embeddings
    # an option beside the recipe wins; a nested one merges into the recipe's group
    mixed = model_config("illmrec", {"recipe": "official", "lr": 1e-4, "backbone": {"llm": tiny_llm}})
    assert mixed.lr == 1e-4 and mixed.backbone.train_embeddings and mixed.backbone.llm == tiny_llm
    assert model_config("illmrec", {"recipe": "official", "backbone.train_embeddings": False})
    with pytest.raises(ConfigError, match="recipe 'offical' is not one of"):
        model_config("illmrec", {"recipe": "offical"})


def test_print_config_shows_the_recipe_values(synthetic_dataset, capsys):
    assert (
        main(
            ["train", "illmrec", "--data", str(synthetic_dataset), "-o", "recipe=official", "--print-config"]
        )
        == 0
    )
    options = json.loads(capsys.readouterr().out)["options"]
    assert (
        options["recipe"] == "official" and options["lr"] == 5e-5 and options["prompt_format"] == "official"
    )
    assert options["backbone"]["train_embeddings"] is True


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_embedding_matrix_changes_only_when_trained_and_is_saved_then(
    ill_dataset, tiny_llm, tmp_path, train_embeddings
):
    m = _model(
        ill_dataset, tiny_llm, epochs=1, train_users=8, backbone={"train_embeddings": train_embeddings}
    )
    before = m.backbone.model.get_input_embeddings().weight.detach().clone()  # the pretrained matrices
    head_before = m.backbone.model.get_output_embeddings().weight.detach().clone()
    fit(m, ill_dataset)  # attaches again: a fresh backbone
    embedding = m.backbone.model.get_input_embeddings().weight
    head = m.backbone.model.get_output_embeddings().weight
    assert torch.equal(head, head_before)  # the LM head never trains
    assert torch.equal(embedding, before) != train_embeddings
    for name, p in m.backbone.named_parameters():  # nothing else in the LM trains
        assert p.requires_grad == (train_embeddings and p is embedding), name
    saved = m.checkpoint_state()
    key = [k for k in saved if k.endswith("embed_tokens.weight")]
    assert bool(key) == train_embeddings
    if train_embeddings:
        m.save(tmp_path / "model")
        loaded = load_model(tmp_path / "model", data=ill_dataset)
        assert torch.equal(loaded.backbone.model.get_input_embeddings().weight, embedding)
        assert torch.equal(loaded.backbone.model.get_output_embeddings().weight, head_before)


def test_a_tied_head_is_untied_and_stays_frozen():
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmrec.llm.backbone import Backbone

    torch.manual_seed(0)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            tie_word_embeddings=True,
        )
    )
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    Backbone._train_input_embeddings(lm)
    embedding, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    assert head is not embedding and torch.equal(head, embedding)
    assert embedding.requires_grad and not head.requires_grad and not lm.config.tie_word_embeddings
    lm(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    assert embedding.grad is not None and head.grad is None


def _with_bullets(root):
    """The dataset with Amazon-style items: category paths and feature bullets in ``extra`` (item 5: none)."""
    items = pd.read_parquet(root / "items.parquet")
    items["category"] = [f"Top {i % 2} > Sub {i}" for i in range(len(items))]
    items["extra"] = [
        json.dumps({"feature": [] if i == 5 else [f"bullet {i}a", f"bullet {i}b"]}) for i in range(len(items))
    ]
    items.to_parquet(root / "items.parquet")
    return Dataset(root)


def test_official_ila_values_are_a_random_bullet_and_the_top_category(ill_dataset, tiny_llm):
    ds = _with_bullets(ill_dataset.root)
    m = _model(ds, tiny_llm, ila_values="official")
    rng = np.random.default_rng(0)
    texts = m._texts
    seen = {m.ila_value(texts[7], "description", rng) for _ in range(50)}
    assert seen == {"bullet 7a", "bullet 7b"}
    assert m.ila_value(texts[7], "category", rng) == "Top 1"
    assert m.ila_value(texts[5], "description", rng) == ""  # answered 'Unknown', as the official code
    assert m.ila_value(texts[7], "title", rng) == texts[7].title
    full = _model(ds, tiny_llm)
    assert full.ila_value(texts[7], "description", rng) == "desc 7"
    assert full.ila_value(texts[7], "category", rng) == "Top 1 > Sub 7"
    plain = _model(ill_dataset, tiny_llm, ila_values="official")  # a dataset without bullets: the description
    assert plain.ila_value(plain._texts[7], "description", rng) == "desc 7"


def test_history_token_cap(ill_dataset, tiny_llm):
    m = _model(ill_dataset, tiny_llm, max_history_tokens=40, max_prompt_tokens=None)
    _, lengths = m.rendered()
    history = np.arange(10)
    enc = m.build_ire([history])
    kept = _texts(m, enc)[0].count("{Title: ")
    assert 0 < kept < 10 and lengths[history[-kept:]].sum() <= 40 < lengths[history[-kept - 1 :]].sum()


def test_prompts_command_prints_each_prompt_with_token_counts(ill_dataset, tiny_llm, capsys):
    args = ["prompts", "illmrec", "--data", str(ill_dataset.root), "-o", f"backbone.llm={tiny_llm}"]
    assert main([*args, "-o", "prompt_format=official", "--user", "u3", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["user"] == "u3"
    names = [p["name"] for p in shown["prompts"]]
    assert names == [
        "training: IRE prompt",
        "training: ILA question and answer",
        "evaluation: IRE prompt (test)",
    ]
    ire, ila, test = shown["prompts"]
    assert ire["text"].startswith(HEAD) and ire["text"].endswith(IRE)  # this tokenizer adds no BOS
    assert ila["text"].startswith(VICUNA) and ila["answer"].endswith("<|im_end|>")
    assert test["history_items"] == 10 and ire["answer_tokens"] == 0 < ila["answer_tokens"]
    # in training the IRE and ILA prompts share no text; at test the instruction is computed once
    assert ire["constant_prefix_tokens"] == 0 and test["constant_prefix_tokens"] > 1
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "=== training: IRE prompt (" in out and "<|im_start|>user" in out and "--- answer (" in out
    assert main([*args, "--user", "nobody"]) == 2
    assert "no user 'nobody'" in one_error_line(capsys, "prompts")
    ctr = ["prompts", "tallrec", "--data", str(ill_dataset.root), "-o", f"backbone.llm={tiny_llm}", "--json"]
    assert main([*ctr, "--user", "u3"]) == 0
    [tallrec] = json.loads(capsys.readouterr().out)["prompts"]
    assert tallrec["text"].startswith(
        "<|im_start|>user\n#Question: A user has given high ratings to the following"
    )
    assert tallrec["label"] in ("Yes", "No") and tallrec["constant_prefix_tokens"] > 0
    assert main(["prompts", "sasrec", "--data", str(ill_dataset.root)]) == 2
    assert "builds no LLM prompt" in one_error_line(capsys, "prompts")


@pytest.mark.parametrize(
    "recipe, optimizer, betas, peak, last, validated, embeddings",
    [
        ("llmrec", torch.optim.Adam, (0.9, 0.98), 1e-3, 1e-3, True, False),
        ("official", torch.optim.AdamW, (0.9, 0.999), 5e-5, 0.0, False, True),
        ("paper", torch.optim.AdamW, (0.9, 0.999), 1e-3, 0.0, False, False),
    ],
)
def test_each_recipe_trains_with_its_optimiser_schedule_and_parameters(
    ill_dataset, tiny_llm, monkeypatch, recipe, optimizer, betas, peak, last, validated, embeddings
):
    """What the trainer really runs under each recipe: the optimiser, its betas, the lr at the first and after
    the last step (linear decay to 0), clipping, validation or none, and whether the embedding matrix trains."""
    import llmrec.training.loop as loop

    seen: dict = {"lrs": [], "validations": 0, "clipped": 0}
    steps = {cls: cls.step for cls in (torch.optim.Adam, torch.optim.AdamW)}

    def record_step(opt, *a, **kw):
        seen.update(opt=opt)
        seen["lrs"].append(opt.param_groups[0]["lr"])
        return steps[type(opt)](opt, *a, **kw)

    def count_validations(*a, **kw):
        seen["validations"] += 1
        return validate(*a, **kw)

    validate, clip = loop.validate, torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.optim.Adam, "step", record_step)
    monkeypatch.setattr(torch.optim.AdamW, "step", record_step)
    monkeypatch.setattr(loop, "validate", count_validations)
    monkeypatch.setattr(
        torch.nn.utils,
        "clip_grad_norm_",
        lambda *a, **kw: seen.update(clipped=seen["clipped"] + 1) or clip(*a, **kw),
    )
    m = _model(ill_dataset, tiny_llm, recipe=recipe, epochs=2, train_users=16, batch_size=8, eval_users=8)
    fit(m, ill_dataset)
    opt = seen["opt"]
    assert type(opt) is optimizer and opt.param_groups[0]["betas"] == betas
    assert seen["lrs"][0] == pytest.approx(peak) and len(seen["lrs"]) == 4  # 2 epochs x 2 batches
    assert opt.param_groups[0]["lr"] == pytest.approx(last)  # after the last step: decayed to 0, or constant
    if last == 0.0:
        assert seen["lrs"] == pytest.approx([peak * (1 - i / 4) for i in range(4)])
    assert (seen["validations"] > 0) == validated and (seen["clipped"] == 4) == (not validated)
    trains = {
        n for group in opt.param_groups for p in group["params"] for n, q in m.named_parameters() if q is p
    }
    assert any(n.endswith("embed_tokens.weight") for n in trains) == embeddings
