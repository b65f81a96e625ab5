"""The evaluation protocol: leave-one-out with frozen sampled candidates, full-catalog ranking, CTR AUC/UAUC.

With held-out (cold) items (``prepare --cold-items``, :mod:`llmrec.data.cold`) a split's cases are of two
kinds: the warm ones (target trained on), evaluated as without cold items, and the cold ones (target held
out), ranked among held-out items only with fair ties (:func:`evaluate_cold_ranking`). A model that cannot
score an item it never trained on (``scores_unseen_items`` False: the ID models) does not score the cold
cases: every held-out candidate gets one score, so it ranks at chance level exactly; the held-out items of
its histories are left out of what it reads (it has no trained embedding of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llmrec.data.cold import chance_metrics
from llmrec.data.dataset import Dataset, Split
from llmrec.errors import LlmrecError
from llmrec.eval.metrics import (
    auc,
    expected_ranking_metrics,
    full_ranks,
    popularity_breakdown,
    ranking_metrics,
    target_ranks,
    tie_counts,
    uauc,
)
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
    ``rows`` restricts the evaluation to those users of the split (indices into it); the cases whose target
    is held out (cold) are left out (see :func:`evaluate_cold_ranking`)."""
    data = ds.split(split)
    rows = case_rows(ds, split, np.arange(len(data.users)) if rows is None else rows, cold=False)
    negatives = ds.negatives(split)[rows]
    all_users, all_hist, all_targets = data.users[rows], [data.histories[r] for r in rows], data.targets[rows]
    read = model_histories(model, ds, all_hist)
    sampled = np.empty(len(rows), dtype=np.int64)
    full_r = np.empty(len(rows), dtype=np.int64) if full else None
    for s in _batches(len(rows), batch_size, f"evaluate {split}"):
        sl = slice(s, s + batch_size)
        users, hist, targets = all_users[sl], read[sl], all_targets[sl]
        if full:
            scores = _checked(model.score_all(users, hist), model, split)  # (B, N)
            cand = np.concatenate([targets[:, None], negatives[sl]], axis=1)
            sampled[sl] = target_ranks(np.take_along_axis(scores, cand, axis=1))
            full_r[sl] = full_ranks(scores, targets, exclude=all_hist[sl])  # type: ignore[index]
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


def held_out(ds: Any) -> np.ndarray:
    """(N,) bool: the dataset's held-out items (none for a dataset, or a view of one, without them)."""
    mask = getattr(ds, "cold_items", None)
    return np.zeros(ds.n_items, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)


def case_rows(ds: Any, split: Split, rows: np.ndarray, cold: bool) -> np.ndarray:
    """The rows of ``rows`` (indices into the split) whose target is held out (``cold``) or not."""
    mask = held_out(ds)
    if not mask.any():
        return rows if not cold else rows[:0]
    return rows[mask[ds.split(split).targets[rows]] == cold]


def model_histories(model: Recommender, ds: Any, histories: list[np.ndarray]) -> list[np.ndarray]:
    """The histories as ``model`` reads them: a model that cannot score unseen items (an ID model) reads
    them without the held-out items, which it has no trained embedding of; any other reads them whole."""
    mask = held_out(ds)
    if model.scores_unseen_items or not mask.any():
        return histories
    return [np.asarray(h)[~mask[np.asarray(h, dtype=np.int64)]] for h in histories]


def evaluate_cold_ranking(
    model: Recommender,
    ds: Dataset,
    split: Split,
    ks: Sequence[int] = (5, 10),
    full: bool = True,
    batch_size: int = 256,
    rows: np.ndarray | None = None,
) -> dict[str, float]:
    """Ranking metrics of a split's cold cases (target held out), with fair ties: the target among its
    frozen held-out negatives, and (``full``) among every held-out item outside the user's history.

    Also ``chance@k`` (``full_chance@k``): the hit@k of a random ranking of those candidates, ``cases`` and
    ``scores_unseen_items`` (0: the model cannot score them; it ranks at chance level, see the module)."""
    data = ds.split(split)
    rows = case_rows(ds, split, np.arange(len(data.users)) if rows is None else rows, cold=True)
    negatives = ds.cold_negatives(split)[rows]  # (R, M)
    cold = held_out(ds)
    users, targets = data.users[rows], data.targets[rows]
    histories = [data.histories[r] for r in rows]
    allowed = np.tile(cold, (len(rows), 1))  # (R, N): held-out items outside the history
    for r, h in enumerate(histories):
        allowed[r, np.asarray(h, dtype=np.int64)] = False
    allowed[np.arange(len(rows)), targets] = False
    count = np.zeros((2, len(rows)), dtype=np.int64)  # greater, tied among the sampled candidates
    full_count = np.zeros((2, len(rows)), dtype=np.int64)
    if not model.scores_unseen_items:  # one score for every held-out item: all tie
        count[1], full_count[1] = negatives.shape[1], allowed.sum(axis=1)
    for s in _batches(len(rows) if model.scores_unseen_items else 0, batch_size, f"evaluate {split} cold"):
        sl = slice(s, s + batch_size)
        cand = np.concatenate([targets[sl, None], negatives[sl]], axis=1)  # (B, 1 + M), target first
        if full:
            scores = _checked(model.score_all(users[sl], histories[sl]), model, split)  # (B, N)
            count[:, sl] = tie_counts(np.take_along_axis(scores, cand, axis=1))
            with_target = np.concatenate([np.take_along_axis(scores, targets[sl, None], 1), scores], axis=1)
            inside = np.concatenate([np.ones((len(cand), 1), dtype=bool), allowed[sl]], axis=1)
            full_count[:, sl] = tie_counts(with_target, 0, inside)
        else:
            count[:, sl] = tie_counts(_checked(model.score(users[sl], histories[sl], cand), model, split))
    metrics = expected_ranking_metrics(count[0], count[1], ks)
    metrics.update(chance_metrics(np.full(len(rows), negatives.shape[1] + 1), ks))
    if full:
        metrics.update({f"full_{k}": v for k, v in expected_ranking_metrics(*full_count, ks).items()})
        metrics.update({f"full_{k}": v for k, v in chance_metrics(allowed.sum(axis=1) + 1, ks).items()})
    metrics.update(cases=len(rows), scores_unseen_items=float(model.scores_unseen_items))
    return metrics


def evaluate_ctr(
    model: Recommender,
    ds: Dataset,
    split: Split,
    batch_size: int = 1024,
    max_examples: int | None = None,
    seed: int = 0,
    cold: bool = False,
) -> tuple[dict[str, float], np.ndarray]:
    """AUC and UAUC of ``score_pairs`` on the split's labelled CTR examples, and the rows used.

    ``max_examples`` evaluates a seeded uniform subset of the rows (for slow LLM scorers); the same seed
    and split always give the same rows, returned so the caller can record them. With held-out items, the
    rows whose target is one (``cold``) or the others; a model that cannot score unseen items gives every
    cold row one score (AUC 0.5).
    """
    df = ds.ctr(split)
    mask = held_out(ds)
    kept = np.flatnonzero(mask[df["target"].to_numpy()] == cold)  # every row when nothing is held out
    rows = kept[seeded_rows(len(kept), max_examples, seed)]
    df = df.iloc[rows].reset_index(drop=True)
    histories = model_histories(model, ds, [np.asarray(h, dtype=np.int64) for h in df["history"]])
    users, targets = df["user_idx"].to_numpy(), df["target"].to_numpy().astype(np.int64)
    scores = np.zeros(len(df), dtype=np.float64)
    for s in _batches(len(df) if model.scores_unseen_items or not cold else 0, batch_size, f"CTR {split}"):
        sl = slice(s, s + batch_size)
        scores[sl] = _checked(model.score_pairs(users[sl], histories[sl], targets[sl]), model, split)
    labels = df["label"].to_numpy()
    return {"auc": auc(labels, scores), "uauc": uauc(users, labels, scores), "ctr_examples": len(df)}, rows
