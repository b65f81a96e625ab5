"""BM3's parts against hand-computed values: the normalised graph, the negative-free loss, missing features."""

from __future__ import annotations

import numpy as np
import torch

from llmrec.models.base import build_model
from llmrec.models.graph import normalized_adjacency


def test_normalized_adjacency_by_hand():
    # user 0 - items 0, 1 (item 1 twice: one edge); user 1 - item 1
    adj = normalized_adjacency([np.array([0, 1, 1]), np.array([1])], n_users=2, n_items=2).to_dense()
    # nodes: u0, u1, i0, i1 with degrees 2, 1, 1, 2
    expected = torch.zeros(4, 4)
    for u, i in ((0, 2), (0, 3), (1, 3)):
        deg = {0: 2, 1: 1, 2: 1, 3: 2}
        expected[u, i] = expected[i, u] = 1 / np.sqrt(deg[u] * deg[i])
    torch.testing.assert_close(adj, expected)


def test_loss_needs_no_negatives_and_reaches_every_part(image_feature_dataset):
    torch.manual_seed(0)
    model = build_model(
        "bm3",
        {"dim": 8, "features": ["image", "text"]},
        image_feature_dataset.n_users,
        image_feature_dataset.n_items,
    )
    model.prepare(image_feature_dataset)  # 'text' is absent from this store: skipped, 'image' used
    assert [s["feature"] for s in model.sources] == ["image"]
    batch = {"users": torch.tensor([0, 1, 2]), "pos": torch.tensor([0, 5, 7])}  # items 0 and 5: no image
    assert set(batch) == {"users", "pos"}
    model.loss(batch).backward()
    for name in ("user_emb.weight", "item_emb.weight", "predictor.weight", "missing_vectors.image"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # item 7 has an image: its projection gets a gradient too
    assert model.projections["image"].weight.grad.abs().sum() > 0
