"""What a stored item feature was computed from: the exact texts and image files, fingerprinted, and why a
stored feature no longer matches its dataset (:func:`stale_reason`).

Below both the feature store (which refuses a stale feature when it is loaded) and the feature builder
(which records the fingerprints), so that neither imports the other's way back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llmrec.assets import DEFAULT_IMAGE_ENCODER
from llmrec.errors import LlmrecError
from llmrec.features.encoders import DEFAULT_TEMPLATE, check_template, dataset_item_fields, render_template
from llmrec.utils.io import sha256_file

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset


def ids_checksum(ids: Sequence[str]) -> str:
    """Fingerprint of the row order a feature was computed for (item or user ids)."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def item_texts(ds: Dataset, template: str) -> list[str]:
    """The rendered text of every item in item order."""
    rows = dataset_item_fields(ds.items, ds.root / "items.parquet")
    check_template(template, set().union(*(r.keys() for r in rows)) if rows else set())
    return [render_template(template, r) for r in rows]


def source_keys(sources: list[str | None]) -> list[str]:
    """Per item, the sha256 of the exact bytes a feature row is computed from: the rendered text
    (a ``str``) or the image file (a path); "" for an item without a source."""
    keys = []
    for s in sources:
        if isinstance(s, str):
            keys.append(hashlib.sha256(s.encode("utf-8")).hexdigest())
        elif s is None:
            keys.append("")
        else:
            keys.append(sha256_file(s))
    return keys


def unrecorded_pooling(manifest: dict[str, Any]) -> bool:
    """Whether an image feature of a transformers tower predates the recorded pooling: llmrec then read
    the pooled output even of a checkpoint without pooler weights (DINO v1), i.e. a random pooler."""
    return (
        manifest.get("modality") == "image"
        and manifest.get("encoder") != DEFAULT_IMAGE_ENCODER
        and "pooling" not in manifest
    )


def stale_reason(ds: Dataset, manifest: dict[str, Any]) -> str | None:
    """Why a stored feature no longer matches ``ds`` (None when it does): the item texts or image files it
    was computed from changed, or (CF embeddings) the dataset's content did."""
    modality = manifest.get("modality")
    if modality == "text":
        if "texts_sha256" not in manifest:
            return "it was computed by an older llmrec that did not record its texts"
        try:
            texts = item_texts(ds, manifest.get("template", DEFAULT_TEMPLATE))
        except LlmrecError:
            return "its template names fields the items no longer have"
        if ids_checksum(source_keys(list(texts))) != manifest["texts_sha256"]:
            return "the item texts changed since it was computed"
    elif modality == "image":
        from llmrec.data.images import image_paths

        if "images_sha256" not in manifest:
            return "it was computed by an older llmrec that did not record its image files"
        if unrecorded_pooling(manifest):
            return (
                "it was computed by an older llmrec that did not record its pooling (a checkpoint without "
                "pooler weights, as DINO's, got a randomly initialised pooler)"
            )
        if ids_checksum(source_keys(list(image_paths(ds)))) != manifest["images_sha256"]:
            return "the item images changed since it was computed"
    elif modality == "cf":
        identity = manifest.get("dataset_identity")
        if identity and identity != ds.identity:
            return (
                f"it was exported from a run on another dataset (content sha256 {identity[:12]}, "
                f"this one {ds.identity[:12]})"
            )
    return None
