"""Feature computation end to end on generated images and texts (real EfficientNet-Lite0 / MiniLM weights)."""

from pathlib import Path

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


def _tiny_vit(folder, pooler: bool) -> str:
    """A tiny ViT saved as DINO v1 checkpoints are (``pooler=False``: no pooling layer, no pooler weights) or
    with a trained pooler (its weights in the checkpoint), with its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    ViTModel(config, add_pooling_layer=pooler).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def test_dino_checkpoint_without_pooler_is_read_by_its_cls_token(tmp_path, caplog):
    """Regression: a checkpoint without pooler weights (DINO v1, facebook/dino-vits16) was read through
    transformers' randomly initialised pooler, tanh(random Linear(CLS)), a different feature at every load."""
    import torch
    from transformers import ViTModel

    from llmrec.features.encoders import load_image_encoder

    folder = _tiny_vit(tmp_path / "dino", pooler=False)
    images = [Image.new("RGB", (40, 36), rgb) for rgb in COLOURS.values()]
    with caplog.at_level("WARNING"):
        torch.manual_seed(1)
        first = load_image_encoder(folder)
    assert "no pooler weights" in caplog.text and "pooler.dense.weight" in caplog.text
    torch.manual_seed(2)  # another random pooler, were one used
    second = load_image_encoder(folder)
    assert first.pooling == second.pooling == "cls" and first.dim == 32
    np.testing.assert_array_equal(first.encode(images), second.encode(images))

    reference = ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    pixels = first.processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = reference(pixel_values=pixels).last_hidden_state[:, 0].numpy()  # (2, 32)
    np.testing.assert_allclose(first.encode(images), cls, atol=1e-6)


def test_a_trained_pooler_is_kept_and_the_pooling_is_recorded(tmp_path):
    import torch
    from transformers import ViTModel

    from llmrec.features.encoders import load_image_encoder

    torch.manual_seed(0)
    folder = _tiny_vit(tmp_path / "vit", pooler=True)
    encoder = load_image_encoder(folder)
    images = [Image.new("RGB", (40, 36), rgb) for rgb in COLOURS.values()]
    reference = ViTModel.from_pretrained(folder).eval()
    pixels = encoder.processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = reference(pixel_values=pixels)
    assert encoder.pooling == "pooler"
    np.testing.assert_allclose(encoder.encode(images), out.pooler_output.numpy(), atol=1e-6)
    assert not np.allclose(out.pooler_output.numpy(), out.last_hidden_state[:, 0].numpy(), atol=1e-3)

    ds = _image_dataset(tmp_path)
    dino = _tiny_vit(tmp_path / "dino", pooler=False)
    made = build_features(FeaturesConfig(data=str(ds), text=False, image=True, image_encoder=dino))
    assert (
        made["image"]["pooling"] == "cls"
        and load_feature(ds / "features", "image").manifest["pooling"] == "cls"
    )


def test_a_checkpoint_missing_other_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from llmrec.errors import LlmrecError
    from llmrec.features.encoders import load_image_encoder

    folder = Path(_tiny_vit(tmp_path / "cut", pooler=True))
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layernorm" not in k}, folder / "model.safetensors")
    with pytest.raises(LlmrecError, match="lacks weights its model needs .*layernorm"):
        load_image_encoder(str(folder))


def test_an_image_feature_without_recorded_pooling_is_stale(tmp_path, caplog):
    """A transformers-tower feature written before the pooling was recorded may hold a random pooler: it is
    recomputed by 'llmrec features' and refused for training meanwhile."""
    from llmrec.data.dataset import Dataset
    from llmrec.errors import LlmrecError
    from llmrec.features.store import load_item_feature
    from llmrec.utils.io import read_json, write_json_atomic

    ds = _image_dataset(tmp_path)
    cfg = FeaturesConfig(data=str(ds), text=False, image=True, image_encoder=_tiny_vit(tmp_path / "d", False))
    build_features(cfg)
    manifest_path = ds / "features" / "image.json"
    write_json_atomic(manifest_path, {k: v for k, v in read_json(manifest_path).items() if k != "pooling"})
    with pytest.raises(LlmrecError, match="did not record its pooling"):
        load_item_feature(Dataset(ds), "image", 6)
    with caplog.at_level("WARNING"):
        assert build_features(cfg)["image"]["pooling"] == "cls"
    assert "does not record its pooling" in caplog.text
    assert load_item_feature(Dataset(ds), "image", 6).manifest["pooling"] == "cls"
