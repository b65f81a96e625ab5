"""The item index: item/query vectors of the dot-product models, the FAISS index kinds, exclusions and
filters that still fill k, stale indexes refused, items beyond the index's coverage, similar items, the
service's route and the retrieval benchmark (small catalogs: seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmrec.data.dataset import Dataset
from llmrec.features.store import ids_checksum, save_feature
from llmrec.models.base import build_model

faiss = pytest.importorskip("faiss")

SMALL = {"dim": 8, "epochs": 1}
# every dot-product model, untrained (random weights) but attached to its features: vectors must give its
# scores whatever the weights are
VECTOR_MODELS = {
    "mf": SMALL,
    "vbpr": {**SMALL, "feature": "image", "visual_dim": 4},
    "sasrec": {"hidden": 16, "max_len": 12},
    "gru4rec": {"hidden": 16, "embedding": 16, "max_len": 12},
    "bert4rec": {"hidden": 16, "max_len": 12},
    "bm3": {**SMALL, "features": ["image", "text"]},
    "lgmrec": {**SMALL, "features": ["image", "text"]},
    "illmrec": {"features": ["image", "text"], "adaptor_hidden": 16, "d_shared": 8, "test_history": 5},
}


@pytest.fixture
def featured(synthetic_dataset):
    """The synthetic dataset with an 'image' (2 items missing) and a 'text' feature."""
    ds = Dataset(synthetic_dataset)
    rng = np.random.default_rng(0)
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    missing = np.zeros(ds.n_items, dtype=bool)
    missing[[2, 7]] = True
    save_feature(ds.features_dir, "image", rng.normal(size=(ds.n_items, 8)).astype(np.float32), spec, missing)
    save_feature(ds.features_dir, "text", rng.normal(size=(ds.n_items, 6)).astype(np.float32), spec)
    return ds


def _attached(name, ds, request):
    options = dict(VECTOR_MODELS[name])
    if name == "illmrec":
        options["backbone"] = {"llm": request.getfixturevalue("tiny_llm")}
    torch.manual_seed(0)
    model = build_model(name, options, ds.n_users, ds.n_items)
    if hasattr(model, "prepare") and name != "illmrec":
        model.prepare(ds)
    model.attach(ds)
    if name in ("mf", "vbpr"):  # biases start at 0: give them values, so that the folded column counts
        with torch.no_grad():
            model.item_bias.normal_()
    return model


@pytest.mark.parametrize("name", sorted(VECTOR_MODELS))
def test_vectors_reproduce_score_all(name, featured, request):
    model = _attached(name, featured, request)
    assert model.dot_product
    data = featured.split("test")
    users, hist = data.users[:6], data.histories[:6]
    q, items = model.query_vectors(users, hist), model.item_matrix()
    assert q.dtype == items.dtype == np.float32 and items.shape[0] == featured.n_items
    np.testing.assert_allclose(q @ items.T, model.score_all(users, hist), rtol=1e-4, atol=1e-4)


def test_models_without_vectors_say_so(featured):
    model = build_model("popularity", {}, featured.n_users, featured.n_items)
    assert not model.dot_product
    with pytest.raises(Exception, match="'popularity' has no item vectors"):
        model.item_matrix()
