"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation.

Follows the reference implementation (SASRec.pytorch): item embeddings scaled by sqrt(d) plus learned
positions, pre-LayerNorm causal self-attention blocks with a point-wise feed-forward, padding masked
after every block, a final LayerNorm; BCE on the next item vs one sampled negative at every position;
Adam(lr 1e-3, betas 0.9/0.98). Internally item i is row i + 1 (row 0 = padding): ``export_embeddings``
returns rows 1..N so that feature row i is dataset item i.
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
from llmrec.models.neural import Batch, NeuralConfig, next_item_batches
from llmrec.models.sequential import SequentialRecommender, check_heads
from llmrec.placement import Placement

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class SASRecConfig(NeuralConfig):
    hidden: int = option(50, "embedding / hidden size", ge=1)
    blocks: int = option(2, "self-attention blocks", ge=1)
    heads: int = option(1, "attention heads (must divide hidden)", ge=1)
    dropout: float = option(0.2, "dropout rate (0.2 reference; 0.5 for sparse Amazon data)", ge=0, lt=1)
    max_len: int = option(50, "maximum sequence length (200 for dense data such as MovieLens)", ge=1)
    l2_emb: float = option(0.0, "L2 penalty on the item embeddings", ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads(self.hidden, self.heads)


class PointWiseFeedForward(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.Dropout(dropout),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


@register_model("sasrec")
class SASRec(SequentialRecommender):
    config_cls = SASRecConfig
    scores_unseen_items = False  # an ID model: an unseen item has no trained embedding
    cfg: SASRecConfig

    def __init__(
        self, cfg: SASRecConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        super().__init__(cfg, n_users, n_items, placement)
        d = cfg.hidden
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len + 1, d, padding_idx=0)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(cfg.blocks))
        self.attns = nn.ModuleList(
            nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
            for _ in range(cfg.blocks)
        )
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(cfg.blocks))
        self.ffns = nn.ModuleList(PointWiseFeedForward(d, cfg.dropout) for _ in range(cfg.blocks))
        self.last_norm = nn.LayerNorm(d, eps=1e-8)
        for p in self.parameters():  # the reference initialises everything Xavier-normal
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.pos_emb.weight[0].zero_()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) item rows (0 = padding, left-padded) -> (B, L, d) hidden states."""
        L = seqs.shape[1]
        x = self.item_emb(seqs) * self.cfg.hidden**0.5  # (B, L, d)
        positions = torch.arange(1, L + 1, device=seqs.device).expand_as(seqs) * (seqs != 0)  # padding -> 0
        x = self.emb_dropout(x + self.pos_emb(positions))
        pad = (seqs == 0).unsqueeze(-1)  # (B, L, 1)
        x = x.masked_fill(pad, 0.0)
        causal = torch.ones(L, L, dtype=torch.bool, device=seqs.device).triu(1)  # True = may not attend
        for norm, attn, ffn_norm, ffn in zip(self.attn_norms, self.attns, self.ffn_norms, self.ffns):
            q = norm(x)
            out, _ = attn(q, x, x, attn_mask=causal, need_weights=False)
            x = ffn(ffn_norm(q + out)).masked_fill(pad, 0.0)
        return self.last_norm(x)

    # -- training: every position predicts the next item against one sampled negative
    def train_batches(self, dataset: Dataset, rng: np.random.Generator) -> Iterator[Batch]:
        return next_item_batches(
            dataset, rng, self.cfg.batch_size, self.cfg.max_len, self.n_items, negatives=True
        )

    def loss(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch["inputs"])  # (B, L, d)
        pos_logits = (h * self.item_emb(batch["pos"])).sum(-1)  # (B, L)
        neg_logits = (h * self.item_emb(batch["neg"])).sum(-1)  # (B, L)
        mask = batch["pos"] != 0
        loss = F.binary_cross_entropy_with_logits(
            pos_logits[mask], torch.ones_like(pos_logits[mask])
        ) + F.binary_cross_entropy_with_logits(neg_logits[mask], torch.zeros_like(neg_logits[mask]))
        if self.cfg.l2_emb:
            loss = loss + self.cfg.l2_emb * self.item_emb.weight.pow(2).sum()
        return loss

    # -- scoring: the last position's state against the candidates (score_all: SequentialRecommender)
    def score(self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray) -> np.ndarray:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            h = self.user_states(histories)  # (B, d)
            cand = self.item_emb(
                torch.as_tensor(np.asarray(candidates, dtype=np.int64) + 1, device=self.device)
            )  # (B, C, d)
            out = torch.einsum("bd,bcd->bc", h, cand).cpu().numpy()
        self.train(was_training)
        return out
