"""I-LLMRec's items added after training (``llmrec add-items``): an item is its features and its texts,
never a learned ID, so a new one is scored exactly as a trained one with the same features would be.

Its IRE vectors come from the item projectors over its features (an item without an image through the
text fallback projector, as the trained image-less items); its title, description and picture token are
what a history holding it shows the LLM. Mixed into :class:`~llmrec.models.llm.illmrec.ILLMRec`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llmrec.errors import LlmrecError
from llmrec.llm.prompts import item_texts
from llmrec.models.base import unseen_rows

if TYPE_CHECKING:
    import pandas as pd


class AddedItems:
    """``check_item_rows`` / ``add_item_rows`` for I-LLMRec (feature buffers ``feat_<role>``, ``has_image``,
    the item texts and their rendered, tokenised cache)."""

    cfg: Any
    name: str
    n_items: int
    has_image: torch.Tensor
    item_proj: Any
    _texts: list[Any]
    _rendered: dict[str, list[str]]
    _lengths: dict[str, np.ndarray]
    backbone: Any

    def check_item_rows(self, features: dict[str, np.ndarray], texts: pd.DataFrame) -> None:
        """One line for what a new item cannot have: a CF embedding, a summary, a VLM's picture, or no
        image where no trained item lacked one (then there is no fallback projector)."""
        cfg, needs = self.cfg, self.feature_needs()  # type: ignore[attr-defined]
        why = None
        if "cf" in needs:
            why = "it reads CF embeddings, which an item never trained on does not have"
        elif cfg.representation in ("summary", "vlm"):
            why = f"its prompts show items as {cfg.representation!r}, which new items lack"
        if why:
            raise LlmrecError(
                f"model '{self.name}' cannot take new items: {why}",
                hint="add items to a run that reads text or image features (representation title, image...)",
            )
        if "image" in needs and "image_fallback" not in self.item_proj:
            gone = np.isnan(features["image"]).all(axis=1)
            if gone.any():
                raise LlmrecError(
                    f"item {texts['item_id'].iloc[int(np.argmax(gone))]!r} has no image, and every item of "
                    "this run had one, so it learned no fallback for items without",
                    field="image",
                    hint="give every new item an image",
                )

    def add_item_rows(self, features: dict[str, np.ndarray], texts: pd.DataFrame) -> None:
        """Append the new items' features, image flags and texts; extend the rendered prompts' cache."""
        self.check_item_rows(features, texts)
        grown: dict[str, torch.Tensor] = {}
        has_image = np.zeros(len(texts), dtype=bool)
        for role in self.feature_needs():  # type: ignore[attr-defined]
            values, missing = unseen_rows(features[role])  # (M, d), (M,)
            old = getattr(self, f"feat_{role}")
            grown[f"feat_{role}"] = torch.cat([old, torch.from_numpy(values).to(old)])  # (N + M, d)
            if role == "image":
                has_image = ~missing
        grown["has_image"] = torch.cat(
            [self.has_image, torch.from_numpy(has_image).to(self.has_image.device)]
        )
        descriptions = texts["description"].fillna("").astype(str).tolist()
        new_texts = item_texts(texts.fillna(""), descriptions, [""] * len(texts), has_image)
        rendered, lengths = dict(self._rendered), dict(self._lengths)
        for rep in rendered:  # the cache of rendered items, extended (not every item re-tokenised)
            added = self._render_new(new_texts, rep)
            tokens = self.backbone.tokenizer(added, add_special_tokens=False)["input_ids"]
            rendered[rep] = rendered[rep] + added
            lengths[rep] = np.concatenate([lengths[rep], np.asarray([len(t) for t in tokens]) + 1])
        for key, tensor in grown.items():
            setattr(self, key, tensor)
        self._texts = self._texts + new_texts
        self._rendered, self._lengths = rendered, lengths
        self.n_items += len(texts)

    def _render_new(self, new_texts: list[Any], representation: str) -> list[str]:
        """``render_items`` of the new items alone."""
        every = self._texts
        try:
            self._texts = new_texts
            return self.render_items(representation)  # type: ignore[attr-defined]
        finally:
            self._texts = every
