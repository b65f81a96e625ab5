"""LGMRec (Guo et al., AAAI 2024, "LGMRec: Local and Global Graph Learning for Multimodal Recommendation").

Every user and item gets a *local* embedding from the user-item graph of the training sequences and a
*global* one from a hypergraph whose hyperedges are learned from the item features:

* collaborative local embedding: LightGCN over ID embeddings (symmetric normalisation, the mean of the
  ``ui_layers + 1`` layer outputs);
* modality local embedding, per item feature m (image, text: any in the dataset's store): items start from
  their projected feature f_i W_m, users from the mean over the items they interacted with, and
  ``mm_layers`` propagations over the same normalised graph give the last layer's output (no mean: an item
  no training user touched ends at zero here);
* global embedding, per feature m: ``n_hyper`` learnable hyperedges V_m (F x H). An item's hyperedge
  dependencies are H_i = softmax((f_i V_m) / tau), a user's H_u = softmax((A f V_m)_u / tau) with A the
  0/1 interaction matrix (the *sum* over the user's items, as the reference code). While training the
  softmax is a Gumbel-softmax and dropout (keep rate ``keep_rate``) masks the dependencies. Then
  ``hyper_layers`` rounds of E = H_i^T X_i (hyperedge embeddings, H x D), X_i = H_i E, X_u = H_u E, from
  the collaborative item embeddings X_i.

The final embedding is local collaborative + sum_m normalize(local_m) + alpha * normalize(sum_m global_m),
score(u, i) = <e_u, e_i>, and the loss is

    BPR(u, i, j) on one uniformly sampled unseen j
    + cl_weight * sum_{m < m'} [InfoNCE(global_m(u), global_m'(u)) + InfoNCE(global_m(i), global_m'(i))]
    + reg * (||e_u|| + ||e_i|| + ||e_j||) / B                               (Frobenius norms of the batch)

with the InfoNCE of the reference (cosine / tau against every user, resp. item, of the other modality as
negatives, summed over the batch). With one feature there is no pair and no contrastive term.

Defaults are MMRec's (``configs/model/LGMRec.yaml``, its first grid values, the "baby" block;
``configs/overall.yaml`` for the trainer): dim 64 (``embedding_size`` = ``feat_embed_dim``), ui_layers 2,
mm_layers 2, hyper_layers 1, n_hyper 4, keep_rate 0.5, alpha 0.3, cl_weight 1e-4, reg 1e-6 (``reg_weight``),
tau 0.2 (fixed in the reference ``LGMRec.py``), Adam lr 1e-3, batches of 2048. Where this code differs:

* scoring is deterministic: the reference draws Gumbel noise in every forward pass, at inference too;
  here an evaluating model (``eval()``) uses the plain softmax(logits / tau), so ``score``, ``score_all``
  and a saved -> loaded model agree;
* the reference falls back to the collaborative embedding alone unless both image and text exist; here any
  non-empty set of features works (``features``: those of the store, like BM3's);
* its ``cf_model: mf`` is ``ui_layers=0`` here;
* features are divided by their mean row norm (as VBPR's and BM3's), and an item whose feature is missing
  gets a learned vector in place of its projection and uniform hyperedge dependencies (zero logits).

An item held out of training (``prepare --cold-items``) has no edge and a zero ID embedding, so its local
embeddings are zero and it is scored through its global (hypergraph) embedding, whose dependencies come
from its features.

The graph and the features are rebuilt from the dataset when a saved model loads (``needs_dataset``);
``feature.json`` records each feature's checksum and a changed feature is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.models.base import register_model
from llmrec.models.graph import (
    FeatureGraphRecommender,
    check_features,
    compressed,
    features_option,
    sparse_product,
    training_edges,
)
from llmrec.models.mf import training_pairs
from llmrec.models.neural import Batch, NeuralConfig, minibatches, sample_unseen, seen_keys, without_held_out
from llmrec.placement import Placement


@dataclasses.dataclass(frozen=True)
class LGMRecConfig(NeuralConfig):
    batch_size: int = option(2048, "BPR (user, item, negative) triples per step", ge=1)
    dim: int = option(64, "size of the ID embeddings and of the projected features", ge=1)
    ui_layers: int = option(2, "LightGCN layers of the collaborative embeddings (0 = MF)", ge=0)
    mm_layers: int = option(2, "graph propagations of each feature's local embeddings", ge=0)
    hyper_layers: int = option(1, "hypergraph message-passing rounds", ge=1)
    n_hyper: int = option(4, "learnable hyperedges per feature", ge=1)
    keep_rate: float = option(
        0.5, "keep rate of the dropout on the hyperedge dependencies while training", gt=0, le=1
    )
    alpha: float = option(0.3, "weight of the normalised global (hypergraph) embedding in the sum", ge=0)
    cl_weight: float = option(
        1e-4, "weight of the hypergraph InfoNCE between the features' global embeddings", ge=0
    )
    reg: float = option(
        1e-6, "weight of (||e_u|| + ||e_i|| + ||e_j||) / B on the batch's final embeddings", ge=0
    )
    tau: float = option(0.2, "temperature of the hyperedge (Gumbel-)softmax and of the InfoNCE", gt=0)
    features: list[str] = features_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_features("lgmrec", self.features)


def interaction_matrix(sequences: list[np.ndarray], n_users: int, n_items: int) -> torch.Tensor:
    """(U, N) sparse 0/1 matrix of the training interactions (a repeated pair counts once)."""
    users, items = training_edges(sequences, n_items)
    index = torch.from_numpy(np.stack([users, items]))
    values = torch.ones(len(users), dtype=torch.float32)
    return torch.sparse_coo_tensor(index, values, (n_users, n_items), check_invariants=True).coalesce()


def row_mean(matrix: torch.Tensor) -> torch.Tensor:
    """A sparse 0/1 matrix with each row divided by its count: ``row_mean(A) @ X`` averages rows of X."""
    rows = matrix.indices()[0]
    count = torch.bincount(rows, minlength=matrix.shape[0]).float()
    values = matrix.values() / count[rows]
    return torch.sparse_coo_tensor(matrix.indices(), values, matrix.shape, check_invariants=True).coalesce()


def hypergraph_pass(
    item_edges: torch.Tensor, user_edges: torch.Tensor, items: torch.Tensor, layers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global embeddings (users (U, D), items (N, D)): ``layers`` rounds of E = H_i^T X_i, X_i = H_i E,
    X_u = H_u E, starting from the item embeddings X_i (``item_edges`` H_i (N, H), ``user_edges`` H_u (U, H))."""
    for _ in range(layers):
        edges = item_edges.T @ items  # (H, D): each hyperedge's embedding
        items = item_edges @ edges  # (N, D)
        users = user_edges @ edges  # (U, D)
    return users, items


def info_nce(a: torch.Tensor, b: torch.Tensor, all_b: torch.Tensor, tau: float) -> torch.Tensor:
    """Sum over the batch of -log softmax: row k of ``a`` against every row of ``all_b``, ``b[k]`` the
    positive (cosine similarities / tau; the positive is among ``all_b`` too, as in the reference)."""
    a, b, all_b = F.normalize(a, dim=-1), F.normalize(b, dim=-1), F.normalize(all_b, dim=-1)
    positive = (a * b).sum(-1) / tau  # (B,)
    return (torch.logsumexp(a @ all_b.T / tau, dim=-1) - positive).sum()


@register_model("lgmrec")
class LGMRec(FeatureGraphRecommender):
    config_cls = LGMRecConfig
    dot_product = True  # <e_u, e_i>
    cfg: LGMRecConfig

    def __init__(
        self, cfg: LGMRecConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        super().__init__(cfg, n_users, n_items, placement)  # the ID embeddings
        # per feature, created by attach() (their sizes come from the store): W_m, V_m, the missing vector
        self.projections = nn.ModuleDict()  # name -> Linear(F -> dim, no bias)
        self.hyperedges = nn.ModuleDict()  # name -> Linear(F -> n_hyper, no bias)

    # -- the dataset's parts: graphs and features (not saved with the weights)
    def attach_graph(self, dataset: Dataset) -> None:
        super().attach_graph(dataset)
        interactions = interaction_matrix(dataset.train_sequences, self.n_users, self.n_items)
        mean = row_mean(interactions)  # rows sum to 1
        # (U, N) 0/1 and row-mean matrices, and their (N, U) transposes for the backward pass
        for name, matrix in [("interactions", interactions), ("user_mean", mean)]:
            self.register_buffer(name, compressed(matrix), persistent=False)
            self.register_buffer(f"{name}_t", compressed(matrix.t().coalesce()), persistent=False)

    def new_feature(self, name: str, size: int) -> None:
        self.projections[name] = nn.Linear(size, self.cfg.dim, bias=False)
        self.hyperedges[name] = nn.Linear(size, self.cfg.n_hyper, bias=False)
        nn.init.xavier_uniform_(self.projections[name].weight)
        nn.init.xavier_uniform_(self.hyperedges[name].weight)

    def collaborative(self) -> torch.Tensor:
        """LightGCN over the ID embeddings: the mean of the layer outputs, (U + N, D)."""
        return self.light_gcn(self.cfg.ui_layers)

    def modality_local(self, name: str) -> torch.Tensor:
        """Feature ``name``'s local embeddings (U + N, D): projected items, users as the mean of their
        items, then ``mm_layers`` propagations (the last one kept)."""
        f = getattr(self, f"feature_{name}")  # (N, F)
        missing = getattr(self, f"missing_{name}").unsqueeze(-1)  # (N, 1)
        items = torch.where(missing, self.missing_vectors[name], self.projections[name](f))  # (N, D)
        x = torch.cat([sparse_product(self.user_mean, items, self.user_mean_t), items])  # (U + N, D)
        for _ in range(self.cfg.mm_layers):
            x = sparse_product(self.adjacency, x)
        return x

    def dependencies(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature ``name``'s hyperedge dependencies: users (U, H), items (N, H), rows summing to 1 (before
        the training dropout): a Gumbel-softmax while training, the softmax(logits / tau) otherwise."""
        missing = getattr(self, f"missing_{name}").unsqueeze(-1)  # (N, 1)
        item_logits = self.hyperedges[name](getattr(self, f"feature_{name}")).masked_fill(
            missing, 0.0
        )  # (N, H)
        user_logits = sparse_product(
            self.interactions, item_logits, self.interactions_t
        )  # (U, H): sum over the user's items
        if self.training:
            users = F.gumbel_softmax(user_logits, self.cfg.tau, dim=-1)
            items = F.gumbel_softmax(item_logits, self.cfg.tau, dim=-1)
            drop = 1 - self.cfg.keep_rate
            return F.dropout(users, drop), F.dropout(items, drop)
        return F.softmax(user_logits / self.cfg.tau, dim=-1), F.softmax(item_logits / self.cfg.tau, dim=-1)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Final users (U, D), items (N, D), and each feature's global (users, items) for the InfoNCE."""
        cge = self.collaborative()  # (U + N, D)
        local = cge
        glob: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in self.projections:
            local = local + F.normalize(self.modality_local(name), dim=-1)
            user_edges, item_edges = self.dependencies(name)
            glob[name] = hypergraph_pass(item_edges, user_edges, cge[self.n_users :], self.cfg.hyper_layers)
        total = torch.cat(
            [
                torch.stack([g[0] for g in glob.values()]).sum(0),
                torch.stack([g[1] for g in glob.values()]).sum(0),
            ]
        )
        out = local + self.cfg.alpha * F.normalize(total, dim=-1)  # (U + N, D)
        users, items = out.split([self.n_users, self.n_items])
        return users, items, glob

    # -- training: BPR against one unseen item, plus the hypergraph InfoNCE
    def train_batches(self, dataset: Dataset, rng: np.random.Generator) -> Iterator[Batch]:
        users, pos = training_pairs(dataset.train_sequences, self.n_items)
        neg = sample_unseen(rng, users, self.n_items, seen_keys(users, pos, self.n_items))
        neg = without_held_out(rng, neg, pos, dataset.cold_items)  # never a held-out item
        yield from minibatches(rng, self.cfg.batch_size, users=users, pos=pos, neg=neg)

    def loss(self, batch: Batch) -> torch.Tensor:
        users, pos, neg = batch["users"], batch["pos"], batch["neg"]
        all_u, all_i, glob = self.embeddings()
        u, p, n = all_u[users], all_i[pos], all_i[neg]  # (B, D)
        bpr = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
        names = list(glob)
        contrast = u.new_zeros(())
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                (ua, ia), (ub, ib) = glob[names[a]], glob[names[b]]
                contrast = contrast + info_nce(ua[users], ub[users], ub, self.cfg.tau)
                contrast = contrast + info_nce(ia[pos], ib[pos], ib, self.cfg.tau)
        reg = (u.norm() + p.norm() + n.norm()) / len(users)
        return bpr + self.cfg.cl_weight * contrast + self.cfg.reg * reg

    # -- scoring: <e_u, e_i>, histories ignored
    def score_all_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        all_u, all_i, _ = self.embeddings()
        return all_u[users] @ all_i.T  # (B, N)

    def query_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        return self.embeddings()[0][users]  # (B, D)

    def item_tensor(self) -> torch.Tensor:
        return self.embeddings()[1]  # (N, D)

    @torch.no_grad()
    def export_embeddings(self) -> dict[str, tuple[str, np.ndarray]]:
        """{"user": (U, D), "item": (N, D)}: the final embeddings (evaluation mode), whose dot product is the score."""
        was_training = self.training
        self.eval()
        all_u, all_i, _ = self.embeddings()
        self.train(was_training)
        return {"user": ("user", all_u.cpu().numpy().copy()), "item": ("item", all_i.cpu().numpy().copy())}
