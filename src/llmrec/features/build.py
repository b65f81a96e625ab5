"""``llmrec features``: compute a dataset's text and image item features into its feature store."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.assets import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER
from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.features.encoders import (
    DEFAULT_TEMPLATE,
    check_template,
    item_fields,
    load_image_encoder,
    load_text_encoder,
    render_template,
)
from llmrec.features.store import (
    Feature,
    compute_feature,
    ids_checksum,
    is_current,
    load_feature,
    save_feature,
)

log = logging.getLogger(__name__)


@dataclass
class FeaturesConfig:
    """Which item features to compute, with which encoders."""

    data: str = option("data/ml-100k", "prepared dataset directory")
    text: bool = option(True, "compute the text feature")
    image: bool = option(False, "compute the image feature (needs images: run 'llmrec images' first)")
    text_encoder: str = option(
        DEFAULT_TEXT_ENCODER, "sentence-transformers model: alias, local folder or hub id"
    )
    image_encoder: str = option(
        DEFAULT_IMAGE_ENCODER, "efficientnet-lite0, or a transformers vision model folder / hub id"
    )
    template: str = option(
        DEFAULT_TEMPLATE, "text template; {field} = item column or extra key; empty segments dropped"
    )
    text_name: str = option("text", "feature name for the text feature")
    image_name: str = option("image", "feature name for the image feature")
    batch_size: int = option(64, "items per encoder batch")
    device: str = option("cpu", "torch device for the encoders")
    force: bool = option(False, "recompute even if an up-to-date feature exists")
    cf: str | None = option(
        None, "export a trained run's CF embeddings (e.g. runs/sasrec) instead of text/image"
    )
    cf_prefix: str | None = option(None, "name prefix of exported CF features (default: the model name)")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.text or self.image or self.cf):
            raise ConfigError("nothing to compute: enable --text and/or --image")


def item_texts(ds: Dataset, template: str) -> list[str]:
    """The rendered text of every item in item order."""
    rows = [item_fields(r) for r in ds.items.to_dict("records")]
    check_template(template, set().union(*(r.keys() for r in rows)) if rows else set())
    return [render_template(template, r) for r in rows]


def build_text_feature(ds: Dataset, cfg: FeaturesConfig) -> Feature:
    texts = item_texts(ds, cfg.template)
    spec = {
        "kind": "item",
        "modality": "text",
        "encoder": cfg.text_encoder,
        "template": cfg.template,
        "ids_sha256": ids_checksum(ds.items["item_id"].tolist()),
    }
    root = ds.features_dir
    if not cfg.force and is_current(root, cfg.text_name, spec):
        log.info("feature '%s' is up to date", cfg.text_name)
        return load_feature(root, cfg.text_name, verify=False)
    encoder = load_text_encoder(cfg.text_encoder, cfg.device, cfg.batch_size)
    missing = np.array([not t for t in texts])

    def encode(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return encoder.encode([texts[i] or " " for i in idx]), missing[idx]

    return compute_feature(
        root, cfg.text_name, len(texts), encoder.dim, encode, spec, cfg.batch_size, desc="text features"
    )


def _file_stamp(path: Path | None) -> str:
    if path is None:
        return ""
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def build_image_feature(ds: Dataset, cfg: FeaturesConfig) -> Feature:
    from PIL import Image

    from llmrec.data.images import image_paths

    paths = image_paths(ds)
    spec = {
        "kind": "item",
        "modality": "image",
        "encoder": cfg.image_encoder,
        # path + size + mtime: a re-downloaded image under the same name marks the feature stale
        "images_sha256": ids_checksum([_file_stamp(p) for p in paths]),
        "ids_sha256": ids_checksum(ds.items["item_id"].tolist()),
    }
    root = ds.features_dir
    if not cfg.force and is_current(root, cfg.image_name, spec):
        log.info("feature '%s' is up to date", cfg.image_name)
        return load_feature(root, cfg.image_name, verify=False)
    encoder = load_image_encoder(cfg.image_encoder, cfg.device)

    def encode(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images: list[Any] = []
        missing = np.zeros(len(idx), dtype=bool)
        for j, i in enumerate(idx):
            path = paths[i]
            try:
                with Image.open(path) as im:  # type: ignore[arg-type]
                    images.append(im.convert("RGB"))
            except (OSError, TypeError, AttributeError):  # None or unreadable: a missing image
                missing[j] = True
                images.append(Image.new("RGB", (32, 32)))
        return encoder.encode(images), missing

    return compute_feature(
        root, cfg.image_name, len(paths), encoder.dim, encode, spec, cfg.batch_size, desc="image features"
    )


def export_cf_features(ds: Dataset, run_dir: str | Path, prefix: str | None = None) -> dict[str, Any]:
    """Write a trained model's embeddings into the feature store as ``<prefix>_<item|user>``.

    Rows follow the dataset's item (user) order whatever the model's own indexing (SASRec's padding row 0
    is dropped by the model's ``export_embeddings``); the manifest names the run they came from.
    """
    from llmrec.models.base import load_model
    from llmrec.utils.io import read_json

    run_dir = Path(run_dir)
    model = load_model(run_dir, device="cpu", data=ds)  # checks it is the dataset it was trained on
    exported = model.export_embeddings() if hasattr(model, "export_embeddings") else {}
    if not exported:
        raise LlmrecError(
            f"model '{model.name}' has no embeddings to export",
            file=run_dir,
            hint="use sasrec, mf, vbpr, ...",
        )
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    out = {}
    for key, (kind, values) in exported.items():
        ids = ds.items["item_id"] if kind == "item" else ds.users["user_id"]
        if len(values) != len(ids):
            raise LlmrecError(
                f"{model.name} exported {len(values)} {kind} rows for {len(ids)} {kind}s", file=run_dir
            )
        name = f"{prefix or model.name}_{key}"
        spec = {
            "kind": kind,
            "modality": "cf",
            "encoder": model.name,
            "source_run": str(run_dir.resolve()),
            "source_test_metrics": metrics.get("test", {}),
            "ids_sha256": ids_checksum(ids.astype(str).tolist()),
        }
        out[name] = save_feature(ds.features_dir, name, np.asarray(values, dtype=np.float32), spec).manifest
    return out


def build_features(cfg: FeaturesConfig) -> dict[str, Any]:
    """Compute the requested features; return their manifests by name."""
    ds = Dataset(Path(cfg.data))
    if cfg.cf:
        return export_cf_features(ds, cfg.cf, cfg.cf_prefix)
    out: dict[str, Any] = {}
    if cfg.text:
        out[cfg.text_name] = build_text_feature(ds, cfg).manifest
    if cfg.image:
        out[cfg.image_name] = build_image_feature(ds, cfg).manifest
    return out
