"""``llmrec index RUN``: build the run's item index (``RUN/index/``), which ``llmrec recommend``, the API's
``llmrec.load`` and ``llmrec serve`` then answer whole-catalog queries with.

The sample queries that tune and measure the index are the query vectors of up to ``--queries`` users of
the run's dataset (their whole sequences as histories), chosen with ``--seed``: half choose the search
parameter, the other half measure the recall that ``index.json`` records. A model whose scores are not a
dot product (popularity, the CTR models) is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from llmrec.config import ConfigError, option
from llmrec.placement import DtypeName, device_option, dtype_option
from llmrec.retrieval.index import KINDS


@dataclass
class IndexConfig:
    """Which run, which kind of index, and how well it must find the exact top-k."""

    run: str = option("", "run directory of a trained model")
    kind: Literal["flat", "ivf", "hnsw"] = option("hnsw", "flat (exact) | ivf | hnsw")
    recall_target: float = option(
        0.95, "recall@k against exact search the search parameter is tuned to reach", gt=0, le=1
    )
    k: int = option(10, "the k of the tuned recall@k", ge=1)
    queries: int = option(512, "users whose query vectors tune (half) and measure (half) the index", ge=2)
    seed: int = option(0, "seed of the sample users and of the index's clustering", ge=0)
    data: str | None = option(None, "the run's dataset moved: its new folder (checksum verified)")
    device: str = device_option()
    dtype: DtypeName = dtype_option()

    def __post_init__(self) -> None:
        if not self.run:
            raise ConfigError("run: the run directory of a trained model is required")
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


def run_index(cfg: IndexConfig) -> dict[str, Any]:
    """Build, tune and save the item index of ``cfg.run``; returns what ``index.json`` records."""
    from llmrec.api import load
    from llmrec.retrieval.index import build_index, faiss_module
    from llmrec.retrieval.lookup import index_folder
    from llmrec.retrieval.vectors import cached_vectors, checked_dot_product

    faiss_module()  # missing FAISS: said before the model loads
    model = load(cfg.run, device=cfg.device, dtype=cfg.dtype, data=cfg.data, index=False)
    checked_dot_product(model.model)
    rng = np.random.default_rng(cfg.seed)
    users = np.flatnonzero([len(s) > 0 for s in model.sequences])
    users = np.sort(rng.choice(users, size=min(cfg.queries, len(users)), replace=False))
    queries = model.model.query_vectors(users, [model.sequences[u] for u in users]) if len(users) else None
    matrix = cached_vectors(model.model).matrix
    index = build_index(matrix, cfg.kind, cfg.recall_target, queries, cfg.k, cfg.seed)
    index.info["model"] = model.name
    index.save(index_folder(model.run))
    return {"index": str(index_folder(model.run)), **{k: v for k, v in index.info.items() if k != "vectors"}}


def format_index(result: dict[str, Any]) -> str:
    """One paragraph: what was built, its parameters and its measured recall."""
    params = ", ".join(f"{k}={v}" for k, v in result["params"].items()) or "exact"
    line = (
        f"{result['kind']} index of {result['count']:,} items x {result['dim']} ({params}) built in "
        f"{result['build_s']:.1f} s: recall@{result['recall_k']} {result['recall']:.4f} against exact on "
        f"{result['recall_queries']} held-out queries (target {result['recall_target']})"
    )
    if not result["reached_target"]:
        line += "\n  below the target: try --kind hnsw, or --kind flat for exact search"
    return f"{line}\nwritten {result['index']}"
