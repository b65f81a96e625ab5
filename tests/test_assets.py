"""Backbone loading: local folders and GGUF files, with the one-time safetensors cache."""

import time

import pytest
import torch

from llmrec.assets import DEFAULT_LLM, load_causal_lm, smollm2_gguf


def test_local_causal_lm_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {
        "[UNK]": 0,
        "<s>": 1,
        "</s>": 2,
        **{w: i + 3 for i, w in enumerate(["yes", "no", "the", "movie", "user"])},
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    fast.save_pretrained(tmp_path / "tiny")
    model, tokenizer = load_causal_lm(str(tmp_path / "tiny"))
    ids = tokenizer("the movie", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], len(vocab))
    assert model.dtype == torch.float32


@pytest.mark.slow
def test_default_gguf_backbone_is_cached_and_knows_facts(tmp_path, monkeypatch):
    model, tok = load_causal_lm(
        DEFAULT_LLM
    )  # first call may convert the GGUF (about 25 s), later ones read the cache
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])
    t0 = time.perf_counter()
    again, _ = load_causal_lm(str(smollm2_gguf()))  # the same GGUF named by path hits the same cache
    assert time.perf_counter() - t0 < 5.0
    with torch.inference_mode():
        emb = model.get_input_embeddings()(ids["input_ids"])
        torch.testing.assert_close(model(inputs_embeds=emb).logits, again(**ids).logits)
