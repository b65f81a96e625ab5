"""One LLM pass per training step: the shared history of the IRE and ILA prompts runs once (tree attention
mask), the constant prompt start comes from its cached KV. The reference is the two-pass path as it was:
one full forward per prompt, ILA through the LM's own loss (every position's logits).

Tolerances: fp32, a 2-layer LM; the one-pass path reorders sums (attention over a packed row with masked
columns, logits only at the answer) and nothing else, so losses agree to ~1e-6 and gradients to ~1e-5
relative; we allow 1e-5 on losses and 1e-4 (relative to the largest entry of each gradient) on gradients.
"""

import functools
import json
import logging

import numpy as np
import pytest
import torch

import test_histllm
import test_illmrec
from llmrec.experiments.training_bench import two_pass_loss
from llmrec.models.base import build_model

ill_dataset = test_illmrec.ill_dataset  # fixture


def model_and_batch(
    ds, llm, lora, representation="image", batch_size=6, seed=0, checkpointing=False, **options
):
    torch.manual_seed(0)
    opts = {
        "adaptor_hidden": 16,
        "d_shared": 8,
        "batch_size": batch_size,
        "representation": representation,
        "backbone": {"llm": llm, "lora": lora, "lora_dropout": 0.0, "gradient_checkpointing": checkpointing},
        **options,
    }
    model = build_model("illmrec", opts, ds.n_users, ds.n_items)
    model.attach(ds)
    if lora:  # LoRA B starts at zero: give it values so the check covers the adapted LM
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    batch = next(model.train_batches(ds, np.random.default_rng(seed)))
    return model.train(), batch


def loss_and_grads(model, fn, batch):
    model.zero_grad()
    loss = fn(batch)
    loss.backward()
    grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
    return loss.item(), {n: g.clone() for n, g in grads.items() if model.get_parameter(n).requires_grad}


def assert_same(got, want, loss_tol=1e-5, grad_tol=1e-4):
    (loss_a, grads_a), (loss_b, grads_b) = got, want
    assert abs(loss_a - loss_b) <= loss_tol * max(1.0, abs(loss_b)), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_b:
        scale = float(grads_b[name].abs().max()) or 1.0
        err = float((grads_a[name] - grads_b[name]).abs().max()) / scale
        assert err <= grad_tol, f"{name}: relative gradient error {err:.2e}"


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("representation", ["image", "cf"])
def test_one_pass_equals_two_passes(ill_dataset, tiny_llm, lora, representation):
    model, batch = model_and_batch(ill_dataset, tiny_llm, lora, representation)
    lengths = batch["ire_mask"].sum(1)
    assert len(set(lengths.tolist())) > 2  # mixed history lengths, right padding
    want = loss_and_grads(model, lambda b: two_pass_loss(model, b), batch)
    assert any("lora_" in n for n in want[1]) == lora
    used = "adaptor.0.weight" if representation == "image" else "cf_adaptor.0.weight"
    assert float(want[1][used].abs().max()) > 0  # gradients reach the history's tokens
    for one_pass in (True, False):
        for shared_prefix in (True, False):
            with model.switched(one_pass=one_pass, shared_prefix=shared_prefix):
                assert_same(loss_and_grads(model, model.loss, batch), want)


def test_the_packed_row_shares_the_history_and_caches_the_prefix(ill_dataset, tiny_llm):
    """What makes it cheaper: each row's history runs once, and the constant prefix's KV is reused."""
    model, batch = model_and_batch(ill_dataset, tiny_llm, lora=False)
    seen = []
    decoder = model.backbone.model.get_decoder()
    hook = decoder.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    try:
        model.loss(batch)
        model.loss(batch)
    finally:
        hook.remove()
    prefix_pass, step1, step2 = seen  # the prefix ran once, before the first step; then one pass per step
    p = prefix_pass["inputs_embeds"].shape[1]
    assert p > 10 and prefix_pass["inputs_embeds"].shape[0] == 1
    packed = step1["inputs_embeds"].shape[1]
    ire, ila = batch["ire_mask"].sum(1), batch["ila_mask"].sum(1)
    assert step1["attention_mask"].dim() == 4 and step1["attention_mask"].shape[-1] == p + packed
    assert packed < int((ire + ila).max()) - 2 * p  # the history is not repeated
    assert step2["inputs_embeds"].shape == step1["inputs_embeds"].shape
    seen.clear()
    hook = decoder.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    try:  # the two-pass path: one forward per prompt, after the same cached prefix
        with model.switched(one_pass=False):
            model.loss(batch)
    finally:
        hook.remove()
    assert [c["inputs_embeds"].shape[1] for c in seen] == [
        batch["ire_ids"].shape[1] - p,
        batch["ila_ids"].shape[1] - p,
    ]


def test_lora_training_recomputes_the_prefix(ill_dataset, tiny_llm):
    """With LoRA training the prefix depends on the trained weights: it is never cached with gradients on."""
    model, batch = model_and_batch(ill_dataset, tiny_llm, lora=True)
    bb = model.backbone
    ids = [(batch["ire_ids"], batch["ire_mask"])]
    assert bb.constant_prefix("<|im_start|>system", ids) is None
    with torch.no_grad():
        assert bb.constant_prefix("<|im_start|>system", ids) is not None
    frozen, _ = model_and_batch(ill_dataset, tiny_llm, lora=False)
    assert frozen.backbone.constant_prefix("<|im_start|>system", ids) is not None  # frozen LM: cached


def test_a_family_without_custom_masks_falls_back_to_two_passes(ill_dataset, tiny_llm, caplog):
    model, batch = model_and_batch(ill_dataset, tiny_llm, lora=False)
    want = loss_and_grads(model, lambda b: two_pass_loss(model, b), batch)
    config = model.backbone.model.get_decoder().config
    config.sliding_window = 16  # shorter than the prompts: one custom mask cannot stand for the window
    calls = []
    decoder = model.backbone.model.get_decoder()
    hook = decoder.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
    try:
        with caplog.at_level(logging.INFO, logger="llmrec.llm.backbone"):
            got = loss_and_grads(model, model.loss, batch)
    finally:
        hook.remove()
        config.sliding_window = None
    assert "one pass per prompt batch: sliding-window attention (16 tokens)" in caplog.text
    assert [c["attention_mask"].dim() for c in calls[1:]] == [2, 2]  # two passes with padding masks
    assert_same(got, want)
    config._attn_implementation = "flash_attention_2"
    try:
        assert "flash_attention_2 attention implementation" in model.backbone.tree_unsupported(10)
    finally:
        config._attn_implementation = "sdpa"


@pytest.fixture(scope="module")
def tiny_gemma3(tiny_llm, tmp_path_factory):
    """A random 2-layer Gemma 3 (a sliding-window layer, a full one, logit soft-capping) on the tiny tokenizer."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    folder = tmp_path_factory.mktemp("tiny-gemma3")
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=1024,
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=5.0,
        max_position_embeddings=2048,
        initializer_range=0.3,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    Gemma3ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_gemma3_takes_the_packed_row(ill_dataset, tiny_gemma3):
    """Another family: sliding-window layers (the window longer than the prompts) and a soft-capped head."""
    model, batch = model_and_batch(ill_dataset, tiny_gemma3, lora=True)
    assert model.backbone.tree_unsupported(200) == ""
    want = loss_and_grads(model, functools.partial(two_pass_loss, model), batch)
    assert_same(loss_and_grads(model, model.loss, batch), want)


def test_gradient_checkpointing_keeps_one_pass_and_recomputes_the_prefix(ill_dataset, tiny_llm):
    """Checkpointing replays each layer in the backward without its KV cache: the prefix is never cached
    while training with it, and the packed row (no cache needed) stays exact."""
    model, batch = model_and_batch(ill_dataset, tiny_llm, lora=False, checkpointing=True)
    want = loss_and_grads(model, functools.partial(two_pass_loss, model), batch)
    assert_same(loss_and_grads(model, model.loss, batch), want)
    assert model.backbone.prefixes == []
    with torch.no_grad():
        model.eval()
        model.loss(batch)  # scoring-like: no gradient, the prefix is cached
    assert len(model.backbone.prefixes) == 1


def test_eager_attention_takes_the_same_packed_row(ill_dataset, tiny_llm):
    model, batch = model_and_batch(ill_dataset, tiny_llm, lora=True)
    model.backbone.model.set_attn_implementation("eager")
    want = loss_and_grads(model, lambda b: two_pass_loss(model, b), batch)
    assert_same(loss_and_grads(model, model.loss, batch), want)


def test_scores_of_a_trained_model_do_not_change(ill_dataset, tiny_llm):
    """Evaluation reads [REC] through the same function: one-pass training changes no metric."""
    model, _ = model_and_batch(ill_dataset, tiny_llm, lora=True)
    model.eval()
    users = torch.arange(6)
    hist = [np.asarray(ill_dataset.train_sequences[u]) for u in range(6)]
    with torch.no_grad():
        with model.switched(shared_prefix=True):
            cached = model.score_all_tensor(users, hist)
        with model.switched(shared_prefix=False):
            whole = model.score_all_tensor(users, hist)
    torch.testing.assert_close(cached, whole, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_smollm2_one_pass_equals_two_passes(ill_dataset):
    """SmolLM2-135M-Instruct with its real tokenizer and chat template, the LM frozen (the default: one pass
    after the cached prefix; LoRA's one pass is covered on the tiny LM)."""
    model, batch = model_and_batch(ill_dataset, "smollm2-135m-instruct", False, batch_size=4)
    want = loss_and_grads(model, functools.partial(two_pass_loss, model), batch)
    assert_same(loss_and_grads(model, model.loss, batch), want, loss_tol=1e-5, grad_tol=1e-3)
    assert len(model.backbone.prefixes) == 1


# --------------------------------------------------------------------------- HistLLM: step 2 with LoRA frozen
ctr_dataset = test_histllm.ctr_dataset  # fixture


@pytest.mark.parametrize(
    "options",
    [
        {"image": True},  # [HIST], [USERID], target [VISUAL], [ITEMID]
        {"image": True, "history": "inline", "cf": "none"},  # history [VISUAL]s right after the prefix
    ],
)
def test_histllm_step2_with_a_cached_prefix_equals_the_whole_prompt(ctr_dataset, tiny_llm, options):
    backbone = {"llm": tiny_llm, "lora": True, "lora_dropout": 0.0}
    torch.manual_seed(0)  # as test_histllm.make builds it, without LoRA's dropout
    opts = {**test_histllm.TINY, **options, "backbone": backbone}
    model = build_model("histllm", opts, ctr_dataset.n_users, ctr_dataset.n_items)
    model.attach(ctr_dataset)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a step-1 LoRA that is not the identity
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    step2 = model.step_parameters(2)
    for name, p in model.named_parameters():
        p.requires_grad_(name in step2)
    batch = next(model.train_batches(ctr_dataset, np.random.default_rng(0)))
    model.train()
    with model.switched(shared_prefix=False):
        want = loss_and_grads(model, model.loss, batch)
    with model.switched(shared_prefix=True):
        got = loss_and_grads(model, model.loss, batch)
    (prefix,) = model.backbone.prefixes
    assert "#Question: A user has given high ratings to the following movies:" in (
        model.backbone.tokenizer.decode(prefix.ids)
    )
    assert_same(got, want)

    for name, p in model.named_parameters():  # step 1 trains LoRA: the prefix is run with the prompt
        p.requires_grad_(name in model.step_parameters(1))
    calls = []
    hook = model.backbone.model.get_decoder().register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        model.loss(batch)
    finally:
        hook.remove()
    assert calls == [batch["ids"].shape[1]]


# --------------------------------------------------------------------------- the benchmark command
def test_bench_training_times_every_mode_side_by_side(ill_dataset, ctr_dataset, tiny_llm, tmp_path, capsys):
    from llmrec.cli import main

    out = tmp_path / "bench"
    common = ["--llm", tiny_llm, "--steps", "1", "--batch-size", "4", "--out", str(out)]
    assert (
        main(
            [
                "experiments",
                "bench-training",
                "--data",
                "",
                "--synthetic-data",
                str(ill_dataset.root),
                *common,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| synthetic | illmrec | one pass + cached prefix |" in printed
    result = json.loads((out / "bench_training.json").read_text())
    assert [c["case"] for c in result["cases"]] == ["illmrec", "illmrec-no-ila", "histllm-step2"]
    ila = result["cases"][0]["modes"]
    assert list(ila) == ["two passes, as before", "two passes", "one pass", "one pass + cached prefix"]
    positions = [m["positions_per_step"] for m in ila.values()]
    assert positions[0] == positions[1] > positions[2] > positions[3]  # history once, then no prefix
    assert all(m["s_per_step"] > 0 and len(m["times"]) == 1 for m in ila.values())
    assert ila["two passes, as before"]["speedup"] == 1.0
    no_ila = result["cases"][1]["modes"]
    assert list(no_ila) == ["whole prompt", "cached prefix"]
    assert no_ila["whole prompt"]["positions_per_step"] > no_ila["cached prefix"]["positions_per_step"]
    assert (out / "bench_training.png").stat().st_size > 1000 and (out / "bench_training.md").exists()


def test_ila_without_trainable_tokens_is_reported(ill_dataset, tiny_llm, caplog):
    """A text-only representation with the LM frozen: nothing in the ILA prompt can learn, and its loss has
    no gradient at all (the demo's quick preset is such a case)."""
    model, batch = model_and_batch(ill_dataset, tiny_llm, lora=False, representation="attribute")
    with caplog.at_level(logging.WARNING, logger="llmrec.models.llm.illmrec"):
        model.stages(ill_dataset)
    assert "ILA trains nothing" in caplog.text
    (ila,), p = model.llm(batch, ["ila"])
    assert not model.backbone.lm_loss(ila, batch["ila_labels"][:, p:]).requires_grad
    caplog.clear()
    model, _ = model_and_batch(ill_dataset, tiny_llm, lora=False, representation="image")
    with caplog.at_level(logging.WARNING, logger="llmrec.models.llm.illmrec"):
        model.stages(ill_dataset)
    assert "ILA trains nothing" not in caplog.text
