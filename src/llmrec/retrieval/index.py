"""A FAISS index of item vectors for maximum-inner-product search, tuned to a recall target when built.

Kinds (``--kind``):

- ``flat``: every item scored (FAISS ``IndexFlatIP``): exact, the reference;
- ``ivf``: the items clustered into ``nlist`` = 2 sqrt(M) lists (10 k-means iterations on at most 39 items
  per list);
  a query scans its ``nprobe`` nearest lists (``IndexIVFFlat``, inner product);
- ``hnsw``: a navigable small-world graph of ``M`` = 32 links per item (``IndexHNSWFlat``, ``efConstruction``
  64); a query explores ``efSearch`` candidates. A graph of inner products between vectors of unequal norms
  navigates badly, so the items are indexed by Euclidean distance after the usual reduction of
  maximum-inner-product search (Bachrach et al., RecSys 2014): each item gets one more coordinate,
  sqrt(R^2 - |x|^2) with R the largest item norm, each query a 0 there, so the nearest items are those of
  the largest inner product; the search turns distances back into inner products.

``nprobe`` and ``efSearch`` are chosen when the index is built: the smallest value of a doubling ladder whose
recall@k against exact search on one half of the sample queries reaches the target plus a quarter of what
is left above it (0.9625 for 0.95: a margin, so that other queries reach the target too); the recall then
measured on the other half (held out from the choice) is what ``index.json`` records. An index is saved
as a folder (``index.faiss`` + ``index.json``) written beside the target and renamed into place, so a
killed build leaves the previous index or none, never half of one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.errors import LlmrecError
from llmrec.retrieval.vectors import digest, exact_top, recall

KINDS = ("flat", "ivf", "hnsw")
#: what a kind's search-time parameter is called, and the values tried in turn
LADDERS = {
    "ivf": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)),
    "hnsw": ("efSearch", (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)),
}
HNSW_LINKS = 32  # M of HNSW: links per item
HNSW_EF_CONSTRUCTION = 64
TRAIN_PER_LIST = 39  # k-means training items per IVF list (FAISS's floor)
KMEANS_ITERATIONS = 10
FORMAT = 1  # index.json's format


def faiss_module() -> Any:
    """FAISS, imported on first use, or one line naming the extra that installs it."""
    from llmrec.extras import require

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it loads: not news
    return require("index", "the item index (llmrec index, bench-retrieval)")[0]


def ivf_lists(count: int) -> int:
    """IVF's list count for ``count`` items: 2 sqrt(count), with at least 39 items per list (FAISS's floor
    for k-means) and at least one list."""
    return max(1, min(int(2 * np.sqrt(count)), count // 39))


@dataclass
class ItemIndex:
    """A built (or loaded) index and what ``index.json`` says of it."""

    kind: str
    faiss: Any  # the FAISS index
    info: dict[str, Any] = field(default_factory=dict)
    value: int | None = None  # the search-time parameter (nprobe, efSearch) in use

    @property
    def count(self) -> int:
        """How many items it covers: the first ``count`` rows of the item vectors."""
        return int(self.faiss.ntotal)

    def set_search(self, value: int | None) -> None:
        """Set the kind's search-time parameter (nprobe, efSearch); None: leave it."""
        if value is None or self.kind not in LADDERS:
            return
        self.value = int(value)
        if self.kind == "ivf":
            self.faiss.nprobe = int(value)
        else:
            self.faiss.hnsw.efSearch = int(value)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """((B, k) inner products, (B, k) item rows) best first; a row short of items ends in rows -1."""
        k = max(1, min(int(k), self.count))
        if self.kind == "hnsw":  # efSearch below k would return fewer than k
            self.faiss.hnsw.efSearch = max(self.value or LADDERS["hnsw"][1][0], k)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind != "hnsw":
            scores, rows = self.faiss.search(queries, k)
            return scores, rows.astype(np.int64)
        radius = float(self.info["radius"])  # the Euclidean index of the augmented vectors (see above)
        found, rows = self.faiss.search(np.pad(queries, ((0, 0), (0, 1))), k)
        # |q - x'|^2 = |q|^2 + R^2 - 2 <q, x>
        scores = ((queries**2).sum(1, keepdims=True) + radius**2 - found) / 2
        return scores.astype(np.float32), rows.astype(np.int64)

    def memory_bytes(self) -> int:
        """The index's size when serialised: its vectors and structures, what it holds in memory."""
        return int(faiss_module().serialize_index(self.faiss).nbytes)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: Path) -> None:
        """Write ``folder`` (index.faiss, index.json) through a temporary folder renamed into place."""
        from llmrec.utils.io import partial_dir, remove_stale_partials, replace_dir

        folder = Path(folder)
        remove_stale_partials(folder.parent)
        tmp = partial_dir(folder.parent, folder.name)
        faiss_module().write_index(self.faiss, str(tmp / "index.faiss"))
        (tmp / "index.json").write_text(json.dumps(self.info, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, folder)

    @classmethod
    def load(cls, folder: Path) -> ItemIndex:
        """Read an index folder written by :meth:`save` (a damaged one is an error naming it)."""
        folder = Path(folder)
        hint = "rebuild it with 'llmrec index RUN', or delete the folder"
        try:
            info = json.loads((folder / "index.json").read_text(encoding="utf-8"))
            kind = info["kind"]
            index = faiss_module().read_index(str(folder / "index.faiss"))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise LlmrecError(f"unreadable item index ({type(e).__name__})", file=folder, hint=hint) from None
        if kind not in KINDS or info.get("format") != FORMAT or int(index.ntotal) != info.get("count"):
            raise LlmrecError("not an item index of this llmrec version", file=folder, hint=hint)
        out = cls(kind, index, info)
        out.set_search(info.get("params", {}).get(LADDERS.get(kind, ("",))[0]))
        return out


# ----------------------------------------------------------------------------- building and tuning
def build_index(
    matrix: np.ndarray,
    kind: str = "hnsw",
    recall_target: float = 0.95,
    queries: np.ndarray | None = None,
    k: int = 10,
    seed: int = 0,
) -> ItemIndex:
    """An index of ``matrix`` (M, d), its search parameter tuned on ``queries`` (S, d) to reach
    ``recall_target`` recall@``k`` against exact search (half of them choose, the other half measure).
    Without queries, random rows of the matrix stand in for them."""
    faiss = faiss_module()
    if kind not in KINDS:
        raise LlmrecError(f"unknown index kind {kind!r}", hint=f"choose one of {', '.join(KINDS)}")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    count, dim = matrix.shape
    if count == 0:
        raise LlmrecError("no items to index", hint="the run's catalog is empty")
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    params: dict[str, Any] = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = params["nlist"] = ivf_lists(count)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed, index.cp.niter = seed, KMEANS_ITERATIONS
        sample = rng.choice(count, size=min(count, TRAIN_PER_LIST * nlist), replace=False)
        index.train(matrix[np.sort(sample)])
    else:
        params["M"], params["efConstruction"] = HNSW_LINKS, HNSW_EF_CONSTRUCTION
        index = faiss.IndexHNSWFlat(dim + 1, HNSW_LINKS)  # Euclidean, on the augmented vectors
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    built = ItemIndex(kind, index)
    if kind == "hnsw":
        built.info["radius"] = _add_augmented(index, matrix)
    else:
        index.add(matrix)
    build_s = time.perf_counter() - start
    if queries is None or not len(queries):
        queries = matrix[rng.choice(count, size=min(count, 256), replace=False)]
    tuned = tune(built, matrix, np.asarray(queries, dtype=np.float32), k, recall_target, rng)
    built.info = {
        **built.info,
        "format": FORMAT,
        "kind": kind,
        "count": count,
        "dim": dim,
        "params": {**params, **tuned.pop("params")},
        **tuned,
        "recall_target": recall_target,
        "build_s": round(build_s, 3),
        "vectors": digest(matrix),
    }
    return built


def _add_augmented(index: Any, matrix: np.ndarray, chunk: int = 1 << 18) -> float:
    """Add ``matrix`` to a Euclidean index as [x, sqrt(R^2 - |x|^2)] (R: the largest norm); returns R."""
    sq = np.einsum("ij,ij->i", matrix, matrix)  # (M,)
    radius = float(np.sqrt(sq.max()))
    for start in range(0, len(matrix), chunk):
        part = matrix[start : start + chunk]
        extra = np.sqrt(np.maximum(radius**2 - sq[start : start + chunk], 0.0))[:, None]
        index.add(np.ascontiguousarray(np.hstack([part, extra]), dtype=np.float32))
    return radius


def tune(
    index: ItemIndex,
    matrix: np.ndarray,
    queries: np.ndarray,
    k: int,
    target: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """The smallest search parameter of the kind's ladder reaching ``target`` on half the queries, and
    the recall@k it gives on the other half (held out); flat is exact and only measured."""
    order = rng.permutation(len(queries))
    half = max(1, len(queries) // 2)
    choose, held = queries[order[:half]], queries[order[half:]]
    if not len(held):  # a single query: it both chooses and measures
        held = choose
    k = min(k, index.count)
    params: dict[str, Any] = {}
    if index.kind in LADDERS:
        name, ladder = LADDERS[index.kind]
        truth = exact_top(matrix, choose, k)[1]
        value, reached = ladder[0], 0.0
        for value in ladder:
            index.set_search(value)
            reached = recall(index.search(choose, k)[1], truth)
            if reached >= target + (1 - target) / 4 or (index.kind == "ivf" and value >= index.faiss.nlist):
                break
        params[name] = value
    measured = recall(index.search(held, k)[1], exact_top(matrix, held, k)[1])
    return {
        "params": params,
        "recall": round(measured, 4),
        "recall_k": k,
        "recall_queries": len(held),
        "reached_target": measured >= target,
    }
