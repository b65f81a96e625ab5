"""Backbone loading: local folders and GGUF files, with the one-time safetensors cache."""

import time

import pytest
import torch

from llmrec.assets import DEFAULT_LLM, load_causal_lm, smollm2_gguf


def test_local_causal_lm_folder(tiny_llm):
    model, tokenizer = load_causal_lm(tiny_llm)  # a random 2-layer Llama saved as a folder (conftest)
    ids = tokenizer("the movie", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    assert model.dtype == torch.float32 and model.config.num_hidden_layers == 2


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
