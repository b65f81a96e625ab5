"""Ranking and CTR metrics as pure functions of scores (no model, no dataset).

Ties are ranked pessimistically: the target's rank counts every candidate whose score is >= its own,
so a model that outputs constant scores gets the worst rank, never a lucky one. The cold-start cases rank
fairly instead (:func:`tie_counts`, :func:`expected_ranking_metrics`): a tied target's rank is uniform over
the tied places, so a model that cannot tell the candidates apart scores exactly the chance level.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def _check_no_nan(scores: np.ndarray, what: str) -> None:
    # +-inf is allowed (-inf masks a candidate); NaN would silently rank anywhere.
    if np.isnan(scores).any():
        raise ValueError(f"{what} contain NaN: the model produced invalid scores")


def target_ranks(scores: np.ndarray, target_col: int = 0) -> np.ndarray:
    """0-based rank of the target among candidates, pessimistic on ties.

    scores: (U, C) scores of target + candidates, the target in column ``target_col``.
    -inf marks candidates that must never outrank anything (e.g. masked history items).
    """
    scores = np.asarray(scores, dtype=np.float64)
    _check_no_nan(scores, "scores")
    target = scores[:, target_col : target_col + 1]  # (U, 1)
    ge = scores >= target  # (U, C)
    ge[:, target_col] = False
    return ge.sum(axis=1)


def full_ranks(
    scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """0-based rank of each target over the whole catalog, pessimistic on ties.

    scores: (U, N); targets: (U,) item indices; exclude: per user, items to remove from the ranking
    (typically the user's history); the target itself is never excluded.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    _check_no_nan(scores, "scores")
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets].copy()  # read before masking: a re-consumed target still counts
    if exclude is not None:
        for u, items in enumerate(exclude):
            scores[u, np.asarray(items, dtype=np.int64)] = -np.inf
    if np.isneginf(target_scores).any():
        raise ValueError("a target item has score -inf: it can never be ranked")
    scores[rows, targets] = -np.inf
    return (scores >= target_scores[:, None]).sum(axis=1)


def tie_counts(
    scores: np.ndarray, target_col: int = 0, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, how many candidates score strictly above the target and how many tie with it (the target
    not counted). ``allowed``: (U, C) bool, the candidates that take part (the target always does)."""
    scores = np.asarray(scores, dtype=np.float64)
    _check_no_nan(scores, "scores")
    target = scores[:, target_col : target_col + 1]  # (U, 1)
    inside = np.ones(scores.shape, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool).copy()
    inside[:, target_col] = False
    return ((scores > target) & inside).sum(axis=1), ((scores == target) & inside).sum(axis=1)


def expected_ranking_metrics(
    greater: np.ndarray, tied: np.ndarray, ks: Sequence[int] = (5, 10)
) -> dict[str, float]:
    """:func:`ranking_metrics` with fair ties: the target's 0-based rank is uniform over ``greater`` ..
    ``greater + tied``, and each metric is its expectation (hit@k = the share of those places below k)."""
    g, t = np.asarray(greater, dtype=np.int64), np.asarray(tied, dtype=np.int64)
    if not len(g):
        return ranking_metrics(np.zeros(0), ks)
    top = int((g + t).max()) + 1
    gain = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(top) + 2.0))])  # gain[n]: ranks < n
    recip = np.concatenate([[0.0], np.cumsum(1.0 / (np.arange(top) + 1.0))])
    places = (t + 1).astype(np.float64)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hit@{k}"] = float(np.mean(np.clip(k - g, 0, t + 1) / places))
        lo, hi = np.minimum(g, k), np.minimum(g + t + 1, k)
        out[f"ndcg@{k}"] = float(np.mean((gain[hi] - gain[lo]) / places))
    out["mrr"] = float(np.mean((recip[g + t + 1] - recip[g]) / places))
    return out


def hit_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of users whose target is in the top k (rank < k)."""
    ranks = np.asarray(ranks)
    return float(np.mean(ranks < k)) if len(ranks) else float("nan")


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item: 1/log2(rank + 2) if rank < k else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if not len(ranks):
        return float("nan")
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean())


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """{'hit@k', 'ndcg@k' for each k} plus 'mrr' from 0-based target ranks."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hit@{k}"] = hit_at_k(ranks, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    out["mrr"] = (
        float(np.mean(1.0 / (np.asarray(ranks, dtype=np.float64) + 1.0))) if len(ranks) else float("nan")
    )
    return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (scikit-learn); ties count one half, as in the CTR literature."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("AUC needs both positive and negative labels")
    return float(roc_auc_score(labels, scores))


def uauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean per-user AUC over users that have both classes (CoLLM / HistLLM's UAUC; unweighted)."""
    users, labels, scores = np.asarray(users), np.asarray(labels), np.asarray(scores)
    order = np.argsort(users, kind="stable")
    users, labels, scores = users[order], labels[order], scores[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    aucs = [
        roc_auc_score(lab, sc)
        for lab, sc in zip(np.split(labels, bounds), np.split(scores, bounds))
        if 0 < lab.sum() < len(lab)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def popularity_groups(popularity: np.ndarray, n_groups: int = 5) -> np.ndarray:
    """Group id (0 = least popular) per item: items sorted by training count, cut into equal-size groups.

    Ties in popularity are broken by item index so the grouping is deterministic (I-LLMRec Fig. 7).
    """
    popularity = np.asarray(popularity)
    order = np.lexsort((np.arange(len(popularity)), popularity))  # ascending popularity, then index
    groups = np.empty(len(popularity), dtype=np.int64)
    for g, chunk in enumerate(np.array_split(order, n_groups)):
        groups[chunk] = g
    return groups


def popularity_breakdown(
    ranks: np.ndarray,
    targets: np.ndarray,
    popularity: np.ndarray,
    ks: Sequence[int] = (5, 10),
    n_groups: int = 5,
) -> list[dict[str, float]]:
    """Ranking metrics per popularity group of the target item (group 0 = least popular)."""
    groups = popularity_groups(popularity, n_groups)[np.asarray(targets)]
    pop = np.asarray(popularity)
    item_groups = popularity_groups(pop, n_groups)
    out = []
    for g in range(n_groups):
        mask = groups == g
        row: dict[str, float] = {
            "group": g,
            "users": int(mask.sum()),
            "min_count": int(pop[item_groups == g].min()) if (item_groups == g).any() else 0,
            "max_count": int(pop[item_groups == g].max()) if (item_groups == g).any() else 0,
        }
        row.update(ranking_metrics(ranks[mask], ks) if mask.any() else {})
        out.append(row)
    return out
