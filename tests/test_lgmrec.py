"""LGMRec's parts against hand-computed values: the interaction matrices, the hyperedge dependencies, the
hypergraph pass, the InfoNCE; gradients, persistence, Mirror Gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmrec.features.store import ids_checksum, save_feature
from llmrec.models.base import build_model
from llmrec.models.graph import compressed, normalized_adjacency, sparse_product
from llmrec.models.lgmrec import hypergraph_pass, info_nce, interaction_matrix, row_mean
from llmrec.training import fit


def test_interaction_matrices_by_hand():
    # user 0 - items 0, 2 (item 2 twice: one edge); user 1 - item 1; user 2 - nothing
    seqs = [np.array([0, 2, 2]), np.array([1]), np.zeros(0, np.int64)]
    a = interaction_matrix(seqs, n_users=3, n_items=3)
    expected = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(a.to_dense(), expected)
    torch.testing.assert_close(row_mean(a).to_dense(), torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0, 0, 0]]))


def test_sparse_product_gradients_match_dense():
    # the graph products' own backward (by the given transpose) against dense autograd, for the symmetric
    # adjacency and for the non-symmetric (U, N) row-mean matrix with its transpose
    seqs = [np.array([0, 2, 2]), np.array([1, 3]), np.array([3, 0, 1])]
    adjacency = normalized_adjacency(seqs, n_users=3, n_items=4)
    mean = row_mean(interaction_matrix(seqs, n_users=3, n_items=4))
    for matrix, transpose in [(adjacency, None), (mean, mean.t().coalesce())]:
        x = torch.randn(matrix.shape[1], 5, requires_grad=True, dtype=torch.float64)
        weights = torch.randn(matrix.shape[0], 5, dtype=torch.float64)
        csr_t = None if transpose is None else compressed(transpose.double())
        (sparse_product(compressed(matrix.double()), x, csr_t) * weights).sum().backward()
        grad, x.grad = x.grad, None
        (matrix.double().to_dense() @ x * weights).sum().backward()
        torch.testing.assert_close(grad, x.grad)
    # half precision (no CPU kernel for a CSR product in it): computed in float32, returned in bfloat16
    x = torch.randn(adjacency.shape[1], 5, requires_grad=True, dtype=torch.bfloat16)
    y = sparse_product(compressed(adjacency).to(torch.bfloat16), x)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), adjacency.to_dense() @ x.float(), rtol=1e-2, atol=1e-2)


def test_hypergraph_pass_by_hand():
    h_i = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])  # 3 items, 2 hyperedges
    h_u = torch.tensor([[0.25, 0.75]])  # 1 user
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])  # item embeddings (N, D=2)
    edges = torch.tensor([[1.0, 1.0], [4.0, 5.0]])  # H_i^T x: hyperedge 0 = x0 + x1/2, 1 = x1/2 + x2
    users, items = hypergraph_pass(h_i, h_u, x, layers=1)
    torch.testing.assert_close(items, h_i @ edges)
    torch.testing.assert_close(items[1], torch.tensor([2.5, 3.0]))
    torch.testing.assert_close(users, torch.tensor([[3.25, 4.0]]))
    users2, items2 = hypergraph_pass(h_i, h_u, x, layers=2)  # a second round starts from the new items
    torch.testing.assert_close(items2, h_i @ (h_i.T @ items))
    torch.testing.assert_close(users2, h_u @ (h_i.T @ items))


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    all_b = torch.cat([b, torch.tensor([[-1.0, 0.0]])])
    tau = 0.5
    expected = 0.0
    for k in range(2):
        an = a[k] / a[k].norm()
        sims = [(an @ (v / v.norm())).item() / tau for v in all_b]
        pos = (an @ (b[k] / b[k].norm())).item() / tau
        expected += -np.log(np.exp(pos) / np.sum(np.exp(sims)))
    torch.testing.assert_close(info_nce(a, b, all_b, tau), torch.tensor(expected, dtype=torch.float32))


@pytest.fixture
def lgm_dataset(image_feature_dataset):
    """The synthetic dataset with an 'image' feature (items 0 and 5 missing) and a 'text' one."""
    ds = image_feature_dataset
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    text = np.random.default_rng(1).normal(size=(ds.n_items, 6)).astype(np.float32)
    save_feature(ds.features_dir, "text", text, spec)
    return ds


def test_hyperedge_dependencies_by_hand(lgm_dataset):
    ds = lgm_dataset
    torch.manual_seed(0)
    options = {"dim": 8, "n_hyper": 3, "features": ["image"], "keep_rate": 1.0}  # keep_rate: training only
    model = build_model("lgmrec", options, ds.n_users, ds.n_items)
    model.prepare(ds)
    model.eval()
    users, items = model.dependencies("image")
    assert users.shape == (ds.n_users, 3) and items.shape == (ds.n_items, 3)
    f = model.feature_image.numpy()  # (N, 8), scaled
    v = model.hyperedges["image"].weight.detach().numpy().T  # (8, 3)
    f[[0, 5]] = 0.0  # no image: zero logits
    a = np.zeros((ds.n_users, ds.n_items), np.float32)
    for u, s in enumerate(ds.train_sequences):
        a[u, s] = 1.0

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    np.testing.assert_allclose(items.detach().numpy(), softmax(f @ v / 0.2), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(users.detach().numpy(), softmax(a @ f @ v / 0.2), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(items[[0, 5]].detach().numpy(), 1 / 3, rtol=1e-6)  # no image: uniform
    # training: a Gumbel-softmax (rows still sum to 1 without the dropout), different on every call
    model.train()
    first, second = model.dependencies("image")[1], model.dependencies("image")[1]
    torch.testing.assert_close(first.sum(1), torch.ones(ds.n_items))
    assert not torch.allclose(first, second)


def test_loss_reaches_every_part(lgm_dataset):
    ds = lgm_dataset
    torch.manual_seed(0)
    model = build_model("lgmrec", {"dim": 8, "cl_weight": 0.1}, ds.n_users, ds.n_items)
    model.prepare(ds)
    assert [s["feature"] for s in model.sources] == ["image", "text"]
    batch = {
        "users": torch.tensor([0, 1, 2]),
        "pos": torch.tensor([0, 5, 7]),
        "neg": torch.tensor([3, 9, 11]),
    }
    model.loss(batch).backward()
    names = ["user_emb.weight", "item_emb.weight", "missing_vectors.image"]
    names += [f"{part}.{m}.weight" for part in ("projections", "hyperedges") for m in ("image", "text")]
    assert sorted(names + ["missing_vectors.text"]) == sorted(n for n, _ in model.named_parameters())
    for name in names:
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the InfoNCE alone reaches the hyperedges of both features (the global embeddings are its inputs)
    model.zero_grad()
    _, _, glob = model.embeddings()
    (ui, _), (ut, _) = glob["image"], glob["text"]
    info_nce(ui[:3], ut[:3], ut, 0.2).backward()
    for m in ("image", "text"):
        assert model.hyperedges[m].weight.grad.abs().sum() > 0, m


def test_mirror_gradient_trains_it(lgm_dataset):
    ds = lgm_dataset
    runs = {}
    for mirror in (False, True):
        torch.manual_seed(0)
        opts = {"dim": 8, "epochs": 3, "batch_size": 64, "validate": False, "mirror_gradient": mirror}
        model = build_model("lgmrec", opts, ds.n_users, ds.n_items)
        fit(model, ds)
        runs[mirror] = model.score_all(np.arange(4), [np.zeros(0, np.int64)] * 4)
        assert np.isfinite(runs[mirror]).all()
    assert not np.allclose(runs[True], runs[False])  # the mirrored steps changed the weights
