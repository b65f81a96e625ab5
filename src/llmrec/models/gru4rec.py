"""GRU4Rec (Hidasi et al., ICLR 2016): session-based recommendation with recurrent neural networks.

The modern sequential-recommendation form used as a baseline (as in RecBole): item embedding -> dropout
-> GRU -> dense layer back to the embedding size; the state at every position scores all items by a dot
product with the (tied) item embeddings and predicts the next item.

Choices:

- loss ``"ce"`` (default): full softmax cross-entropy over the whole catalog at every position. The
  original paper samples in-batch negatives because its catalogs had hundreds of thousands of items;
  for the catalogs here (10^3 to 10^4 items) the exact softmax is cheap and trains better. ``"bpr"``
  is the paper's pairwise loss with one uniformly sampled negative (not in the user's history) per
  position.
- Inputs are left-padded (the most recent item in the last column). The GRU has no bias terms (as in
  RecBole) and padding embeds to zeros, so a zero input keeps the zero initial state exactly zero:
  the state after the last real item does not depend on how much padding precedes the history.
- One training sequence per user: the last ``max_len + 1`` items of the training part (as SASRec here).
  An epoch is then only a few steps on small datasets and the model first sits on a popularity
  plateau (about 20 epochs on MovieLens-100K): allow a patience of ~20 validations.

Internally item i is row i + 1 (row 0 = padding): ``export_embeddings`` returns rows 1..N so that
feature row i is dataset item i.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec.config import option
from llmrec.models.base import register_model
from llmrec.models.neural import Batch, NeuralConfig, next_item_batches
from llmrec.models.sequential import SequentialRecommender
from llmrec.placement import Placement

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class GRU4RecConfig(NeuralConfig):
    embedding: int = option(64, "item embedding size", ge=1)
    hidden: int = option(64, "GRU hidden size", ge=1)
    layers: int = option(1, "stacked GRU layers", ge=1)
    dropout: float = option(0.3, "dropout on the input item embeddings", ge=0, lt=1)
    max_len: int = option(50, "maximum sequence length (most recent items kept)", ge=1)
    loss: Literal["ce", "bpr"] = option(
        "ce", "'ce': softmax over all items; 'bpr': one sampled negative per position"
    )


@register_model("gru4rec")
class GRU4Rec(SequentialRecommender):
    config_cls = GRU4RecConfig
    scores_unseen_items = False  # an ID model: an unseen item has no trained embedding
    cfg: GRU4RecConfig

    def __init__(
        self, cfg: GRU4RecConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        super().__init__(cfg, n_users, n_items, placement)
        self.item_emb = nn.Embedding(n_items + 1, cfg.embedding, padding_idx=0)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        # no biases: with zero inputs (padding) the zero initial state stays exactly zero
        self.gru = nn.GRU(cfg.embedding, cfg.hidden, num_layers=cfg.layers, bias=False, batch_first=True)
        self.dense = nn.Linear(cfg.hidden, cfg.embedding)
        nn.init.xavier_normal_(self.item_emb.weight)  # RecBole's initialisation
        for w in self.gru.parameters():
            nn.init.xavier_uniform_(w)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) item rows (0 = padding, left-padded) -> (B, L, d) states in the item-embedding space."""
        x = self.emb_dropout(self.item_emb(seqs))  # (B, L, d); padding rows are zero, dropout keeps them so
        out, _ = self.gru(x)  # (B, L, hidden)
        return self.dense(out)  # (B, L, d)

    # -- training: every position predicts the next item
    def train_batches(self, dataset: Dataset, rng: np.random.Generator) -> Iterator[Batch]:
        negatives = self.cfg.loss == "bpr"
        return next_item_batches(dataset, rng, self.cfg.batch_size, self.cfg.max_len, self.n_items, negatives)

    def loss(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch["inputs"])  # (B, L, d)
        mask = batch["pos"] != 0  # (B, L) real targets
        if self.cfg.loss == "ce":
            logits = h[mask] @ self.item_rows().T  # (M, N)
            return F.cross_entropy(logits, batch["pos"][mask] - 1)
        pos_logits = (h * self.item_emb(batch["pos"])).sum(-1)  # (B, L)
        neg_logits = (h * self.item_emb(batch["neg"])).sum(-1)  # (B, L)
        return -F.logsigmoid(pos_logits[mask] - neg_logits[mask]).mean()
