"""What BM3 and LGMRec share through ``FeatureGraphRecommender``: features held by checksum (a saved model
scores alike, a changed feature is refused) and a clear error without any feature."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmrec.data.dataset import Dataset
from llmrec.errors import LlmrecError
from llmrec.features.store import ids_checksum, save_feature
from llmrec.models.base import build_model, load_model
from llmrec.training import fit

GRAPH_MODELS = ["bm3", "lgmrec"]


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_saved_model_scores_alike_and_refuses_a_changed_feature(name, image_feature_dataset, tmp_path):
    ds = image_feature_dataset
    torch.manual_seed(0)
    model = build_model(name, {"dim": 8, "epochs": 2, "features": ["image"]}, ds.n_users, ds.n_items)
    fit(model, ds)
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "feature.json").read_text())["features"][0]["feature"] == "image"
    users = np.arange(3)
    hist = [np.zeros(0, np.int64)] * 3
    np.testing.assert_allclose(
        load_model(tmp_path / "m").score_all(users, hist), model.score_all(users, hist), rtol=1e-6
    )
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    save_feature(ds.features_dir, "image", np.ones((ds.n_items, 8), np.float32), spec)
    with pytest.raises(LlmrecError, match="feature 'image' changed since the model was trained"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_no_feature_at_all_is_a_clear_error(name, synthetic_dataset):
    ds = Dataset(synthetic_dataset)
    model = build_model(name, {"dim": 8}, ds.n_users, ds.n_items)
    with pytest.raises(LlmrecError, match=rf"{name} needs one of the item features \['image', 'text'\]"):
        model.prepare(ds)
