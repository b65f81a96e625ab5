"""The multimodal CF models learn a visual rule from their image features, which ID embeddings cannot carry.

Every user likes one colour: all their items have it, and the colour is visible only in the items'
"image" feature (its one-hot plus noise, :func:`conftest.visual_rule_dataset`). Each item belongs to one
user alone, so the training graph falls apart into one star per user: no path of shared items links a
user to anybody else's item, and ID embeddings (MF, LightGCN) can only guess there. The check: for each
user, the items of *other* users' training histories ranked by the model's score, AUC of "has the user's
colour" (chance 0.5). The model with the true pictures must score high; the same model trained on the
pictures shuffled among the items (the same feature values, none belonging to its item: the blind
control) must stay near chance. VBPR and LGMRec do, with and without Mirror Gradient; BM3 cannot by
construction (its score is ID-only, see ``BM3_IS_ID_ONLY``), and its case is a strict expected failure.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import visual_rule_dataset
from llmrec.eval.metrics import uauc
from llmrec.features.store import ids_checksum, save_feature
from llmrec.models.base import build_model
from llmrec.training import fit

COLOURS, USERS, PER_USER = 4, 40, 8  # items: USERS x PER_USER, each in one history
COMMON = {"epochs": 40, "batch_size": 64, "lr": 0.01, "validate": False}
MODELS = {
    "vbpr": {"dim": 16, "visual_dim": 16, "feature": "image"},
    "bm3": {"dim": 16, "features": ["image"]},
    "lgmrec": {"dim": 16, "features": ["image"]},
}


@pytest.fixture(scope="module")
def colour_dataset(tmp_path_factory):
    """(dataset, colour per item, favourite colour per user, the 'image' feature as saved)."""
    rng = np.random.default_rng(0)
    n_items = USERS * PER_USER
    items = [{"item_id": f"i{k:03d}", "title": "Item", "description": "A product"} for k in range(n_items)]
    by_colour = {c: list(rng.permutation(np.arange(c, n_items, COLOURS))) for c in range(COLOURS)}
    rows = []
    for u in range(USERS):
        fav = u % COLOURS
        for t in range(PER_USER):
            k = by_colour[fav].pop()
            rows.append(
                {"user_id": f"u{u:02d}", "item_id": f"i{k:03d}", "timestamp": 1000 + 10 * t, "rating": 5.0}
            )
    ds, colours = visual_rule_dataset(tmp_path_factory.mktemp("colours") / "ds", items, rows, COLOURS, rng)
    favourite = np.array([colours[s[0]] for s in ds.train_sequences])
    assert all((colours[s] == f).all() for s, f in zip(ds.train_sequences, favourite))
    image = np.eye(COLOURS, dtype=np.float32)[colours] + 0.05 * rng.normal(size=(ds.n_items, COLOURS))
    return ds, colours, favourite, image.astype(np.float32)


def colour_auc(model, ds, colours, favourite) -> float:
    """Mean per-user AUC of "item has the user's colour" over the other users' training items."""
    train = np.zeros((ds.n_users, ds.n_items), bool)
    for u, s in enumerate(ds.train_sequences):
        train[u, s] = True
    warm = train.any(0)
    users = np.arange(ds.n_users)
    scores = model.score_all(users, [np.zeros(0, np.int64)] * ds.n_users)  # (U, N)
    rows, cols = np.nonzero(warm[None, :] & ~train)  # (user, item) pairs: someone else's training item
    labels = colours[cols] == favourite[rows]
    return uauc(rows, labels.astype(int), scores[rows, cols])


def trained_auc(name, mirror, ds, colours, favourite, image) -> float:
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    save_feature(ds.features_dir, "image", image, spec)
    torch.manual_seed(0)
    options = {**COMMON, **MODELS[name], "mirror_gradient": mirror}
    model = build_model(name, options, ds.n_users, ds.n_items)
    fit(model, ds)
    return colour_auc(model, ds, colours, favourite)


# BM3 ranks by <p(u), p(i)> of the LightGCN ID embeddings alone: its features only train the projections
# and the shared predictor (their alignment targets are the stop-gradient item views, as in the reference
# code), so no item's score can carry its picture. Measured here: 0.48 with the pictures, 0.49-0.50 blind.
BM3_IS_ID_ONLY = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="BM3 scores with ID embeddings only; its features never reach an item's score",
)


@pytest.mark.parametrize("mirror", [False, True], ids=["plain", "mg"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=BM3_IS_ID_ONLY) if n == "bm3" else n for n in MODELS])
def test_learns_the_colour_from_the_pictures_and_not_blind(name, mirror, colour_dataset):
    ds, colours, favourite, image = colour_dataset
    blind = trained_auc(
        name, mirror, ds, colours, favourite, image[np.random.default_rng(1).permutation(ds.n_items)]
    )
    assert abs(blind - 0.5) < 0.1, blind  # the graph alone gives nothing to go on
    sighted = trained_auc(name, mirror, ds, colours, favourite, image)
    assert sighted > 0.9, (sighted, blind)
