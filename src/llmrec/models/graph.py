"""What the graph-based multimodal CF models (BM3, LGMRec) share: the user-item graph of the training
sequences, and item features held as buffers beside the weights.

:class:`FeatureGraphRecommender` builds the normalised graph, loads the item features the config names
(those the dataset's store has), scales them, gives each a learned "missing" vector and the model's own
per-feature layers (:meth:`~FeatureGraphRecommender.new_feature`), and records each feature's checksum in
``feature.json``: a saved model rebuilds graph and features from its dataset on loading and refuses a
feature that changed since it was trained.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.features.store import check_trained_feature, load_item_feature, scaled_item_values
from llmrec.models.mf import training_pairs
from llmrec.models.neural import TorchRecommender
from llmrec.placement import Placement
from llmrec.utils.io import read_json, write_json_atomic


def training_edges(sequences: list[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of the distinct training pairs (a repeated pair is one edge), sorted by user then item."""
    users = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])
    items = np.concatenate([s for s in sequences] or [np.zeros(0, np.int64)]).astype(np.int64)
    pairs = np.unique(users * n_items + items)
    return pairs // n_items, pairs % n_items


def normalized_adjacency(sequences: list[np.ndarray], n_users: int, n_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph of the training interactions: (U + N, U + N), sparse."""
    users, items = training_edges(sequences, n_items)
    items = items + n_users
    rows, cols = np.concatenate([users, items]), np.concatenate([items, users])
    degree = np.bincount(rows, minlength=n_users + n_items).astype(np.float32)
    inv = np.zeros_like(degree)
    inv[degree > 0] = degree[degree > 0] ** -0.5
    values = inv[rows] * inv[cols]
    index = torch.from_numpy(np.stack([rows, cols]))
    n = n_users + n_items
    adjacency = torch.sparse_coo_tensor(index, torch.from_numpy(values), (n, n), check_invariants=True)
    return adjacency.coalesce()


def compressed(matrix: torch.Tensor) -> torch.Tensor:
    """A coalesced sparse COO matrix as CSR: sparse x dense products (and their backward) run about 1.5x
    faster on CPU, the same values (the sums of a row in the same order up to float rounding)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return matrix.to_sparse_csr()


def _product(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    half = x.dtype not in (torch.float32, torch.float64)
    if half and x.device.type == "cpu":  # torch has no CPU kernel for a CSR product in bf16/fp16
        return (matrix.float() @ x.float()).to(x.dtype)
    return matrix @ x


class _SparseProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, matrix: torch.Tensor, transpose: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return _product(matrix, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, _product(ctx.transpose, grad)


def sparse_product(
    matrix: torch.Tensor, x: torch.Tensor, transpose: torch.Tensor | None = None
) -> torch.Tensor:
    """``matrix @ x`` for a constant sparse (CSR) ``matrix`` whose backward multiplies by the given
    ``transpose`` (default: ``matrix`` itself, symmetric as the normalised adjacency). torch's own backward
    transposes the CSR matrix (a sort) in every step, which took 60% of an LGMRec step on ML-100K."""
    return _SparseProduct.apply(matrix, matrix if transpose is None else transpose, x)


def features_option() -> Any:
    """The ``features`` option of every graph model's config (the last one, after the model's own)."""
    return option(
        factory=lambda: ["image", "text"], help="item features of the store (those it lacks are skipped)"
    )


def check_features(model: str, features: list[str]) -> None:
    """A graph model without any item feature would be plain LightGCN: refuse an empty ``features``."""
    if not features:
        raise ConfigError(f"{model} needs at least one item feature: -o features=[image, text]")


class FeatureGraphRecommender(TorchRecommender):
    """A torch model over the training graph (``adjacency``) and the item features named by ``cfg.features``
    (buffers ``feature_<name>`` (N, F), scaled, and ``missing_<name>`` (N,)). Every user and item node has
    an ID embedding of ``cfg.dim`` (``user_emb``, ``item_emb``) that :meth:`light_gcn` propagates. Subclasses
    add their per-feature layers in :meth:`new_feature` and any other graph in :meth:`attach_graph`.

    An item the dataset holds out of training (``prepare --cold-items``) has no edge in the graph and an ID
    embedding of zero (:meth:`item_ids`): each model scores it through its features."""

    needs_user_id = True  # a user is their node in the graph
    needs_dataset = True  # the graph and the features come from the dataset
    scores_unseen_items = True  # through its features; the ID embedding of an unseen item is zero

    def __init__(self, cfg: Any, n_users: int, n_items: int, placement: Placement | None = None) -> None:
        super().__init__(cfg, n_users, n_items, placement)
        self.missing_vectors = nn.ParameterDict()  # feature name -> the learned vector of an item without it
        self.sources: list[dict[str, Any]] = []
        self._dataset: Dataset | None = None
        self.user_emb = nn.Embedding(n_users, cfg.dim)
        self.item_emb = nn.Embedding(n_items, cfg.dim)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)

    def new_feature(self, name: str, size: int) -> None:
        """Create the layers of a feature of ``size`` dimensions, the first time it is attached."""
        raise NotImplementedError

    def attach_graph(self, dataset: Dataset) -> None:
        """Register the graph buffers of ``dataset``'s training sequences (default: ``adjacency``)."""
        adjacency = normalized_adjacency(dataset.train_sequences, self.n_users, self.n_items)
        self.register_buffer("adjacency", compressed(adjacency), persistent=False)

    def attach(self, dataset: Dataset, trained: dict[str, str] | None = None) -> None:
        """Build the graph of ``dataset``'s training sequences and hold its item features as buffers
        (``trained``: a saved model's features -> their checksums, each verified)."""
        self.attach_graph(dataset)
        names = list(trained or ()) or [
            n for n in self.cfg.features if (dataset.features_dir / f"{n}.json").exists()
        ]
        if not names:
            raise LlmrecError(
                f"{self.name} needs one of the item features {self.cfg.features}",
                file=dataset.features_dir,
                hint="compute one with 'llmrec features' or name one with -o features=[NAME]",
            )
        self.sources = []
        # the items never trained on (held out by prepare --cold-items): their ID embedding counts as zero
        self.register_buffer("unseen", torch.from_numpy(dataset.cold_items.copy()), persistent=False)  # (N,)
        for name in names:
            feature = load_item_feature(dataset, name, self.n_items, who=self.name, option="features")
            if trained is not None:
                check_trained_feature(dataset, name, trained[name], feature)
            values, present = scaled_item_values(feature)  # (N, F), (N,)
            self.register_buffer(f"feature_{name}", torch.from_numpy(values), persistent=False)  # (N, F)
            self.register_buffer(f"missing_{name}", torch.from_numpy(~present), persistent=False)  # (N,)
            if name not in self.missing_vectors:
                self.new_feature(name, values.shape[1])
                self.missing_vectors[name] = nn.Parameter(torch.zeros(self.cfg.dim))
            self.sources.append({"feature": name, "sha256": feature.manifest["sha256"]})
        self._dataset = dataset
        self.to(self.placement.device)

    def prepare(self, dataset: Dataset) -> None:
        self.attach(dataset)

    def light_gcn(self, layers: int) -> torch.Tensor:
        """LightGCN over the ID embeddings: the mean of the outputs of ``layers`` propagations and of the
        embeddings themselves, (U + N, D)."""
        if not hasattr(self, "adjacency"):
            raise LlmrecError(f"{self.name} has no graph yet", hint="fit the model or load a saved one")
        x = torch.cat([self.user_emb.weight, self.item_ids()])  # (U + N, D)
        outputs = [x]
        for _ in range(layers):
            x = sparse_product(self.adjacency, x)
            outputs.append(x)
        return torch.stack(outputs).mean(0)

    def item_ids(self) -> torch.Tensor:
        """(N, D) the item ID embeddings, zero for the items never trained on (not their random initial
        values): such an item is scored from its features only."""
        return self.item_emb.weight.masked_fill(self.unseen.unsqueeze(-1), 0.0)

    # -- training: batches of the observed (user, item) pairs
    def num_train_batches(self, dataset: Dataset) -> int:
        return -(-len(training_pairs(dataset.train_sequences, self.n_items)[0]) // self.cfg.batch_size)

    @property
    def trained_on(self) -> Dataset | None:
        return self._dataset

    # -- persistence: weights, plus the features by checksum
    def save_state(self, directory: Path) -> None:
        if not self.sources:
            raise LlmrecError(
                f"{self.name}: nothing to save before fit", file=directory, hint="fit the model first"
            )
        super().save_state(directory)
        write_json_atomic(directory / "feature.json", {"features": self.sources})

    def load_state(self, directory: Path, dataset: Dataset | None) -> None:
        ref = directory / "feature.json"
        if not ref.exists():
            raise LlmrecError(
                f"saved {self.name} model without feature.json", file=ref, hint="retrain the model"
            )
        saved = read_json(ref)["features"]
        assert dataset is not None  # needs_dataset: load_model located it
        self.attach(dataset, {s["feature"]: s["sha256"] for s in saved})
        super().load_state(directory, dataset)
