"""One contract every registered model must pass, on synthetic data whose right answer is known.

In the synthetic data every user walks the catalog in id order, so the next item is always last + 1.
Learning models must beat the random ranker by a clear margin after a short training; every model
must score consistently across ``score``/``score_all``/``score_pairs`` and survive save -> load.
"""

import numpy as np
import pytest

from llmrec.data.dataset import Dataset
from llmrec.eval.evaluator import evaluate_ranking
from llmrec.features.store import ids_checksum, save_feature
from llmrec.models.base import available_models, build_model, load_model
from llmrec.training import fit

# Tiny settings per model: a new model must add its own line here (the test fails otherwise).
TINY = {
    "popularity": {},
    "random": {"seed": 0},
    "sasrec": {"hidden": 32, "max_len": 12, "epochs": 30, "batch_size": 16, "dropout": 0.1, "eval_every": 5},
    "gru4rec": {
        "hidden": 32,
        "embedding": 32,
        "max_len": 12,
        "epochs": 30,
        "batch_size": 16,
        "eval_every": 5,
    },
    "bert4rec": {"hidden": 32, "max_len": 12, "epochs": 60, "batch_size": 16, "eval_every": 10, "lr": 0.01},
    "mf": {"dim": 32, "epochs": 60, "batch_size": 64, "lr": 0.01, "eval_every": 10},
    # the backbone path comes from the tiny_llm fixture (a random 2-layer Llama)
    "illmrec": {
        "features": ["image"],
        "adaptor_hidden": 32,
        "d_shared": 32,
        "epochs": 60,
        "lr": 0.01,
        "batch_size": 8,
        "eval_every": 10,
        "eval_users": None,
    },
    "vbpr": {"dim": 32, "epochs": 60, "batch_size": 64, "lr": 0.01, "eval_every": 10, "feature": "image"},
    # the graph models (BM3, LGMRec) take the same options here
    **{
        name: {
            "dim": 32,
            "epochs": 60,
            "batch_size": 64,
            "lr": 0.01,
            "eval_every": 10,
            "features": ["image", "text"],
        }
        for name in ("bm3", "lgmrec")
    },
}
# HistLLM and its LLM baselines (CTR models: the learning check lives in test_histllm.py)
CTR_TINY = {
    "mapper_hidden": 16,
    "encoder_dim": 16,
    "description_texts": None,
    "train_examples": 32,
    "eval_examples": 40,
    "epochs": 1,
    "step1_epochs": 1,
    "binary_bits": 8,
}
for _name in (
    "histllm",
    "tallrec",
    "tallrec_desc",
    "tallrec_image",
    "collm",
    "collm_image",
    "binllm",
    "binllm_image",
):
    TINY[_name] = dict(CTR_TINY)
CTR_TINY_NAMES = {n for n, o in TINY.items() if o == CTR_TINY}
# the VLM baselines read item pictures through the tiny_vlm fixture (a random LLaVA)
TINY["recgpt4v"] = {"max_new_tokens": 2, "history_len": 2}
TINY["unimp"] = {**TINY["illmrec"], "epochs": 20}
VLM_NAMES = {"recgpt4v", "unimp"}
FLOORS = {"popularity", "random", "recgpt4v"}  # sanity floors and zero-shot models: no learning requirement
# Mirror Gradient (a trainer option, -o mirror_gradient=true) must keep the multimodal CF models to the contract
MIRRORED = ("vbpr", "bm3", "lgmrec")
CASES = [pytest.param(n, False, id=n) for n in available_models()] + [
    pytest.param(n, True, id=f"{n}-mg") for n in MIRRORED
]


@pytest.fixture
def contract_dataset(synthetic_dataset):
    """The synthetic dataset plus an 'image' feature (the item's place on the walk; 3 items missing) and a 'text' one."""
    ds = Dataset(synthetic_dataset)
    rng = np.random.default_rng(0)
    # the "picture" of item i encodes where it sits on the catalog walk (angle 2 pi i / N), plus noise
    order = ds.items["item_id"].str[1:].astype(int).to_numpy()
    angle = 2 * np.pi * order[:, None] * np.arange(1, 5)[None, :] / ds.n_items  # (N, 4)
    values = (
        np.concatenate([np.cos(angle), np.sin(angle)], axis=1) + 0.1 * rng.normal(size=(ds.n_items, 8))
    ).astype(np.float32)
    missing = np.zeros(ds.n_items, dtype=bool)
    missing[[3, 17, 29]] = True
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    save_feature(ds.features_dir, "image", values, spec, missing)
    save_feature(ds.features_dir, "text", rng.normal(size=(ds.n_items, 6)).astype(np.float32), spec)
    save_feature(ds.features_dir, "mf_item", rng.normal(size=(ds.n_items, 8)).astype(np.float32), spec)
    users = {"kind": "user", "encoder": "test", "ids_sha256": ids_checksum(ds.users["user_id"].tolist())}
    save_feature(ds.features_dir, "mf_user", rng.normal(size=(ds.n_users, 8)).astype(np.float32), users)
    return ds


@pytest.mark.parametrize(("name", "mirror"), CASES)
def test_model_contract(name, mirror, contract_dataset, tmp_path, request):
    import torch

    assert name in TINY, f"add tiny test options for the new model '{name}' to TINY"
    ds = contract_dataset
    options = dict(TINY[name], **({"mirror_gradient": True} if mirror else {}))
    if name == "illmrec" or name in CTR_TINY_NAMES:
        options["backbone"] = {"llm": request.getfixturevalue("tiny_llm")}
        if name in CTR_TINY_NAMES:
            options["backbone"]["lora"] = True
    if name in VLM_NAMES:
        from conftest import add_item_images

        add_item_images(ds.root)
        options["backbone"] = {"llm": request.getfixturevalue("tiny_vlm")}
    torch.manual_seed(0)
    model = build_model(name, options, ds.n_users, ds.n_items)
    check_contract(model, ds, tmp_path, learns=name not in FLOORS)


def check_contract(model, ds, tmp_path, learns: bool = True) -> None:
    """The contract on one built, untrained model: it trains through :func:`llmrec.training.fit`; its
    ``score``/``score_all``/``score_pairs`` agree; it survives save -> load with the same scores; and, when
    ``learns`` and it ranks, it beats the random ranker by a clear margin (ndcg@5 + 0.2 on the test split).
    A model of your own passes it by calling this (``tests/test_third_method.py`` does)."""
    fit(model, ds)
    data = ds.split("test")
    users, hist = data.users[:7], data.histories[:7]
    full = model.score_all(users, hist)
    assert full.shape == (7, ds.n_items) and np.isfinite(full).all()
    cand = np.concatenate([data.targets[:7, None], ds.negatives("test")[:7]], axis=1)
    np.testing.assert_allclose(
        model.score(users, hist, cand), np.take_along_axis(full, cand, 1), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        model.score_pairs(users, hist, data.targets[:7]),
        full[np.arange(7), data.targets[:7]],
        rtol=1e-5,
        atol=1e-5,
    )
    model.save(tmp_path / "m")
    np.testing.assert_allclose(load_model(tmp_path / "m").score_all(users, hist), full, rtol=1e-6, atol=1e-6)
    if learns and "ranking" in model.tasks:
        metrics, _ = evaluate_ranking(model, ds, "test", ks=(5,), full=False)
        rand = build_model("random", {"seed": 0}, ds.n_users, ds.n_items)
        chance, _ = evaluate_ranking(rand, ds, "test", ks=(5,), full=False)
        assert metrics["ndcg@5"] >= chance["ndcg@5"] + 0.2, (metrics, chance)
