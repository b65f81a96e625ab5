"""Feature computation end to end on generated images and texts (real EfficientNet-Lite0 / MiniLM weights)."""

import numpy as np
import pytest
from PIL import Image

from llmrec.data.processing import ProcessConfig, finalize, write_dataset
from llmrec.data.schema import make_interactions, make_items
from llmrec.features.build import FeaturesConfig, build_features
from llmrec.features.store import load_feature

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def _image_dataset(tmp_path):
    """6 items: red and blue squares (slightly different shades) + one item whose image is missing."""
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    records = []
    for i in range(6):
        colour = "red" if i % 2 == 0 else "blue"
        path = img_dir / f"{i}.png"
        if i != 5:
            rgb = tuple(min(255, c + 5 * i) for c in COLOURS[colour])
            Image.new("RGB", (64 + 8 * i, 64), rgb).save(path)
        records.append({"item_id": str(i), "title": f"{colour} thing {i}", "image": str(path)})
    items = make_items(records, "test")
    inter = make_interactions(
        [
            {"user_id": f"u{u}", "item_id": str(i), "timestamp": 10 * u + i}
            for u in range(4)
            for i in range(6)
            if i != u
        ],
        "test",
    )
    write_dataset(
        finalize(items, inter, ProcessConfig(kcore=0, num_negatives=1), {"name": "img"}, {}, []),
        tmp_path / "ds",
    )
    return tmp_path / "ds"


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _check_colour_structure(values, missing):
    assert missing.tolist() == [False] * 5 + [True]
    assert not values[5].any()
    reds, blues = values[[0, 2, 4]], values[[1, 3]]
    same = min(_cos(reds[0], reds[1]), _cos(blues[0], blues[1]))
    cross = max(_cos(r, b) for r in reds for b in blues)
    assert same > cross  # the features see the colour


@pytest.mark.slow
def test_efficientnet_lite0_image_features(tmp_path):
    ds = _image_dataset(tmp_path)
    manifest = build_features(FeaturesConfig(data=str(ds), text=False, image=True, batch_size=4))["image"]
    assert (
        manifest["dim"] == 1280 and manifest["missing"] == 1 and manifest["encoder"] == "efficientnet-lite0"
    )
    f = load_feature(ds / "features", "image")
    _check_colour_structure(np.asarray(f.values), f.missing)


def _tiny_tower(kind, folder):
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2Config,
        Dinov2Model,
    )

    size = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    if kind == "clip":
        model, proc = (
            CLIPVisionModel(CLIPVisionConfig(**size)),
            CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        )
    else:
        model, proc = (
            Dinov2Model(Dinov2Config(**size)),
            BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        )
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("kind", ["clip", "dinov2"])
def test_transformers_vision_tower_features(tmp_path, kind):
    import torch

    torch.manual_seed(0)
    ds = _image_dataset(tmp_path)
    tower = _tiny_tower(kind, tmp_path / kind)
    manifest = build_features(
        FeaturesConfig(data=str(ds), text=False, image=True, image_encoder=tower, image_name=f"img_{kind}")
    )
    m = manifest[f"img_{kind}"]
    assert m["dim"] == 32 and m["count"] == 6 and m["missing"] == 1
    f = load_feature(ds / "features", f"img_{kind}")
    assert f.missing.tolist() == [False] * 5 + [True] and np.isfinite(f.values).all()


@pytest.mark.slow
def test_minilm_text_features_and_up_to_date_skip(tmp_path, synthetic_dataset):
    cfg = FeaturesConfig(data=str(synthetic_dataset))
    m = build_features(cfg)["text"]
    assert (m["dim"], m["count"], m["missing"]) == (384, 40, 0)
    first = (synthetic_dataset / "features" / "text.npy").stat().st_mtime_ns
    build_features(cfg)  # same spec: nothing recomputed
    assert (synthetic_dataset / "features" / "text.npy").stat().st_mtime_ns == first
    f = load_feature(synthetic_dataset / "features", "text")
    # all-MiniLM-L6-v2 output is unit-normalised
    np.testing.assert_allclose(np.linalg.norm(f.values, axis=1), 1.0, atol=1e-4)
