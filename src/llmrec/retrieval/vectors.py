"""A run's item vectors: cached per model, fingerprinted (so an index built for other vectors is refused),
searched exactly (the reference every index kind is measured against), and compared item to item.

Exact top-k is one BLAS matrix product and a partial sort (``numpy.argpartition``) per block of items, so
memory stays bounded at any catalog size.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrec.errors import LlmrecError

if TYPE_CHECKING:
    from llmrec.models.base import Recommender

#: items scored at a time by :func:`exact_top` (a block of B queries x this many float32 scores)
BLOCK_ITEMS = 1 << 18
_FINGERPRINT_SEED = 20260


class _Cached:
    """The item vectors of one model at one catalog size, and their row norms (for cosine similarity)."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)  # (N, d)
        self._norms: np.ndarray | None = None

    @property
    def norms(self) -> np.ndarray:
        if self._norms is None:
            self._norms = np.linalg.norm(self.matrix, axis=1)  # (N,)
        return self._norms


_CACHE: weakref.WeakKeyDictionary[Any, _Cached] = weakref.WeakKeyDictionary()


def checked_dot_product(model: Recommender) -> None:
    """Refuse, in one line naming the model, a model whose scores are not a dot product."""
    if not model.dot_product:
        raise LlmrecError(
            f"model '{model.name}' has no item vectors: its scores are not a dot product of a user vector "
            "and item vectors, so it cannot have an item index or similar items",
            hint="index a run of mf, vbpr, sasrec, gru4rec, bert4rec, bm3, lgmrec or illmrec",
        )


def cached_vectors(model: Recommender) -> _Cached:
    """``model.item_matrix()``, computed once per catalog size (items added to the model recompute it)."""
    checked_dot_product(model)
    cached = _CACHE.get(model)
    if cached is None or len(cached.matrix) != model.n_items:
        cached = _CACHE[model] = _Cached(model.item_matrix())
    return cached


def forget_vectors(model: Recommender) -> None:
    """Drop the cached item vectors of ``model`` (its weights changed)."""
    _CACHE.pop(model, None)


# ----------------------------------------------------------------------------- the digest of a matrix
def digest(matrix: np.ndarray) -> dict[str, Any]:
    """What identifies item vectors: the sha256 of their float32 bytes, plus a fingerprint (a seeded random
    combination of the rows, and the Frobenius norm) that the same weights reproduce up to float error on
    another device or thread count, where the bytes may differ in their last bits."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    rng = np.random.default_rng(_FINGERPRINT_SEED)
    mix = rng.standard_normal(len(matrix)).astype(np.float64)  # (M,)
    return {
        "sha256": hashlib.sha256(matrix.tobytes()).hexdigest(),
        "rows": int(matrix.shape[0]),
        "dim": int(matrix.shape[1]),
        "fingerprint": (mix @ matrix.astype(np.float64)).tolist(),  # (d,)
        "norm": float(np.linalg.norm(matrix.astype(np.float64))),
    }


def same_vectors(saved: dict[str, Any], matrix: np.ndarray) -> bool:
    """Whether ``matrix`` is the one ``saved`` (a :func:`digest`) was taken of: the same bytes, or the same
    shape and a fingerprint equal to 1e-4 of the matrix's norm."""
    now = digest(matrix)
    if now["sha256"] == saved.get("sha256"):
        return True
    if (now["rows"], now["dim"]) != (saved.get("rows"), saved.get("dim")):
        return False
    scale = max(float(saved.get("norm", 0.0)), 1e-12)
    diff = np.abs(np.asarray(now["fingerprint"]) - np.asarray(saved.get("fingerprint", [])))
    return abs(now["norm"] - scale) <= 1e-4 * scale and bool((diff <= 1e-4 * scale).all())


# ----------------------------------------------------------------------------- exact search
def top_of(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest of a row of scores, best first (ties: the lower position first)."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def exact_top(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` items of each query by inner product: ((B, k) scores, (B, k) item rows), best
    first, computed a block of :data:`BLOCK_ITEMS` items at a time."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(matrix))
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(matrix), BLOCK_ITEMS):
        block = queries @ matrix[start : start + BLOCK_ITEMS].T  # (B, b)
        kk = min(k, block.shape[1])
        part = np.argpartition(-block, kk - 1, axis=1)[:, :kk] if kk < block.shape[1] else None
        if part is None:
            part = np.broadcast_to(np.arange(block.shape[1]), block.shape)
        scores = np.take_along_axis(block, part, axis=1)
        best_s = np.concatenate([best_s, scores], axis=1)
        best_i = np.concatenate([best_i, part + start], axis=1)
        if best_s.shape[1] > k:  # keep the k best so far
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    order = np.lexsort((best_i, -best_s), axis=1)
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (B, k) that the same row of ``found`` (B, >= k) holds."""
    hits = [len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


# ----------------------------------------------------------------------------- item to item
def similar_rows(model: Recommender, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` items most similar to item row ``item`` by cosine similarity of the model's item vectors
    (the item itself left out): (item rows, similarities), best first. Exact: one product over the
    catalog."""
    vectors = cached_vectors(model)
    norms = vectors.norms
    sims = vectors.matrix @ vectors.matrix[item] / np.maximum(norms * norms[item], 1e-12)  # (N,)
    sims[item] = -np.inf
    top = top_of(sims, min(k, len(sims) - 1))
    return top, sims[top]
