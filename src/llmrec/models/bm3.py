"""BM3 (Zhou et al., WWW 2023, "Bootstrap Latent Representations for Multi-modal Recommendation").

A LightGCN backbone (the user-item graph of the training sequences, symmetric normalisation, the mean of
the layer outputs; the item ID embedding added back) gives user and item embeddings; each item feature
(image, text: any in the dataset's store) is projected to the same size. No negative sampling: for a
batch of observed (user, item) pairs, a shared linear predictor maps the *online* views, and the *target*
views are the same embeddings under dropout with the gradient stopped (the bootstrapping: no target
network, no momentum). The loss is

    (1 - cos(p(u), i~)) + (1 - cos(p(i), u~))                         user-item alignment
    + cl_weight * sum_m [(1 - cos(p(f_m), i~)) + (1 - cos(p(f_m), f_m~))]  features vs item, masked feature
    + reg * (||U||_F + ||I||_F) / N                                     on all backbone embeddings

with ``x~ = dropout(x).detach()``; the feature views run through the same predictor ``p``. The penalty has
the form of the reference implementation (MMRec's ``EmbLoss``: Frobenius norms, not squared, over every
user and item, divided by the number of items): the cosine terms do not depend on the embeddings' scale,
so a per-example squared L2 of the same weight shrinks them to zero unopposed (tried: on ML-100K valid
NDCG@10 fell from 0.19 to 0.03 within 10 epochs).
score(u, i) = <p(u), p(i)>. An item never trained on (held out by ``prepare --cold-items``) has a zero ID
embedding and no edge; its i is the mean of its feature views (:meth:`BM3.item_table`). Features are divided by their mean row norm (as VBPR's), and an item whose
feature is missing gets a learned vector in place of its projection.

The graph and the features are rebuilt from the dataset when a saved model loads (``needs_dataset``);
``feature.json`` records each feature's checksum and a changed feature is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec.config import option
from llmrec.models.base import register_model
from llmrec.models.graph import FeatureGraphRecommender, check_features, features_option
from llmrec.models.mf import training_pairs
from llmrec.models.neural import Batch, NeuralConfig, minibatches
from llmrec.placement import Placement

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class BM3Config(NeuralConfig):
    batch_size: int = option(2048, "observed (user, item) pairs per step", ge=1)
    dim: int = option(64, "embedding size of users, items and projected features", ge=1)
    layers: int = option(1, "LightGCN propagation layers", ge=0)
    dropout: float = option(0.3, "dropout that makes the target views", ge=0, lt=1)
    reg: float = option(0.1, "weight of (||U||_F + ||I||_F) / N on the backbone embeddings", ge=0)
    cl_weight: float = option(2.0, "weight of the feature alignment and masked-feature terms", ge=0)
    features: list[str] = features_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_features("bm3", self.features)


@register_model("bm3")
class BM3(FeatureGraphRecommender):
    config_cls = BM3Config
    dot_product = True  # <p(u), p(i)>
    cfg: BM3Config

    def __init__(
        self, cfg: BM3Config, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        super().__init__(cfg, n_users, n_items, placement)  # the ID embeddings
        self.predictor = nn.Linear(cfg.dim, cfg.dim)
        nn.init.xavier_normal_(self.predictor.weight)
        self.projections = nn.ModuleDict()  # feature name -> Linear(F -> dim), created by attach()

    def new_feature(self, name: str, size: int) -> None:
        self.projections[name] = nn.Linear(size, self.cfg.dim)
        nn.init.xavier_normal_(self.projections[name].weight)

    # -- the backbone and the views
    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """LightGCN: the mean of the layer outputs; the item ID embedding is added back (as BM3 does)."""
        users, items = self.light_gcn(self.cfg.layers).split([self.n_users, self.n_items])
        return users, items + self.item_ids()

    def item_table(self, items: torch.Tensor) -> torch.Tensor:
        """(N, D) the backbone's item embeddings ``items``, where an item never trained on takes the mean of
        its feature views: the cl term trains each view (through the predictor) to point where the item's
        embedding points, so for an item without an embedding that is the prediction of one."""
        unseen = torch.nonzero(self.unseen).squeeze(-1)  # (n,)
        if not len(unseen):
            return items
        views = torch.stack(list(self.feature_views(unseen).values())).mean(0)  # (n, D)
        return items.index_copy(0, unseen, views.to(items.dtype))

    def feature_views(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each feature of ``items`` projected to (B, D); missing ones are their learned vector."""
        out = {}
        for name, proj in self.projections.items():
            f = getattr(self, f"feature_{name}")[items]  # (B, F)
            missing = getattr(self, f"missing_{name}")[items].unsqueeze(-1)  # (B, 1)
            out[name] = torch.where(missing, self.missing_vectors[name], proj(f))  # (B, D)
        return out

    # -- training: observed pairs only, no negatives
    def train_batches(self, dataset: Dataset, rng: np.random.Generator) -> Iterator[Batch]:
        users, items = training_pairs(dataset.train_sequences, self.n_items)
        yield from minibatches(rng, self.cfg.batch_size, users=users, pos=items)

    def loss(self, batch: Batch) -> torch.Tensor:
        users, items = batch["users"], batch["pos"]
        all_u, all_i = self.propagate()
        u, i = all_u[users], all_i[items]  # (B, D)

        def target(x: torch.Tensor) -> torch.Tensor:
            return F.dropout(x.detach(), self.cfg.dropout, training=True)

        def miss(online: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            return 1 - F.cosine_similarity(self.predictor(online), tgt, dim=-1).mean()

        u_t, i_t = target(u), target(i)
        loss = miss(u, i_t) + miss(i, u_t)
        for f in self.feature_views(items).values():
            loss = loss + self.cfg.cl_weight * (miss(f, i_t) + miss(f, target(f)))
        reg = (all_u.norm() + all_i.norm()) / self.n_items
        return loss + self.cfg.reg * reg

    # -- scoring: <p(u), p(i)>, histories ignored
    def score_all_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        all_u, all_i = self.propagate()
        return self.predictor(all_u[users]) @ self.predictor(self.item_table(all_i)).T  # (B, N)

    def query_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        return self.predictor(self.propagate()[0][users])  # (B, D)

    def item_tensor(self) -> torch.Tensor:
        return self.predictor(self.propagate()[1])  # (N, D)

    @torch.no_grad()
    def export_embeddings(self) -> dict[str, tuple[str, np.ndarray]]:
        """{"user": (U, D), "item": (N, D)}: the predictor's outputs, whose dot product is the score."""
        all_u, all_i = self.propagate()
        all_i = self.item_table(all_i)
        return {
            "user": ("user", self.predictor(all_u).cpu().numpy().copy()),
            "item": ("item", self.predictor(all_i).cpu().numpy().copy()),
        }
