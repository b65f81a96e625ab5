"""Cold-start items: the items introduced last, held out of every training table (``prepare --cold-items``).

The held-out (cold) items are the ``round(fraction * N)`` items whose first interaction is the latest (ties:
the higher item index first), chosen after k-core on the indexed dataset, so both engines hold out the same
items. A prepared dataset then has, beside its usual tables:

- ``eval/cold_items.npy``: the held-out item indices (sorted);
- ``eval/{valid,test}_negatives.npy``: as without cold items, but drawn among the *warm* items only (the
  candidates of a warm case never include a held-out item);
- ``eval/{valid,test}_cold_negatives.npy``: (U, M) for the cases whose target is held out, M of the held-out
  items the user never touched (seeded, uniform), M = min(--num-negatives, the fewest such items any cold
  case has); the rows of warm cases are -1;
- ``ctr/train.parquet`` without the rows whose target is held out, and held-out items removed from every
  training history.

The sequences keep every interaction (a test history shows a held-out item as any other);
:attr:`llmrec.data.dataset.Dataset.train_sequences` removes the held-out items. Applied to the temp folder of
every dataset write (:func:`llmrec.data.processing.write_dataset_with`), after the engine wrote its tables.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.data.steps import sample_negatives
from llmrec.errors import LlmrecError

log = logging.getLogger(__name__)

SPLITS = ("valid", "test")
COLD_ITEMS = "eval/cold_items.npy"


def cold_negatives_file(split: str) -> str:
    """The dataset-relative path of a split's frozen negatives of the cold cases."""
    return f"eval/{split}_cold_negatives.npy"


def introduced_last(
    sequences: list[np.ndarray], times: list[np.ndarray], n_items: int, fraction: float
) -> np.ndarray:
    """Sorted indices of the ``round(fraction * n_items)`` items (at least one) whose first interaction is the
    latest; ties in time: the higher item index counts as later (item indices follow the ids' order)."""
    first = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
    for seq, ts in zip(sequences, times):
        np.minimum.at(first, np.asarray(seq, dtype=np.int64), np.asarray(ts, dtype=np.int64))
    count = max(1, int(round(fraction * n_items)))
    order = np.lexsort((np.arange(n_items), first))  # by first time, then index: the last `count` are cold
    return np.sort(order[n_items - count :])


def sample_within(
    sequences: list[np.ndarray],
    pool: np.ndarray,
    num: int,
    rng: np.random.Generator,
    hint: str,
    user_ids: Any,
) -> np.ndarray:
    """(U, num) items of ``pool`` (sorted indices) per user, uniform without replacement over those the user
    never touched: :func:`llmrec.data.steps.sample_negatives` in the pool's own numbering."""
    position = np.full(int(pool.max()) + 1 if len(pool) else 0, -1, dtype=np.int64)
    position[pool] = np.arange(len(pool))
    local = []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        seq = seq[seq < len(position)]
        pos = position[seq]
        local.append(pos[pos >= 0])
    return pool[sample_negatives(local, len(pool), num, rng, hint, user_ids)].astype(np.int32)


def hold_out(tmp: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Hold out the cold items of a dataset written into ``tmp`` (its config in ``meta``); returns the meta
    record with a ``cold_items`` entry (the record unchanged when ``cold_items`` is 0)."""
    config = meta.get("config") or {}
    fraction = float(config.get("cold_items") or 0.0)
    if fraction <= 0:
        return meta
    seqs_table = pd.read_parquet(tmp / "sequences.parquet", columns=["user_id", "items", "timestamps"])
    sequences = [np.asarray(s, dtype=np.int64) for s in seqs_table["items"]]
    times = [np.asarray(t, dtype=np.int64) for t in seqs_table["timestamps"]]
    user_ids = seqs_table["user_id"].astype(str).to_numpy()
    n_items = int(pd.read_parquet(tmp / "items.parquet", columns=["item_id"]).shape[0])
    cold = introduced_last(sequences, times, n_items, fraction)
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[cold] = True
    warm = np.flatnonzero(~is_cold)
    num = int(config.get("num_negatives", 100))
    if len(warm) < 2:
        raise LlmrecError(
            f"--cold-items {fraction} holds out {len(cold):,} of the {n_items:,} items: no warm item is left",
            hint="lower --cold-items",
        )
    rng = np.random.default_rng(int(config.get("seed", 42)))
    hint = "lower --num-negatives or --cold-items"
    np.save(tmp / COLD_ITEMS, cold.astype(np.int32), allow_pickle=False)
    record: dict[str, Any] = {"fraction": fraction, "items": int(len(cold)), "warm_items": int(len(warm))}
    for split, cut in (("valid", -2), ("test", -1)):
        # warm candidates: as without cold items, drawn among the warm items
        negatives = sample_within(sequences, warm, num, rng, hint, user_ids)
        np.save(tmp / "eval" / f"{split}_negatives.npy", negatives, allow_pickle=False)
        cases = np.flatnonzero(is_cold[[int(s[cut]) for s in sequences]])
        unseen = [len(cold) - int(is_cold[np.unique(sequences[u])].sum()) for u in cases]
        width = min([num, *unseen])
        if len(cases) and width < 1:
            raise LlmrecError(
                f"a {split} case has no held-out item left as a negative (its user touched all {len(cold):,})",
                hint="raise --cold-items",
            )
        out = np.full((len(sequences), width), -1, dtype=np.int32)
        if len(cases):
            out[cases] = sample_within([sequences[u] for u in cases], cold, width, rng, hint, user_ids[cases])
        np.save(tmp / cold_negatives_file(split), out, allow_pickle=False)
        record[split] = {"cold_cases": int(len(cases)), "candidates": int(width + 1)}
    if (tmp / "ctr" / "train.parquet").exists():
        record["ctr_train_rows_removed"] = _hold_out_of_ctr(tmp / "ctr" / "train.parquet", is_cold)
    log.info(
        "held out %d cold items (%.0f%%): %s",
        len(cold),
        100 * fraction,
        ", ".join(f"{s} {record[s]['cold_cases']} cold cases" for s in SPLITS),
    )
    return dict(meta, cold_items=record)


def _hold_out_of_ctr(path: Path, is_cold: np.ndarray) -> int:
    """Drop the CTR training rows whose target is held out and the held-out items of every training
    history; returns how many rows went."""
    df = pd.read_parquet(path)
    keep = ~is_cold[df["target"].to_numpy()]
    df = df.loc[keep].reset_index(drop=True)
    df["history"] = [
        np.asarray(h, dtype=np.int32)[~is_cold[np.asarray(h, dtype=np.int64)]] for h in df["history"]
    ]
    df.to_parquet(path, index=False)
    return int((~keep).sum())


def chance_metrics(candidates: np.ndarray, ks: Any) -> dict[str, float]:
    """``chance@k``: the expected hit@k of a ranking at random among ``candidates`` items per case (the mean
    over cases of min(k, C) / C)."""
    candidates = np.asarray(candidates, dtype=np.float64)
    if not len(candidates):
        return {f"chance@{k}": float("nan") for k in ks}
    return {f"chance@{k}": float(np.mean(np.minimum(k, candidates) / candidates)) for k in ks}
