"""MF: matrix factorisation, trained with BPR (Rendle et al., UAI 2009) or on CTR labels (CoLLM / HistLLM).

score(u, i) = <p_u, q_i> + b_i. The score ignores the history: a user is their id, so a user unseen in
training keeps a random embedding.

- ``objective="bpr"`` (default, the ranking protocol): every (user, item) pair of the training sequences
  against one item drawn uniformly among those the user has not interacted with in training, loss
  -log sigmoid(s(u, i) - s(u, j)) plus ``reg`` times the squared norms of p_u, q_i, q_j (and b_i, b_j):
  Rendle's per-example L2, averaged over the batch.
- ``objective="ctr"`` (the CTR protocol of CoLLM and HistLLM): the labelled rows of ``dataset.ctr("train")``
  with BCE-with-logits on s(u, i), the same per-example L2, and early stopping on valid AUC of
  ``dataset.ctr("valid")`` (:meth:`MF.validation_metric`). CoLLM and HistLLM use 256-d embeddings for
  the collaborative tokens they feed the LLM: ``-o objective=ctr -o dim=256``. Under the global time
  split most valid/test CTR users are absent from CTR train (84% of valid rows on MovieLens-100K), so
  their embeddings stay random: there a larger ``reg`` (0.1: valid AUC 0.689 vs 0.630 at 1e-4) wins by
  shrinking the dot product towards zero, leaving mostly the item bias.

Embeddings start from N(0, 0.1^2) (MyMediaLite's BPR-MF); Adam lr 1e-3, batches of 1024 examples.
``reg`` defaults to 1e-4 per example: on MovieLens-100K, 0 to 1e-3 give the same valid NDCG@10
(0.354 to 0.357) and 0.1 collapses MF to the popularity ranking. ``export_embeddings`` returns P and Q in the dataset's user and
item order (row u = user index u, row i = item index i), so <user[u], item[i]> + b_i = score(u, i).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec.config import option
from llmrec.errors import ConfigError
from llmrec.models.base import register_model
from llmrec.models.neural import (
    Batch,
    NeuralConfig,
    TorchRecommender,
    minibatches,
    sample_unseen,
    seen_keys,
    without_held_out,
)
from llmrec.placement import Placement

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class MFConfig(NeuralConfig):
    batch_size: int = option(1024, "training examples per step", ge=1)
    dim: int = option(64, "embedding size (CoLLM / HistLLM's CTR embeddings: 256)", ge=1)
    item_bias: bool = option(True, "learn a bias b_i per item")
    reg: float = option(1e-4, "L2 on the embeddings (and biases) each example touches, per example", ge=0)
    objective: Literal["bpr", "ctr"] = option(
        "bpr", "bpr: ranking on the sequences; ctr: BCE on the CTR train labels, early stop on valid AUC"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in ("bpr", "ctr"):
            raise ConfigError(f"objective must be 'bpr' or 'ctr', got {self.objective!r}")


def training_pairs(sequences: list[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of every training interaction, users with at least one item left to sample as negative."""
    lengths = np.array([len(np.unique(s)) for s in sequences], dtype=np.int64)
    keep = (lengths > 0) & (lengths < n_items)
    users = np.repeat(np.arange(len(sequences)), [len(s) if k else 0 for s, k in zip(sequences, keep)])
    items = np.concatenate([s for s, k in zip(sequences, keep) if k] or [np.zeros(0, np.int64)])
    return users.astype(np.int64), items.astype(np.int64)


@register_model("mf")
class MF(TorchRecommender):
    needs_user_id = True  # a user is its learned embedding (VBPR too)
    dot_product = True  # [p_u, 1] . [q_i, b_i] (VBPR: its factors appended)
    config_cls = MFConfig
    scores_unseen_items = False  # an ID model: an unseen item has no trained embedding (VBPR: True)
    cfg: MFConfig

    def __init__(self, cfg: MFConfig, n_users: int, n_items: int, placement: Placement | None = None) -> None:
        super().__init__(cfg, n_users, n_items, placement)
        self.user_emb = nn.Embedding(n_users, cfg.dim)
        self.item_emb = nn.Embedding(n_items, cfg.dim)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        if cfg.item_bias:
            self.item_bias = nn.Parameter(torch.zeros(n_items))
        else:
            self.register_parameter("item_bias", None)

    # -- the factorisation; VBPR extends these two and the penalty
    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """(...) user indices -> (..., D) user factors."""
        return self.user_emb(users)

    def item_terms(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(...) item indices -> ((..., D) item factors, (...) item bias): score = <user, item> + bias."""
        bias = (
            self.item_bias[items]
            if self.item_bias is not None
            else self.item_emb.weight.new_zeros(items.shape)
        )
        return self.item_emb(items), bias

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of broadcastable user and item index tensors, e.g. (B, 1) x (B, C) -> (B, C)."""
        vectors, bias = self.item_terms(items)  # (..., D), (...)
        return (self.user_vectors(users) * vectors).sum(-1) + bias

    def penalty(self, users: torch.Tensor, *items: torch.Tensor) -> torch.Tensor:
        """``reg`` times the batch mean of the squared norms of the parameters each example touches
        (Rendle's L2)."""
        sq = self.user_emb(users).pow(2).sum(-1)  # (B,)
        for i in items:
            sq = sq + self.item_emb(i).pow(2).sum(-1)
            if self.item_bias is not None:
                sq = sq + self.item_bias[i].pow(2)
        return self.cfg.reg * sq.mean()

    # -- training
    def num_train_batches(self, dataset: Dataset) -> int:
        if self.cfg.objective == "ctr":
            n = len(dataset.ctr("train"))
        else:
            n = len(training_pairs(dataset.train_sequences, self.n_items)[0])
        return -(-n // self.cfg.batch_size)

    def train_batches(self, dataset: Dataset, rng: np.random.Generator) -> Iterator[Batch]:
        if self.cfg.objective == "ctr":
            df = dataset.ctr("train")
            columns = {
                "users": df["user_idx"].to_numpy(np.int64),
                "pos": df["target"].to_numpy(np.int64),
                "labels": df["label"].to_numpy(np.float32),
            }
        else:
            users, pos = training_pairs(dataset.train_sequences, self.n_items)
            neg = sample_unseen(rng, users, self.n_items, seen_keys(users, pos, self.n_items))
            neg = without_held_out(rng, neg, pos, dataset.cold_items)  # never a held-out item
            columns = {"users": users, "pos": pos, "neg": neg}
        yield from minibatches(rng, self.cfg.batch_size, **columns)

    def loss(self, batch: Batch) -> torch.Tensor:
        users, pos = batch["users"], batch["pos"]
        if "labels" in batch:  # ctr
            logits = self.pair_scores(users, pos)  # (B,)
            return F.binary_cross_entropy_with_logits(logits, batch["labels"]) + self.penalty(users, pos)
        neg = batch["neg"]
        diff = self.pair_scores(users, pos) - self.pair_scores(users, neg)  # (B,)
        return -F.logsigmoid(diff).mean() + self.penalty(users, pos, neg)

    def validation_metric(self, ds: Any) -> tuple[str, float] | None:
        """Early-stopping criterion: valid AUC of the CTR examples for ``objective="ctr"``; None (the
        trainer's ranking NDCG@10) for BPR."""
        if self.cfg.objective != "ctr":
            return None
        from llmrec.eval.metrics import auc

        df = ds.ctr("valid")
        users, targets = df["user_idx"].to_numpy(np.int64), df["target"].to_numpy(np.int64)
        scores = self.score_pairs(users, [np.zeros(0, np.int64)] * len(df), targets)  # (n,)
        return "valid_auc", auc(df["label"].to_numpy(), scores)

    # -- scoring: histories are ignored
    def score_all_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        vectors, bias = self.item_terms(torch.arange(self.n_items, device=self.device))  # (N, D), (N,)
        return self.user_vectors(users) @ vectors.T + bias  # (B, N)

    def query_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, D + 1) the user factors and a 1 that meets the item bias."""
        u = self.user_vectors(users)  # (B, D)
        return torch.cat([u, u.new_ones(len(u), 1)], dim=1)

    def item_tensor(self) -> torch.Tensor:
        """(N, D + 1) the item factors and the item bias."""
        vectors, bias = self.item_terms(torch.arange(self.n_items, device=self.device))  # (N, D), (N,)
        return torch.cat([vectors, bias[:, None]], dim=1)

    @torch.no_grad()
    def score(self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray) -> np.ndarray:
        was_training = self.training
        self.eval()
        u = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)[:, None]  # (B, 1)
        c = torch.as_tensor(np.asarray(candidates, dtype=np.int64), device=self.device)  # (B, C)
        out = self.pair_scores(u, c).float().cpu().numpy()  # (B, C)
        self.train(was_training)
        return out

    @torch.no_grad()
    def export_embeddings(self) -> dict[str, tuple[str, np.ndarray]]:
        """{"user": (U, D), "item": (N, D)} in dataset order; <user[u], item[i]> + item bias = score(u, i)."""
        users = self.user_vectors(torch.arange(self.n_users, device=self.device))  # (U, D)
        items, _ = self.item_terms(torch.arange(self.n_items, device=self.device))  # (N, D)
        return {"user": ("user", users.cpu().numpy().copy()), "item": ("item", items.cpu().numpy().copy())}
