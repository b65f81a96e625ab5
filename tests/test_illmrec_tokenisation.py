"""I-LLMRec's official framing tokenises exactly as the official code's ``tokenizer(text)``: LLaMA-style
SentencePiece/Metaspace tokenizers built offline (``legacy`` True and False, and a LLaMA-2-style tokenizer.json
with a Prepend/Replace normaliser and a BOS post-processor), and SmolLM2 (no BOS). The expected ids are the
tokenizer's own answer for the official text, written out by hand, never the code under test's."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import test_illmrec
from llmrec.assets import DEFAULT_LLM
from test_illmrec_recipes import BRAND_QUESTIONS, HEAD, ILA, IRE, ITEMS, TAIL, VICUNA

ill_dataset = test_illmrec.ill_dataset  # fixture
_model = test_illmrec._model

CORPUS = [HEAD, TAIL, IRE, VICUNA, "USER: ASSISTANT: The brand of the next item to be consumed is Title Item"]


def _vocab(corpus: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small BPE vocabulary over Metaspace words (SentencePiece's '▁'), <unk> <s> </s> first (LLaMA's ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.train_from_iterator(
        corpus * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
    )
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def _tokenizer(kind: str, corpus: list[str]):
    """legacy / non-legacy: transformers' LlamaTokenizer (Metaspace pre-tokenizer, prepend scheme 'always' /
    'first'); llama2: a tokenizer.json as LLaMA-2's (Prepend + Replace normaliser, no pre-tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    vocab, merges = _vocab(corpus)
    if kind == "llama2":
        backend = Tokenizer(
            models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
        )
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
        backend.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    else:
        llama = LlamaTokenizer(vocab=vocab, merges=merges, legacy=kind == "legacy", add_bos_token=True)
        backend = llama.backend_tokenizer
    # saved as its tokenizer.json, so the folder reloads with exactly this pre-tokenizer and post-processor
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def llama_folder(folder, kind: str, corpus: list[str]) -> str:
    """A random 2-layer LLaMA (hidden 32) with a LLaMA-style tokenizer of ``kind`` (legacy, non-legacy,
    llama2) over ``corpus`` that adds a BOS, saved in ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer(kind, corpus)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module", params=["legacy", "non-legacy", "llama2"])
def llama_llm(request, tmp_path_factory):
    """I-LLMRec's prompts' words under each LLaMA-style tokenizer."""
    return llama_folder(tmp_path_factory.mktemp(f"llama-{request.param}"), request.param, CORPUS)


def _row(enc, i=0) -> list[int]:
    return enc["ids"][i][enc["mask"][i].bool()].tolist()


def _check_official_ids(m) -> None:
    """IRE and ILA ids of a 2-item history are ``tokenizer(text)`` of the official text; the ILA labels mask
    exactly the question's tokens and keep the answer and its EOS."""
    tok = m.backbone.tokenizer
    ire = m.build_ire([np.array([3, 4])])
    ids = _row(ire)
    assert ids == tok(HEAD + ITEMS + TAIL + IRE)["input_ids"]
    if tok.bos_token_id is not None and tok("x")["input_ids"][0] == tok.bos_token_id:
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert ids.count(m.backbone.token_ids["[VISUAL]"]) == 2 and ids.count(m.backbone.token_ids["[REC]"]) == 1
    ila = m.build_ila([np.array([3, 4])], np.array([5]), np.random.default_rng(0))
    ids, labels = _row(ila), ila["labels"][0][: len(_row(ila))].tolist()
    answer = " The brand of the next item to be consumed is 'brand2'" + tok.eos_token  # item 5: brand 5 % 3
    # the question: one of the five brand templates (drawn at random)
    questions = [f"{VICUNA} USER: {HEAD}{ITEMS}{TAIL}{ILA}{q} ASSISTANT:" for q in BRAND_QUESTIONS]
    matches = [q for q in questions if tok(q + answer)["input_ids"] == ids]  # one call: question, answer, EOS
    assert len(matches) == 1
    asked = len(tok(matches[0])["input_ids"])
    assert labels[:asked] == [-100] * asked and labels[asked:] == ids[asked:]
    assert ids[-1] == tok.eos_token_id


def test_official_framing_ids_are_the_tokenizers_own(ill_dataset, llama_llm):
    """Regression: the BOS was prepended as a string and the text tokenised without special tokens, so a
    legacy=False tokenizer split the first word ('You', 'r' here; 'Y', 'our' with LLaMA's vocabulary), and
    the answer tokenised apart gained a '▁' at the boundary (LLaMA-2 style)."""
    m = _model(ill_dataset, llama_llm, prompt_format="official", ila_fields=["brand"])
    tok = m.backbone.tokenizer
    assert tok.convert_ids_to_tokens(_row(m.build_ire([np.array([3, 4])]))[:2]) == ["<s>", "▁Your"]
    _check_official_ids(m)


def test_answers_are_never_cut_before_their_eos(ill_dataset, llama_llm, tiny_llm):
    """Official framing: a long answer is whole (the history makes room); chat framing: cut to 96 tokens
    and then its EOS (regression: the EOS was cut off with the 97th token)."""
    long = " ".join(["a suitable next item for this user"] * 30)  # far more than 96 tokens
    for llm, framing in ((llama_llm, "official"), (tiny_llm, "chat")):
        m = _model(ill_dataset, llm, prompt_format=framing, ila_fields=["description"])
        m._texts[5] = dataclasses.replace(m._texts[5], description=long)
        ila = m.build_ila([np.array([3, 4])], np.array([5]), np.random.default_rng(0))
        ids, labels = _row(ila), ila["labels"][0][: len(_row(ila))].tolist()
        scored = [x for x in labels if x != -100]
        assert scored[-1] == m.backbone.tokenizer.eos_token_id == ids[-1]
        if framing == "official":
            assert len(scored) > 150 and long in m.backbone.tokenizer.decode(scored)
        else:
            assert len(scored) == 97


def test_shared_prefix_holds_the_bos_once_and_stays_exact(ill_dataset, llama_llm):
    """With a tokenizer that adds a BOS, the constant start computed once starts with it (once), and the
    one-pass, shared-prefix training loss and test states equal those of whole prompts run one by one."""
    m = _model(ill_dataset, llama_llm, prompt_format="official")
    tok = m.backbone.tokenizer
    batch = next(m.train_batches(ill_dataset, np.random.default_rng(0)))
    loss = m.loss(batch)
    with m.switched(one_pass=False, shared_prefix=False):
        assert torch.allclose(loss, m.loss(batch), atol=1e-5)
    m.eval()
    histories = [np.array([3, 4, 7]), np.array([1, 2])]
    with torch.no_grad():
        shared = m.prompt_states(histories)
        assert m.backbone.prefixes, "the IRE prompts' constant start was not shared"
        ids = m.backbone.prefixes[-1].ids
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert len(ids) > 10  # BOS + the instruction's words
        with m.switched(shared_prefix=False):
            torch.testing.assert_close(shared, m.prompt_states(histories), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_smollm2_official_ids_are_the_tokenizers_own(ill_dataset):
    """SmolLM2 (its tokenizer adds no BOS): the official framing's ids are ``tokenizer(text)``, no BOS."""
    m = _model(ill_dataset, DEFAULT_LLM, prompt_format="official", ila_fields=["brand"])
    assert (
        m.backbone.tokenizer("x")["input_ids"]
        == m.backbone.tokenizer("x", add_special_tokens=False)["input_ids"]
    )
    _check_official_ids(m)
