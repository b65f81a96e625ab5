"""UniMP: I-LLMRec with the history items' pictures read by a vision-language model itself.

Everything is I-LLMRec's (:mod:`llmrec.models.llm.illmrec`), options included, but for what this file
overrides of its hooks: which items show a picture (those with an image file), the backbone (a VLM), no
adaptor of ours, and how a picture reaches the LM (the VLM's own image tokens and embeddings).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from llmrec.data.dataset import Dataset
from llmrec.llm.backbone import Backbone
from llmrec.llm.vlm import ItemPictures
from llmrec.models.base import register_model
from llmrec.models.llm.illmrec import ILLMRec


@register_model("unimp")
class UniMP(ILLMRec):
    """UniMP (Wei et al., 2024) as I-LLMRec's Table 1 runs it (the "I" row): history items shown to a
    pre-aligned vision-language model through its own vision tower and image tokens, with their title,
    brand and category; no ILA, no adaptor of ours; the LLM frozen and recommendations from the same IRE
    head ([REC] state -> projectors -> every catalog item). ``-o backbone.llm=<VLM folder or hub id>``."""

    preset = {"representation": "vlm", "ila": False}
    representations: ClassVar[tuple[str, ...]] = ("vlm",)
    representation_hint: ClassVar[str] = (
        "UniMP shows items through the VLM's own image tokens; the other representations are "
        "'llmrec train illmrec'"
    )
    _pictures: ItemPictures

    def shown_images(self, ds: Dataset, has_image: np.ndarray, drop: np.ndarray) -> np.ndarray:
        """The VLM reads the image files themselves: the items with a picture (less those dropped)."""
        self._pictures = ItemPictures(ds, "representation=vlm")
        shown = self._pictures.has.copy()
        shown[drop] = False
        return shown

    def load_backbone(self) -> Backbone:
        """The VLM, whose vision tower and processor read the pictures."""
        backbone = Backbone(self.cfg.backbone, self.placement, vision=True)
        self._pictures.bind(backbone.model, backbone.processor)
        return backbone

    def build_adaptors(self, feats: dict[str, Any], d: int) -> None:
        """None: the VLM's own projector puts its pictures into the LM (and no [CF] token is shown)."""

    def render_items(self, representation: str) -> list[str]:
        """[VISUAL] -> the VLM's image tokens, as many as its processor makes of the item's picture."""
        return self._pictures.markers(super().render_items(representation))

    @property
    def picture_token(self) -> str:
        assert self.backbone is not None and self.backbone.image_token is not None
        return self.backbone.image_token

    def inject_pictures(self, out: list[dict[str, torch.Tensor]], visual: list[torch.Tensor]) -> None:
        """The VLM's own image tokens of each picture (frozen: each computed once, then cached)."""
        assert self.backbone is not None and self.backbone.image_token is not None
        pictures = {int(i): self._pictures.embeddings(int(i)) for i in torch.unique(torch.cat(visual))}
        for inj, items in zip(out, visual):
            if len(items):
                inj[self.backbone.image_token] = torch.cat([pictures[int(i)] for i in items])
