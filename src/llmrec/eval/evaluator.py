"""The evaluation protocol: leave-one-out with frozen sampled candidates, full-catalog ranking, CTR AUC/UAUC."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llmrec.data.dataset import Dataset, Split
from llmrec.eval.metrics import auc, full_ranks, popularity_breakdown, ranking_metrics, target_ranks, uauc
from llmrec.models.base import Recommender


def _batches(n: int, size: int, desc: str) -> Any:
    starts = range(0, n, size)
    return tqdm(starts, desc=desc, unit=" batch", disable=None, leave=False)


def rank_targets(
    model: Recommender, ds: Dataset, split: Split, full: bool, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """0-based target ranks per user: among target + frozen negatives, and (if ``full``) over the catalog."""
    data = ds.split(split)
    negatives = ds.negatives(split)
    sampled = np.empty(len(data.users), dtype=np.int64)
    full_r = np.empty(len(data.users), dtype=np.int64) if full else None
    for s in _batches(len(data.users), batch_size, f"evaluate {split}"):
        sl = slice(s, s + batch_size)
        users, hist, targets = data.users[sl], data.histories[sl], data.targets[sl]
        if full:
            scores = np.asarray(model.score_all(users, hist))  # (B, N)
            cand = np.concatenate([targets[:, None], negatives[sl]], axis=1)
            sampled[sl] = target_ranks(np.take_along_axis(scores, cand, axis=1))
            full_r[sl] = full_ranks(scores, targets, exclude=hist)  # type: ignore[index]
        else:
            cand = np.concatenate([targets[:, None], negatives[sl]], axis=1)  # (B, 1 + n_neg), target first
            sampled[sl] = target_ranks(np.asarray(model.score(users, hist, cand)))
    out = {"sampled": sampled, "targets": data.targets}
    if full_r is not None:
        out["full"] = full_r
    return out


def evaluate_ranking(
    model: Recommender,
    ds: Dataset,
    split: Split,
    ks: Sequence[int] = (5, 10),
    full: bool = True,
    batch_size: int = 256,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Ranking metrics of a split (``hit@k``, ``ndcg@k``, ``mrr``; ``full_*`` over the whole catalog)
    and the breakdown by target-item popularity (5 equal-size groups of items by training count)."""
    ranks = rank_targets(model, ds, split, full, batch_size)
    metrics = ranking_metrics(ranks["sampled"], ks)
    if "full" in ranks:
        metrics.update({f"full_{k}": v for k, v in ranking_metrics(ranks["full"], ks).items()})
    breakdown = popularity_breakdown(ranks["sampled"], ranks["targets"], ds.item_popularity, ks)
    return metrics, breakdown


def evaluate_ctr(
    model: Recommender,
    ds: Dataset,
    split: Split,
    batch_size: int = 1024,
    max_examples: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], np.ndarray]:
    """AUC and UAUC of ``score_pairs`` on the split's labelled CTR examples, and the rows used.

    ``max_examples`` evaluates a seeded uniform subset of the rows (for slow LLM scorers); the same seed
    and split always give the same rows, returned so the caller can record them.
    """
    df = ds.ctr(split)
    rows = np.arange(len(df))
    if max_examples is not None and max_examples < len(df):
        rows = np.sort(np.random.default_rng(seed).choice(len(df), size=max_examples, replace=False))
        df = df.iloc[rows].reset_index(drop=True)
    histories = [np.asarray(h, dtype=np.int64) for h in df["history"]]
    users, targets = df["user_idx"].to_numpy(), df["target"].to_numpy().astype(np.int64)
    scores = np.empty(len(df), dtype=np.float64)
    for s in _batches(len(df), batch_size, f"CTR {split}"):
        sl = slice(s, s + batch_size)
        scores[sl] = model.score_pairs(users[sl], histories[sl], targets[sl])
    labels = df["label"].to_numpy()
    return {"auc": auc(labels, scores), "uauc": uauc(users, labels, scores), "ctr_examples": len(df)}, rows
