"""``llmrec features``: compute a dataset's text and image item features into its feature store."""

from __future__ import annotations

import dataclasses
import logging
import re
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
    load_image_encoder,
    load_text_encoder,
)
from llmrec.features.sources import ids_checksum, item_texts, source_keys, unrecorded_pooling
from llmrec.features.store import (
    Feature,
    clean_leftovers,
    compute_feature,
    is_current,
    load_feature,
    save_feature,
    stale_keys,
)
from llmrec.placement import device_option
from llmrec.utils.lock import folder_lock

log = logging.getLogger(__name__)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a feature's file name stem: no path, no leading dot


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
    device: str = device_option()
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
        for key in ("text_name", "image_name", "cf_prefix"):
            value = getattr(self, key)
            if value is not None and not _NAME.match(value):
                raise ConfigError(
                    f"{key} {value!r} is not a plain file name", hint="use letters, digits, '.', '_' or '-'"
                )


def _text_spec(ds: Dataset, cfg: FeaturesConfig, texts: list[str]) -> dict[str, Any]:
    return {
        "kind": "item",
        "modality": "text",
        "encoder": cfg.text_encoder,
        "template": cfg.template,
        "ids_sha256": ids_checksum(ds.items["item_id"].tolist()),
        # the exact texts encoded: a re-prepared dataset with other titles makes the feature stale
        "texts_sha256": ids_checksum(source_keys(list(texts))),
    }


def _image_spec(ds: Dataset, cfg: FeaturesConfig, paths: list[Path | None]) -> dict[str, Any]:
    return {
        "kind": "item",
        "modality": "image",
        "encoder": cfg.image_encoder,
        "ids_sha256": ids_checksum(ds.items["item_id"].tolist()),
        # the exact image bytes encoded ("" = no image): a changed or re-downloaded file makes it stale
        "images_sha256": ids_checksum(source_keys(list(paths))),
    }


def _current_feature(root: Path, name: str, spec: dict[str, Any], force: bool) -> Feature | None:
    """The stored feature ``name`` when it was computed from exactly ``spec`` and its files are intact;
    None (saying why) when it must be computed again."""
    if force:
        return None
    if is_current(root, name, spec):
        try:
            feature = load_feature(root, name)
        except LlmrecError as e:
            log.warning("feature '%s' is damaged (%s): recomputing it", name, e)
            return None
        if unrecorded_pooling(feature.manifest):
            log.warning(
                "feature '%s' does not record its pooling (maybe a random pooler): recomputing it", name
            )
            return None
        clean_leftovers(root, name, feature.manifest)
        log.info("feature '%s' is up to date", name)
        return feature
    changed = stale_keys(root, name, spec)
    if changed:
        log.warning("feature '%s' is stale (changed: %s): recomputing it", name, ", ".join(changed))
    return None


def build_text_feature(ds: Dataset, cfg: FeaturesConfig) -> Feature:
    """Encode every item's rendered text, unless a feature of exactly these texts exists."""
    texts = item_texts(ds, cfg.template)
    spec = _text_spec(ds, cfg, texts)
    root = ds.features_dir
    current = _current_feature(root, cfg.text_name, spec, cfg.force)
    if current is not None:
        return current
    encoder = load_text_encoder(cfg.text_encoder, cfg.device, cfg.batch_size)
    missing = np.array([not t for t in texts])

    def encode(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return encoder.encode([texts[i] or " " for i in idx]), missing[idx]

    spec["dataset_identity"] = ds.identity  # recorded, not part of the key: texts decide staleness
    return compute_feature(
        root, cfg.text_name, len(texts), encoder.dim, encode, spec, cfg.batch_size, desc="text features"
    )


def build_image_feature(ds: Dataset, cfg: FeaturesConfig) -> Feature:
    """Encode every item's image file, unless a feature of exactly these image bytes exists."""
    from PIL import Image

    from llmrec.data.images import image_paths

    paths = image_paths(ds)
    spec = _image_spec(ds, cfg, paths)
    root = ds.features_dir
    current = _current_feature(root, cfg.image_name, spec, cfg.force)
    if current is not None:
        return current
    encoder = load_image_encoder(cfg.image_encoder, cfg.device)

    def encode(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images: list[Any] = []
        missing = np.zeros(len(idx), dtype=bool)
        for j, i in enumerate(idx):
            path = paths[i]
            try:
                with Image.open(path) as im:  # type: ignore[arg-type]
                    images.append(im.convert("RGB"))
            except Exception as e:  # None, unreadable, truncated, a decompression bomb: a missing image
                if path is not None:
                    log.warning("item row %d: image %s unreadable (%s): flagged missing", i + 1, path, e)
                missing[j] = True
                images.append(Image.new("RGB", (32, 32)))
        return encoder.encode(images), missing

    spec["dataset_identity"] = ds.identity
    spec["pooling"] = encoder.pooling  # recorded: decided by the checkpoint (e.g. CLS when it has no pooler)
    return compute_feature(
        root, cfg.image_name, len(paths), encoder.dim, encode, spec, cfg.batch_size, desc="image features"
    )


def _check_run_dataset(run_dir: Path, ds: Dataset) -> None:
    """Refuse a run trained on another dataset: compare the content checksum the run recorded (its
    config.json, else its model.json) with ``ds``'s, not merely the user and item counts."""
    from llmrec.utils.io import read_json

    recorded = None
    for path, keys in (
        (run_dir / "config.json", ("_llmrec", "dataset")),
        (run_dir / "model" / "model.json", ("dataset",)),
    ):
        if not path.exists():
            continue
        node: Any = read_json(path)
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get("identity"):
            recorded = str(node["identity"])
            break
    if recorded is not None and recorded != ds.identity:
        raise LlmrecError(
            f"not the dataset the model was trained on (the run recorded content sha256 {recorded[:12]}, "
            f"{ds.root} has {ds.identity[:12]})",
            file=run_dir,
            hint="export it into the dataset it was trained on, or train a run on this one",
        )


def export_cf_features(ds: Dataset, run_dir: str | Path, prefix: str | None = None) -> dict[str, Any]:
    """Write a trained model's embeddings into the feature store as ``<prefix>_<item|user>``.

    Rows follow the dataset's item (user) order whatever the model's own indexing (SASRec's padding row 0
    is dropped by the model's ``export_embeddings``); the manifest names the run they came from. The rows
    of the items the dataset holds out (``prepare --cold-items``), which the model never trained on, are
    zero.
    """
    from llmrec.models.base import load_model
    from llmrec.utils.io import read_json

    run_dir = Path(run_dir)
    _check_run_dataset(run_dir, ds)
    model = load_model(run_dir, device="cpu", data=ds)
    exported = model.export_embeddings()
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
        values = np.array(values, dtype=np.float32)
        if kind == "item" and ds.cold_items.any():  # never trained on: no learned vector, zero (not random)
            values[ds.cold_items] = 0.0
        spec = {
            "kind": kind,
            "modality": "cf",
            "encoder": model.name,
            "source_run": str(run_dir.resolve()),
            "source_test_metrics": metrics.get("test", {}),
            "dataset_identity": ds.identity,
            "ids_sha256": ids_checksum(ids.astype(str).tolist()),
        }
        out[name] = save_feature(ds.features_dir, name, values, spec).manifest
    return out


def features_to_compute(cfg: FeaturesConfig) -> list[str]:
    """The names of the text/image features ``cfg`` asks for that are missing or stale (``llmrec
    reproduce`` skips the step when there are none); nothing is loaded or computed."""
    from llmrec.data.images import image_paths

    ds = Dataset(Path(cfg.data))
    root, todo = ds.features_dir, []
    if cfg.text:
        spec = _text_spec(ds, cfg, item_texts(ds, cfg.template))
        if cfg.force or not is_current(root, cfg.text_name, spec):
            todo.append(cfg.text_name)
    if cfg.image:
        spec = _image_spec(ds, cfg, image_paths(ds))
        if cfg.force or not is_current(root, cfg.image_name, spec):
            todo.append(cfg.image_name)
    return todo


def build_features(cfg: FeaturesConfig) -> dict[str, Any]:
    """Compute the requested features; return their manifests by name."""
    from llmrec.devices import resolve_device

    # a device torch cannot use here is one line, before any work
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))
    with folder_lock(cfg.data, "dataset"):  # one writer of the dataset (prepare, images, features) at a time
        return _build_locked(cfg)


def _build_locked(cfg: FeaturesConfig) -> dict[str, Any]:
    ds = Dataset(Path(cfg.data))
    if cfg.cf:
        return export_cf_features(ds, cfg.cf, cfg.cf_prefix)
    out: dict[str, Any] = {}
    if cfg.text:
        out[cfg.text_name] = build_text_feature(ds, cfg).manifest
    if cfg.image:
        out[cfg.image_name] = build_image_feature(ds, cfg).manifest
    return out
