"""BERT4Rec (Sun et al., CIKM 2019): sequential recommendation with a bidirectional Transformer.

Item embeddings plus learned positions, LayerNorm and dropout, then a bidirectional (post-norm, GELU)
``nn.TransformerEncoder`` with padding masked out of attention. Trained with the cloze task: every real
position is replaced by the [MASK] token with probability ``mask_prob`` (at least one per sequence,
padding never), and the model predicts the original items at the masked positions with a softmax
cross-entropy over the whole catalog. At inference [MASK] is appended after the last ``max_len - 1``
history items and the state at that position scores every item.

Output layer as in the paper (eq. 7): ``GELU(h W + b) E^T + b_o`` with ``E`` the input item
embeddings (tied) and a per-item bias ``b_o``.

Choices: masked positions always get [MASK] (no BERT-style 10% random / 10% kept); one training
sequence per user, the last ``max_len`` items of the training part (as SASRec here; the paper's sliding
windows are left out, and a fresh masking every epoch plays the role of its dupe factor); optionally a
``last_item_prob`` fraction of sequences masks only the last item, matching inference (RecBole's
``ft_ratio``; off by default as in the paper); positions are the columns of the left-padded sequence,
so the last item (or the appended [MASK]) is always at position ``max_len - 1``. With one sequence per
user an epoch is only a few steps on small datasets: allow a patience of ~20 validations.

Internally item i is row i + 1, row 0 is padding and row N + 1 is [MASK]: ``export_embeddings``
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
from llmrec.models.neural import Batch, NeuralConfig, left_pad, trainable_users
from llmrec.models.sequential import SequentialRecommender, check_heads
from llmrec.placement import Placement

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class BERT4RecConfig(NeuralConfig):
    hidden: int = option(64, "embedding / hidden size (feed-forward is 4x)", ge=1)
    layers: int = option(2, "Transformer layers", ge=1)
    heads: int = option(2, "attention heads (must divide hidden)", ge=1)
    dropout: float = option(0.2, "dropout rate (embeddings, attention, feed-forward)", ge=0, lt=1)
    max_len: int = option(
        50, "maximum sequence length including the appended [MASK] (200 for MovieLens)", ge=2
    )
    mask_prob: float = option(
        0.2, "probability of masking each real item in training (cloze task)", gt=0, le=1
    )
    last_item_prob: float = option(
        0.0,
        "fraction of training sequences that mask only their last item, as at inference (RecBole ft_ratio)",
        ge=0,
        le=1,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads(self.hidden, self.heads)


def cloze_mask(
    rows: torch.Tensor,
    mask_prob: float,
    mask_row: int,
    rng: np.random.Generator,
    last_item_prob: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask real positions of (B, L) left-padded item rows (0 = padding) with probability ``mask_prob``,
    at least one per non-empty row; a ``last_item_prob`` fraction of rows masks only the last item.
    Returns (inputs with [MASK] = ``mask_row``, labels = original row where masked else 0)."""
    seqs = rows.numpy()
    real = seqs != 0  # (B, L)
    masked = (rng.random(seqs.shape) < mask_prob) & real  # (B, L)
    last_only = rng.random(len(seqs)) < last_item_prob  # (B,)
    masked[last_only] = False
    masked[last_only, -1] = real[last_only, -1]
    for b in np.flatnonzero(~masked.any(axis=1) & real.any(axis=1)):  # guarantee one mask per sequence
        masked[b, rng.choice(np.flatnonzero(real[b]))] = True
    inputs = np.where(masked, mask_row, seqs)  # (B, L)
    labels = np.where(masked, seqs, 0)  # (B, L)
    return torch.from_numpy(inputs), torch.from_numpy(labels)


@register_model("bert4rec")
class BERT4Rec(SequentialRecommender):
    config_cls = BERT4RecConfig
    scores_unseen_items = False  # an ID model: an unseen item has no trained embedding
    cfg: BERT4RecConfig

    def __init__(
        self, cfg: BERT4RecConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        super().__init__(cfg, n_users, n_items, placement)
        d = cfg.hidden
        self.mask_row = n_items + 1
        self.item_emb = nn.Embedding(n_items + 2, d, padding_idx=0)  # 0 padding, 1..N items, N+1 [MASK]
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d, cfg.heads, dim_feedforward=4 * d, dropout=cfg.dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.out_proj = nn.Linear(d, d)
        self.out_bias = nn.Parameter(torch.zeros(n_items))
        for name, p in self.named_parameters():  # BERT's initialisation: N(0, 0.02) weights, zero biases
            if p.dim() > 1:
                nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) item rows (0 = padding, left-padded, may hold [MASK]) -> (B, L, d) hidden states."""
        L = seqs.shape[1]
        positions = torch.arange(L, device=seqs.device)  # (L,)
        x = self.emb_dropout(self.emb_norm(self.item_emb(seqs) + self.pos_emb(positions)))  # (B, L, d)
        return self.encoder(x, src_key_padding_mask=seqs == 0)  # (B, L, d)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) states -> (..., N) item logits through the tied output layer."""
        return F.gelu(self.out_proj(h)) @ self.item_rows().T + self.out_bias

    # -- training: cloze task over the last max_len training items of each user
    def train_batches(self, dataset: Dataset, rng: np.random.Generator) -> Iterator[Batch]:
        seqs = dataset.train_sequences
        users = trainable_users(dataset)
        rng.shuffle(users)
        for start in range(0, len(users), self.cfg.batch_size):
            chunk = users[start : start + self.cfg.batch_size]
            rows = left_pad([seqs[u] for u in chunk], self.cfg.max_len)  # (B, L)
            inputs, labels = cloze_mask(rows, self.cfg.mask_prob, self.mask_row, rng, self.cfg.last_item_prob)
            yield {"inputs": inputs, "labels": labels}

    def loss(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch["inputs"])  # (B, L, d)
        masked = batch["labels"] != 0  # (B, L)
        return F.cross_entropy(self.logits(h[masked]), batch["labels"][masked] - 1)  # (M, N) logits

    # -- scoring: [MASK] appended after the history
    def score_all_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        return self.logits(self.mask_states(histories))  # (B, N)

    def mask_states(self, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, d) the state at a [MASK] appended after each history."""
        hist = left_pad(histories, self.cfg.max_len - 1)  # (B, L - 1)
        mask = torch.full((len(histories), 1), self.mask_row, dtype=torch.long)  # (B, 1)
        return self.encode(torch.cat([hist, mask], dim=1).to(self.device))[:, -1]  # (B, d)

    def query_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, d + 1) the output layer's input to the tied item rows, and a 1 that meets the output bias."""
        q = F.gelu(self.out_proj(self.mask_states(histories)))  # (B, d)
        return torch.cat([q, q.new_ones(len(q), 1)], dim=1)

    def item_tensor(self) -> torch.Tensor:
        """(N, d + 1) the tied item rows and the output bias."""
        return torch.cat([self.item_rows(), self.out_bias[:, None]], dim=1)
