"""VBPR (He & McAuley, AAAI 2016): BPR matrix factorisation plus a visual preference term.

score(u, i) = b_i + <gamma_u, gamma_i> + <theta_u, E f_i> + <beta', f_i>

An item held out of training (``prepare --cold-items``) has no gamma_i and no b_i: both are zero, so it is
scored by <theta_u, E f_i> + <beta', f_i> alone.

f_i is a precomputed item feature from the dataset's feature store: option ``feature``, "image" by
default as in the paper (CNN image features), but any item feature works, e.g. ``-o feature=text`` on
MovieLens, which has no images. E (no bias, to ``visual_dim``) and beta' are learned. The paper's global
offset and user bias are left out: they cancel in the BPR difference and never change a user's ranking.
Features are divided by their mean row norm (of the items that have one) so that one learning rate fits
every encoder. Items whose feature is missing (the store's ``missing`` mask) get a learned vector m in
place of E f_i and no beta' term, rather than the projection of a zero row.

Everything else is MF's (:mod:`llmrec.models.mf`): the BPR (or CTR) training examples, per-example L2
``reg`` on gamma_u, theta_u, gamma_i, b_i; E, beta' and m get ``reg_visual`` once per batch (0 by
default: they are shared by all items). ``export_embeddings`` returns [gamma_u; theta_u] and
[gamma_i; E f_i (or m)] in dataset order, so their dot product is the score minus b_i + <beta', f_i>.

The feature is read once before training (``prepare``) into a buffer that is not saved with the weights;
``feature.json`` in the model directory records the dataset path, the feature name and its sha256, and
loading the model re-reads the feature from that store, refusing one whose checksum has changed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.features.store import (
    Feature,
    check_trained_feature,
    feature_norm,
    load_item_feature,
    scaled_item_values,
)
from llmrec.models.base import register_model, unseen_rows
from llmrec.models.mf import MF, MFConfig
from llmrec.placement import Placement
from llmrec.utils.io import read_json, write_json_atomic

if TYPE_CHECKING:
    import pandas as pd


@dataclasses.dataclass(frozen=True)
class VBPRConfig(MFConfig):
    feature: str = option("image", "item feature used as f_i (any name in the store, e.g. text on MovieLens)")
    visual_dim: int = option(32, "size of theta_u and of the projected feature E f_i", ge=1)
    reg_visual: float = option(0.0, "L2 on E, beta' and the missing-feature vector m, once per batch", ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.feature:
            raise ConfigError("feature must name an item feature of the dataset's store")


@register_model("vbpr")
class VBPR(MF):
    config_cls = VBPRConfig
    needs_dataset = True
    scores_unseen_items = True  # through <theta_u, E f_i> + <beta', f_i>; its ID part is zero
    cfg: VBPRConfig

    def __init__(
        self, cfg: VBPRConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        super().__init__(cfg, n_users, n_items, placement)
        self.user_visual = nn.Embedding(n_users, cfg.visual_dim)  # theta_u
        nn.init.normal_(self.user_visual.weight, std=0.1)
        self.missing_visual = nn.Parameter(torch.zeros(cfg.visual_dim))  # m, stands in for E f_i
        # E and beta' depend on the feature's size: attach_feature creates them (in prepare or load_state).
        self.proj: nn.Linear | None = None
        self.source: dict[str, Any] | None = None
        self._dataset: Dataset | None = None

    def attach_feature(self, feature: Feature) -> None:
        """Hold the feature as (N, F) float32 buffers (not saved with the weights) and create E, beta'."""
        values, present = scaled_item_values(feature)  # (N, F), (N,)
        raw = np.asarray(feature.values, dtype=np.float32)
        self.feature_scale = feature_norm(raw, present) or 1.0  # added items are divided by the same
        self.register_buffer("features", torch.from_numpy(values), persistent=False)  # (N, F)
        self.register_buffer("missing", torch.from_numpy(~present), persistent=False)  # (N,)
        self.proj = nn.Linear(values.shape[1], self.cfg.visual_dim, bias=False)  # E
        self.beta_visual = nn.Parameter(torch.zeros(values.shape[1]))  # beta'

    def prepare(self, dataset: Dataset) -> None:
        """Attach the dataset's item feature (E and beta' are sized by it) before training."""
        feature = load_item_feature(dataset, self.cfg.feature, self.n_items, who="vbpr")
        self.attach_feature(feature)
        self.hold_out(dataset)
        self._dataset = dataset
        self.source = {
            "feature": self.cfg.feature,
            "sha256": feature.manifest["sha256"],
            "shape": list(feature.values.shape),
        }

    def feature_needs(self) -> dict[str, str]:
        """The one item feature f_i, by its role ``feature``."""
        return {"feature": self.cfg.feature}

    def add_item_rows(self, features: dict[str, np.ndarray], texts: pd.DataFrame) -> None:
        """Items never trained on: their visual terms from f_i (scaled as the trained items'), no
        gamma_i and no b_i (zero): score = <theta_u, E f_i> + <beta', f_i>, or <theta_u, m> without f_i."""
        values, missing = unseen_rows(features["feature"])  # (M, F), (M,)
        f = torch.from_numpy(values / self.feature_scale).to(self.features)
        grown = {
            "features": torch.cat([self.features, f]),  # (N + M, F)
            "missing": torch.cat([self.missing, torch.from_numpy(missing).to(self.missing.device)]),
        }
        if hasattr(self, "unseen"):  # the items never trained on (prepare --cold-items): these too
            grown["unseen"] = torch.cat([self.unseen, self.unseen.new_ones(len(values))])
        zeros = self.item_emb.weight.new_zeros(len(values), self.item_emb.weight.shape[1])
        weight = torch.cat([self.item_emb.weight.detach(), zeros])  # (N + M, d)
        bias = None if self.item_bias is None else torch.cat([self.item_bias.detach(), zeros[:, 0]])
        with torch.no_grad():
            self.item_emb.weight = nn.Parameter(weight, requires_grad=False)
            self.item_emb.num_embeddings = len(weight)
            if bias is not None:
                self.item_bias = nn.Parameter(bias, requires_grad=False)
            for name, tensor in grown.items():
                setattr(self, name, tensor)
        self.n_items += len(values)

    def hold_out(self, dataset: Dataset) -> None:
        """Mark the items ``dataset`` holds out (``prepare --cold-items``): never trained on, they are scored
        by their feature alone (their gamma_i and b_i are zero, not the random initial values)."""
        unseen = torch.from_numpy(dataset.cold_items.copy()).to(self.user_emb.weight.device)
        self.register_buffer("unseen", unseen, persistent=False)  # (N,)

    # -- the factorisation: MF's factors with the visual ones appended
    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.user_emb(users), self.user_visual(users)], dim=-1)  # (..., d + d')

    def item_terms(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.proj is None:
            raise LlmrecError("vbpr has no item feature yet", hint="fit the model or load a saved one")
        gamma, bias = super().item_terms(items)  # (..., d), (...)
        known = ~self.unseen[items]  # (...) an item never trained on has no ID part: gamma_i = b_i = 0
        gamma, bias = gamma * known.unsqueeze(-1), bias * known
        f = self.features[items]  # (..., F)
        missing = self.missing[items]  # (...)
        visual = torch.where(missing.unsqueeze(-1), self.missing_visual, self.proj(f))  # (..., d')
        bias = bias + (f @ self.beta_visual).masked_fill(missing, 0.0)  # (...)
        return torch.cat([gamma, visual], dim=-1), bias

    def penalty(self, users: torch.Tensor, *items: torch.Tensor) -> torch.Tensor:
        out = super().penalty(users, *items) + self.cfg.reg * self.user_visual(users).pow(2).sum(-1).mean()
        if self.cfg.reg_visual:
            assert self.proj is not None
            shared = (
                self.proj.weight.pow(2).sum()
                + self.beta_visual.pow(2).sum()
                + self.missing_visual.pow(2).sum()
            )
            out = out + self.cfg.reg_visual * shared
        return out

    # -- persistence: weights as MF, the feature by reference (dataset path + checksum)
    def save_state(self, directory: Path) -> None:
        if self.source is None:
            raise LlmrecError("vbpr: nothing to save before fit", file=directory, hint="fit the model first")
        super().save_state(directory)
        write_json_atomic(directory / "feature.json", self.source)

    @property
    def trained_on(self) -> Dataset | None:
        return self._dataset

    def load_state(self, directory: Path, dataset: Dataset | None) -> None:
        ref = directory / "feature.json"
        if not ref.exists():
            raise LlmrecError("saved vbpr model without feature.json", file=ref, hint="retrain the model")
        source = read_json(ref)
        source.pop("dataset", None)  # saved by older versions; model.json locates the dataset now
        assert dataset is not None  # needs_dataset: load_model located it
        ds = self._dataset = dataset
        feature = load_item_feature(ds, source["feature"], self.n_items, who="vbpr")
        check_trained_feature(ds, source["feature"], source["sha256"], feature)
        self.attach_feature(feature)
        self.hold_out(ds)
        self.source = source
        super().load_state(directory, dataset)
