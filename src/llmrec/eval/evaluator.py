"""The evaluation protocol: leave-one-out with frozen sampled candidates, full-catalog ranking, CTR AUC/UAUC."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llmrec.data.dataset import Dataset, Split
from llmrec.errors import LlmrecError
from llmrec.eval.metrics import auc, full_ranks, popularity_breakdown, ranking_metrics, target_ranks, uauc
from llmrec.models.base import Recommender


def _batches(n: int, size: int, desc: str) -> Any:
    starts = range(0, n, size)
    return tqdm(starts, desc=desc, unit=" batch", disable=None, leave=False)


def _checked(scores: Any, model: Recommender, split: str) -> np.ndarray:
    """A model's scores as an array; NaN scores (weights that diverged) are a one-line error."""
    scores = np.asarray(scores)
    if np.isnan(scores).any():
        raise LlmrecError(
            f"model '{model.name}' scored NaN on the {split} split: its weights are not finite",
            hint="train it again with a lower learning rate (-o lr=..., --restart)",
        )
    return scores


def seeded_rows(n: int, max_rows: int | None, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a seeded uniform subset of ``max_rows`` of ``n`` rows (all rows when None or
    ``max_rows >= n``): the same seed gives the same rows to every model, so subsets stay comparable."""
    if max_rows is None or max_rows >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def rank_targets(
    model: Recommender,
    ds: Dataset,
    split: Split,
    full: bool,
    batch_size: int = 256,
    rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """0-based target ranks per user: among target + frozen negatives, and (if ``full``) over the catalog.
    ``rows`` restricts the evaluation to those users of the split (indices into it)."""
    data = ds.split(split)
    rows = np.arange(len(data.users)) if rows is None else rows
    negatives = ds.negatives(split)[rows]
    all_users, all_hist, all_targets = data.users[rows], [data.histories[r] for r in rows], data.targets[rows]
    sampled = np.empty(len(rows), dtype=np.int64)
    full_r = np.empty(len(rows), dtype=np.int64) if full else None
    for s in _batches(len(rows), batch_size, f"evaluate {split}"):
        sl = slice(s, s + batch_size)
        users, hist, targets = all_users[sl], all_hist[sl], all_targets[sl]
        if full:
            scores = _checked(model.score_all(users, hist), model, split)  # (B, N)
            cand = np.concatenate([targets[:, None], negatives[sl]], axis=1)
            sampled[sl] = target_ranks(np.take_along_axis(scores, cand, axis=1))
            full_r[sl] = full_ranks(scores, targets, exclude=hist)  # type: ignore[index]
        else:
            cand = np.concatenate([targets[:, None], negatives[sl]], axis=1)  # (B, 1 + n_neg), target first
            sampled[sl] = target_ranks(_checked(model.score(users, hist, cand), model, split))
    out = {"sampled": sampled, "targets": all_targets}
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
    rows: np.ndarray | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Ranking metrics of a split (``hit@k``, ``ndcg@k``, ``mrr``; ``full_*`` over the whole catalog)
    and the breakdown by target-item popularity (5 equal-size groups of items by training count).
    ``rows`` (see :func:`seeded_rows`) evaluates a subset of the split's users (for slow LLM scorers)."""
    ranks = rank_targets(model, ds, split, full, batch_size, rows)
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
    rows = seeded_rows(len(df), max_examples, seed)
    df = df.iloc[rows].reset_index(drop=True)
    histories = [np.asarray(h, dtype=np.int64) for h in df["history"]]
    users, targets = df["user_idx"].to_numpy(), df["target"].to_numpy().astype(np.int64)
    scores = np.empty(len(df), dtype=np.float64)
    for s in _batches(len(df), batch_size, f"CTR {split}"):
        sl = slice(s, s + batch_size)
        scores[sl] = _checked(model.score_pairs(users[sl], histories[sl], targets[sl]), model, split)
    labels = df["label"].to_numpy()
    return {"auc": auc(labels, scores), "uauc": uauc(users, labels, scores), "ctr_examples": len(df)}, rows
