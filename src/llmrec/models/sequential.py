"""What the sequential models (SASRec, GRU4Rec, BERT4Rec) share: a user is their item sequence.

Each model encodes a left-padded sequence of item rows (item i is row i + 1 of ``item_emb``, row 0 the
padding) into one state per position; a user is the state at the last position of their history, and
one epoch trains on one sequence per user. :class:`SequentialRecommender` holds that scoring, the batch
count and the export of the item embeddings in dataset order; each model keeps its own encoder and loss.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from llmrec.errors import ConfigError
from llmrec.models.neural import TorchRecommender, left_pad, sequence_batch_count

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset


def check_heads(hidden: int, heads: int) -> None:
    """Attention splits the hidden size evenly among its heads: refuse a ``heads`` that does not divide it."""
    if hidden % heads:
        raise ConfigError(f"heads ({heads}) must divide hidden ({hidden})")


class SequentialRecommender(TorchRecommender):
    """A torch model of the user's item sequence; subclasses give :meth:`encode`, the batches and the loss.

    The config has ``batch_size`` and ``max_len`` (the most recent items kept)."""

    dot_product = True  # the user state . the item rows (BERT4Rec: through its output layer)
    item_emb: nn.Embedding  # row 0 padding, rows 1..N the items (BERT4Rec adds [MASK] after them)

    @abc.abstractmethod
    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, L) item rows (0 = padding, left-padded) -> (B, L, d) states in the item-embedding space."""

    def num_train_batches(self, dataset: Dataset) -> int:
        return sequence_batch_count(dataset, self.cfg.batch_size)

    # -- scoring: the state after the last real item (the last column) against every item
    def item_rows(self) -> torch.Tensor:
        """(N, d) the item embeddings in dataset order (rows 1..N)."""
        return self.item_emb.weight[1 : self.n_items + 1]

    def user_states(self, histories: list[np.ndarray]) -> torch.Tensor:
        return self.encode(left_pad(histories, self.cfg.max_len).to(self.device))[:, -1]  # (B, d)

    def score_all_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        return self.user_states(histories) @ self.item_rows().T  # (B, N)

    def query_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        return self.user_states(histories)  # (B, d)

    def item_tensor(self) -> torch.Tensor:
        return self.item_rows()  # (N, d)

    def export_embeddings(self) -> dict[str, tuple[str, np.ndarray]]:
        return {"item": ("item", self.item_rows().detach().cpu().numpy().copy())}
