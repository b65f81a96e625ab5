"""Shared prompt prefixes (KV cache reuse): the same logits as one full prompt per row, within 1e-4."""

import json

import numpy as np
import pytest
import torch

import test_histllm
import test_illmrec
from llmrec.models.base import build_model

make = test_histllm.make
ctr_dataset = test_histllm.ctr_dataset  # fixtures: the datasets with image and MF/CF features
ill_dataset = test_illmrec.ill_dataset


def perturb_lora(model, scale: float = 0.5) -> None:
    """LoRA B starts at zero (LoRA a no-op): give it values so the check covers the adapted LM."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def histories_of(ds, users):
    seqs = ds.train_sequences
    return [np.asarray(seqs[u]) for u in users]


@pytest.mark.parametrize(
    "name, options",
    [
        ("histllm", {"image": True}),  # [HIST], [USERID], target [VISUAL], [ITEMID]
        ("histllm", {"image": True, "history": "inline", "cf": "none"}),  # history [VISUAL]s in the prefix
        ("collm_image", {}),
        ("tallrec", {}),
        ("binllm", {}),
    ],
)
def test_ranking_with_a_shared_prefix_matches_one_prompt_per_pair(ctr_dataset, tiny_llm, name, options):
    model = make(name, ctr_dataset, tiny_llm, rank_batch_size=7, **options)
    model.attach(ctr_dataset)
    perturb_lora(model)
    users = np.array([0, 3, 7])
    hist = histories_of(ctr_dataset, users)
    rng = np.random.default_rng(0)
    cands = np.stack([rng.permutation(ctr_dataset.n_items)[:20] for _ in users])  # (3, 20)
    shared = model.score(users, hist, cands)
    pairs = model.score(users, hist, cands, shared_prefix=False)
    assert shared.shape == (3, 20)
    np.testing.assert_allclose(shared, pairs, atol=1e-4, rtol=0)
    # the split really shares something: the prefix holds the history
    prefix = model.prefix_text(3, hist[1])
    assert prefix.startswith("<|im_start|>") and "#Question" in prefix


def test_needs_user_id_follows_the_cf_option(ctr_dataset, tiny_llm):
    assert make("collm", ctr_dataset, tiny_llm).needs_user_id
    assert make("binllm", ctr_dataset, tiny_llm).needs_user_id
    assert not make("tallrec", ctr_dataset, tiny_llm).needs_user_id


# --------------------------------------------------------------------------- I-LLMRec: the constant prefix
def illmrec(ds, tiny_llm, **options):
    torch.manual_seed(0)
    opts = {"adaptor_hidden": 16, "d_shared": 8, "backbone": {"llm": tiny_llm, "lora": True}, **options}
    model = build_model("illmrec", opts, ds.n_users, ds.n_items)
    model.attach(ds)
    return model.eval()


def all_scores(model, users, hist, shared):
    with model.switched(shared_prefix=shared), torch.no_grad():
        return model.score_all_tensor(torch.as_tensor(users), hist).numpy()


@pytest.mark.parametrize("representation", ["image", "cf"])
def test_illmrec_constant_prefix_is_computed_once_and_exact(ill_dataset, tiny_llm, representation):
    model = illmrec(ill_dataset, tiny_llm, representation=representation, score_batch_size=4)
    perturb_lora(model)
    users = np.arange(10)
    hist = histories_of(ill_dataset, users)
    hist[3] = hist[3][:0]  # an empty history: "[]" may tokenise differently (the unshared path then runs)
    plain = all_scores(model, users, hist, shared=False)
    shared = all_scores(model, users, hist, shared=True)
    np.testing.assert_allclose(shared, plain, atol=1e-4, rtol=0)
    (prefix,) = model.backbone.prefixes
    cache = prefix.cache
    assert len(prefix) > 5 and "<|im_start|>" in model.backbone.tokenizer.decode(prefix.ids)
    all_scores(model, users, hist, shared=True)
    assert model.backbone.prefixes[0].cache is cache  # reused, not recomputed

    perturb_lora(model)  # LoRA changed (as by a training step): the cached prefix is stale
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-1)
    shared = all_scores(model, users, hist, shared=True)
    assert model.backbone.prefixes[0].cache is not cache
    np.testing.assert_allclose(shared, all_scores(model, users, hist, shared=False), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- the real default LM (SmolLM2)
@pytest.mark.slow
def test_smollm2_shared_prefixes_are_exact(ctr_dataset, ill_dataset):
    """SmolLM2-135M-Instruct (its real tokenizer and chat template): HistLLM with [HIST], [USERID],
    [VISUAL], [ITEMID] and LoRA, and I-LLMRec, both within 1e-4 of their unshared paths."""
    torch.manual_seed(0)
    opts = {
        "mapper_hidden": 16,
        "encoder_dim": 16,
        "description_texts": None,
        "image": True,
        "history_len": 3,
    }
    model = build_model("histllm", {**opts, "rank_batch_size": 5}, ctr_dataset.n_users, ctr_dataset.n_items)
    model.attach(ctr_dataset)
    perturb_lora(model, 0.02)
    users = np.array([1, 4])
    hist = histories_of(ctr_dataset, users)
    cands = np.stack([np.arange(6), np.arange(6, 12)])
    np.testing.assert_allclose(
        model.score(users, hist, cands),
        model.score(users, hist, cands, shared_prefix=False),
        atol=1e-4,
        rtol=0,
    )
    del model

    torch.manual_seed(0)
    ill = build_model(
        "illmrec",
        {"adaptor_hidden": 16, "d_shared": 8, "test_history": 4, "backbone": {"lora": True}},
        ill_dataset.n_users,
        ill_dataset.n_items,
    )
    ill.attach(ill_dataset)
    ill.eval()
    perturb_lora(ill, 0.02)
    users = np.arange(6)
    hist = histories_of(ill_dataset, users)
    shared = all_scores(ill, users, hist, shared=True)
    (prefix,) = ill.backbone.prefixes
    assert len(prefix) > 20  # system turn + instruction
    np.testing.assert_allclose(shared, all_scores(ill, users, hist, shared=False), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- the ranking timing command
def test_ctr_efficiency_times_ranking_on_a_saved_run(ctr_dataset, tiny_llm, tmp_path, capsys):
    from llmrec.cli import main

    model = make("collm", ctr_dataset, tiny_llm)
    model.attach(ctr_dataset)
    perturb_lora(model)
    model.save(tmp_path / "collm")
    args = [
        "experiments",
        "ctr-efficiency",
        "--data",
        str(ctr_dataset.root),
        "--lengths",
        "--run",
        str(tmp_path / "collm"),
    ]
    args += [
        "--rank-users",
        "1",
        "--rerank-users",
        "2",
        "--rerank-candidates",
        "12",
        "--out",
        str(tmp_path / "e"),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Ranking with collm" in printed and "top-10 of the catalog" in printed
    r = json.loads((tmp_path / "e" / "ctr_efficiency.json").read_text())["ranking"]
    assert r["top10_catalog"]["candidates"] == ctr_dataset.n_items and r["rerank"]["candidates"] == 12
    for task in ("top10_catalog", "rerank"):
        assert r[task]["max_abs_logit_diff"] < 1e-4 and r[task]["same_top10"] and r[task]["speedup"] > 0
