"""BM3's parts against hand-computed values: the normalised graph, the negative-free loss, missing features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmrec.data.dataset import Dataset
from llmrec.errors import LlmrecError
from llmrec.features.store import ids_checksum, save_feature
from llmrec.models.base import build_model, load_model
from llmrec.models.graph import normalized_adjacency
from llmrec.training import fit


def test_normalized_adjacency_by_hand():
    # user 0 - items 0, 1 (item 1 twice: one edge); user 1 - item 1
    adj = normalized_adjacency([np.array([0, 1, 1]), np.array([1])], n_users=2, n_items=2).to_dense()
    # nodes: u0, u1, i0, i1 with degrees 2, 1, 1, 2
    expected = torch.zeros(4, 4)
    for u, i in ((0, 2), (0, 3), (1, 3)):
        deg = {0: 2, 1: 1, 2: 1, 3: 2}
        expected[u, i] = expected[i, u] = 1 / np.sqrt(deg[u] * deg[i])
    torch.testing.assert_close(adj, expected)


@pytest.fixture
def bm3_dataset(synthetic_dataset):
    ds = Dataset(synthetic_dataset)
    rng = np.random.default_rng(0)
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    missing = np.zeros(ds.n_items, dtype=bool)
    missing[[0, 5]] = True
    save_feature(ds.features_dir, "image", rng.normal(size=(ds.n_items, 8)).astype(np.float32), spec, missing)
    return ds


def test_loss_needs_no_negatives_and_reaches_every_part(bm3_dataset):
    torch.manual_seed(0)
    model = build_model(
        "bm3", {"dim": 8, "features": ["image", "text"]}, bm3_dataset.n_users, bm3_dataset.n_items
    )
    model.prepare(bm3_dataset)  # 'text' is absent from this store: skipped, 'image' used
    assert [s["feature"] for s in model.sources] == ["image"]
    batch = {"users": torch.tensor([0, 1, 2]), "pos": torch.tensor([0, 5, 7])}  # items 0 and 5: no image
    assert set(batch) == {"users", "pos"}
    model.loss(batch).backward()
    for name in ("user_emb.weight", "item_emb.weight", "predictor.weight", "missing_vectors.image"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # item 7 has an image: its projection gets a gradient too
    assert model.projections["image"].weight.grad.abs().sum() > 0


def test_saved_model_refuses_a_changed_feature(bm3_dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model(
        "bm3", {"dim": 8, "epochs": 2, "features": ["image"]}, bm3_dataset.n_users, bm3_dataset.n_items
    )
    fit(model, bm3_dataset)
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "feature.json").read_text())["features"][0]["feature"] == "image"
    users = np.arange(3)
    hist = [np.zeros(0, np.int64)] * 3
    np.testing.assert_allclose(
        load_model(tmp_path / "m").score_all(users, hist), model.score_all(users, hist), rtol=1e-6
    )
    spec = {
        "kind": "item",
        "encoder": "test",
        "ids_sha256": ids_checksum(bm3_dataset.items["item_id"].tolist()),
    }
    save_feature(bm3_dataset.features_dir, "image", np.ones((bm3_dataset.n_items, 8), np.float32), spec)
    with pytest.raises(LlmrecError, match="feature 'image' changed since the model was trained"):
        load_model(tmp_path / "m")


def test_no_feature_at_all_is_a_clear_error(synthetic_dataset):
    ds = Dataset(synthetic_dataset)
    model = build_model("bm3", {"dim": 8}, ds.n_users, ds.n_items)
    with pytest.raises(LlmrecError, match=r"bm3 needs one of the item features \['image', 'text'\]"):
        model.prepare(ds)
