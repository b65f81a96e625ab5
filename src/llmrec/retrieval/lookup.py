"""A loaded run's item index answering whole-catalog queries (what ``Model.answer`` asks instead of scoring
every item when the run has ``RUN/index/``).

Every query still gets ``k`` items whenever ``k`` items pass its exclusions (its history when
``exclude_history``, the items outside ``Query.allowed``):

- the index is asked for ``k`` plus the excluded items it covers, and asked again for twice as many while
  too few pass; an index that runs out (an IVF query's lists hold no more items) hands over to exact scoring
  of every item that passes;
- a query whose allowed items are few (at most :data:`EXACT_SHARE` of the catalog, or
  :data:`EXACT_ITEMS`) is scored exactly over those items: cheaper than searching, and exact;
- items added to the run after the index was built (rows ``count`` .. N-1) are scored exactly and merged
  with what the index found, by score.

Scores are the inner products of the query and item vectors, recomputed exactly for the items found:
``score_all``'s up to float error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrec.errors import LlmrecError
from llmrec.retrieval.index import ItemIndex
from llmrec.retrieval.vectors import cached_vectors, checked_dot_product, same_vectors, top_of

if TYPE_CHECKING:
    from llmrec.api import Model, Query
    from llmrec.models.base import Recommender

#: a query allowed at most this share of the catalog (or :data:`EXACT_ITEMS` items) is scored exactly
EXACT_SHARE = 0.05
EXACT_ITEMS = 4096


def index_folder(run: str | Path) -> Path:
    """Where a run keeps its item index."""
    return Path(run) / "index"


def open_index(model: Recommender, run: str | Path) -> RunIndex | None:
    """The run's item index for ``model``, or None when the run has none. An index built for other item
    vectors (the run retrained, or its weights changed) is refused, never used."""
    folder = index_folder(run)
    if not (folder / "index.json").exists():
        return None
    checked_dot_product(model)
    index = ItemIndex.load(folder)
    matrix = cached_vectors(model).matrix
    if index.count > len(matrix) or not same_vectors(index.info.get("vectors", {}), matrix[: index.count]):
        raise LlmrecError(
            f"the item index was built for other item vectors than the run's model has now "
            f"({index.info.get('kind')} index of {index.count:,} items): the run was retrained or changed",
            file=folder,
            hint=f"rebuild it with 'llmrec index {run}', or delete the folder to score exactly",
        )
    return RunIndex(index)


class RunIndex:
    """An :class:`ItemIndex` attached to a loaded model: the top-k of whole-catalog queries."""

    def __init__(self, index: ItemIndex) -> None:
        self.index = index

    def describe(self) -> dict[str, Any]:
        """What ``Model.info()`` reports of the index."""
        info = self.index.info
        return {
            "kind": self.index.kind,
            "items": self.index.count,
            "params": info.get("params", {}),
            "recall": info.get("recall"),
        }

    def answer(self, model: Model, queries: list[Query]) -> list[list[dict[str, Any]]]:
        """Ranked items ({item_id, title, score}) per query, best first, as ``Model.answer`` gives them."""
        rec = model.model
        users = np.array([q.user_idx for q in queries], dtype=np.int64)
        vectors = rec.query_vectors(users, [q.history for q in queries])  # (B, d)
        matrix = cached_vectors(rec).matrix  # (N, d)
        found = self.top(vectors, matrix, queries)
        return [
            [
                {"item_id": model.item_ids[i], "title": model.titles[i], "score": float(s)}
                for i, s in zip(rows.tolist(), scores.tolist())
            ]
            for rows, scores in found
        ]

    def top(
        self, vectors: np.ndarray, matrix: np.ndarray, queries: list[Query]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(item rows, scores) of each query's top-k that passes its exclusions."""
        n, covered = len(matrix), self.index.count
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
        searched: list[int] = []
        for row, q in enumerate(queries):
            allowed = getattr(q, "allowed", None)
            if allowed is not None and allowed.sum() <= max(EXACT_ITEMS, EXACT_SHARE * n):
                out[row] = _exact(vectors[row], matrix, q, np.flatnonzero(allowed))
            else:
                searched.append(row)
        for row, (rows, scores) in zip(searched, self._searched(vectors, matrix, queries, searched)):
            if n > covered:  # items added since the index was built: scored exactly, merged
                tail = _exact(vectors[row], matrix, queries[row], np.arange(covered, n))
                rows, scores = np.concatenate([rows, tail[0]]), np.concatenate([scores, tail[1]])
                best = top_of(scores, min(queries[row].k, len(scores)))
                rows, scores = rows[best], scores[best]
            out[row] = (rows, scores)
        return [o for o in out if o is not None]

    def _searched(
        self, vectors: np.ndarray, matrix: np.ndarray, queries: list[Query], rows: list[int]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The index's answer for the queries at ``rows``: asked for k + excluded, then twice as many while
        too few pass; exact over the covered items for a query the index runs out for."""
        covered = self.index.count
        result: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        want = {r: min(covered, queries[r].k + _excluded_count(queries[r], covered)) for r in rows}
        pending = list(rows)
        while pending:
            width = max(want[r] for r in pending)
            found = self.index.search(vectors[pending], width)[1]  # (b, width)
            still = []
            for r, f in zip(pending, found):
                q = queries[r]
                keep = _passing(q, f)
                exhausted = width >= covered  # the index gave every item it has
                if keep.sum() >= q.k or (exhausted and keep.sum() >= _passing_count(q, covered)):
                    result[r] = _rescored(vectors[r], matrix, f[keep][: q.k])
                elif exhausted or (f < 0).any():  # it ran out (an IVF query's lists): exact instead
                    result[r] = _exact(vectors[r], matrix, q, np.arange(covered))
                else:
                    want[r] = min(covered, 2 * width)
                    still.append(r)
            pending = still
        return [result[r] for r in rows]


def _excluded_count(q: Query, covered: int) -> int:
    """How many covered items ``q`` excludes through its history (its allowed mask is searched past by
    widening)."""
    if not q.exclude_history or not len(q.history):
        return 0
    hist = np.unique(q.history)
    return int((hist < covered).sum())


def _passing(q: Query, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) whether each found item row may be recommended for ``q`` (-1: no item)."""
    keep = rows >= 0
    if q.exclude_history and len(q.history):
        keep &= ~np.isin(rows, q.history)
    allowed = getattr(q, "allowed", None)
    if allowed is not None:
        keep &= allowed[np.maximum(rows, 0)]
    return keep


def _passing_count(q: Query, covered: int) -> int:
    """How many of the first ``covered`` items ``q`` may be recommended."""
    return int(_passing(q, np.arange(covered)).sum())


def _rescored(vector: np.ndarray, matrix: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` with their exact inner products, best first (an index's own scores may be rounded: HNSW's
    come back from distances)."""
    scores = matrix[rows] @ vector  # (k,)
    order = np.lexsort((rows, -scores))
    return rows[order], scores[order]


def _exact(
    vector: np.ndarray, matrix: np.ndarray, q: Query, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The top-k of ``rows`` that pass ``q``'s exclusions, scored exactly."""
    rows = rows[_passing(q, rows)]
    scores = matrix[rows] @ vector  # (R,)
    best = top_of(scores, min(q.k, len(rows)))
    return rows[best], scores[best]
