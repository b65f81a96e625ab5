"""The steps of ``llmrec prepare`` that both engines share: id order, negatives, CTR examples, meta.json's record
and the errors both raise.

Below :mod:`llmrec.data.processing` (the pandas engine) and :mod:`llmrec.data.columnar` (the DuckDB engine), so that
each engine imports them and neither imports the other back: the two engines give the same numbers because they
call the same code here.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmrec.config import to_dict
from llmrec.errors import LlmrecError

if TYPE_CHECKING:
    from llmrec.data.processing import ProcessConfig


def natural_order(ids: pd.Series) -> np.ndarray:
    """Sort ids numerically when they all are numbers, else as strings: indices are stable across runs."""
    ids = pd.Series(pd.unique(ids.astype(str)))
    num = pd.to_numeric(ids, errors="coerce")
    if num.notna().all():
        return ids.iloc[np.argsort(num.to_numpy(), kind="stable")].to_numpy()
    return np.sort(ids.to_numpy())


def num_negatives_hint(fewest: int, kcore: str = "") -> str:
    """The advice for too few evaluation negatives where --num-negatives may change (``fewest``: the most
    negatives every user has; none when a user touched every item; ``kcore``: the --kcore advice, if any)."""
    lower = f"lower --num-negatives to {fewest:,} or less, or " if fewest > 0 else ""
    return lower + kcore + "use a source with more items"


def prepare_negatives_hint(cfg: ProcessConfig, filters: list[dict[str, Any]]) -> Callable[[int], str]:
    """``llmrec prepare``'s advice for too few evaluation negatives, for the filters that ran (both engines).

    A user's negatives are the catalog items they never touched, so only fewer negatives or more items help.
    Raising --kcore removes items; lowering it keeps at least as many, so it is advised only where the
    k-core step (k >= 2: a 1-core removes no item by its own count) did remove items."""
    kcore = ""
    for before, step in zip(filters, filters[1:]):
        removed = before["items"] - step["items"]
        if step["step"].startswith("iterative ") and cfg.kcore >= 2 and removed > 0:
            kcore = f"lower --kcore (the {cfg.kcore}-core removed {removed:,} of the {before['items']:,} items), or "
    return functools.partial(num_negatives_hint, kcore=kcore)


_DRAW_BLOCK = 4096  # users whose first draws are made in one call


def sample_negatives(
    sequences: list[np.ndarray],
    n_items: int,
    num: int,
    rng: np.random.Generator,
    hint: str | Callable[[int], str] = num_negatives_hint,
    user_ids: Sequence[str] | np.ndarray | None = None,
) -> np.ndarray:
    """(U, num) item indices per user, uniform without replacement over items outside the user's sequence.

    Per user: draw ``2 * num`` candidates at a time and keep, in draw order, each candidate that is neither
    seen nor already kept, until ``num`` are kept (the rest of that draw is discarded). ``hint`` says what
    to do when a user has too few unseen items (the options of the calling command; a function of the most
    negatives every user has, where that matters); the error names the user with the fewest unseen items,
    by ``user_ids`` (external ids in the order of ``sequences``) when given.

    Speed without changing a number: numpy's bounded integers (``n_items <= 2**32``) give the same stream
    whatever the sizes of the calls, so the draws of many users are made in one call, never more than
    those users certainly consume (the generator ends where one call per draw leaves it; pinned by
    ``tests/test_columnar.py``); and almost always the first ``num`` candidates are distinct and unseen,
    which two set operations confirm.
    """
    out = np.empty((len(sequences), num), dtype=np.int32)
    width = 2 * num
    pool, at = np.empty(0, dtype=np.int64), 0

    def draw(u: int) -> np.ndarray:
        nonlocal pool, at
        if at == len(pool):  # this user needs one more draw, every later user at least one
            pool, at = rng.integers(0, n_items, size=width * min(_DRAW_BLOCK, len(sequences) - u)), 0
        at += width
        return pool[at - width : at]

    for u, seq in enumerate(sequences):
        seen = set(seq.tolist())
        if n_items - len(seen) < num:
            raise too_few_negatives(sequences, n_items, num, hint, user_ids)
        candidates = draw(u)
        head = set(candidates[:num].tolist())
        if len(head) == num and head.isdisjoint(seen):
            out[u] = candidates[:num]
            continue
        chosen: list[int] = []
        taken: set[int] = set()
        while True:
            for c in candidates.tolist():
                if c not in seen and c not in taken:
                    taken.add(c)
                    chosen.append(c)
                    if len(chosen) == num:
                        break
            if len(chosen) == num:
                break
            candidates = draw(u)
        out[u] = chosen
    return out


def too_few_negatives(
    sequences: list[np.ndarray],
    n_items: int,
    num: int,
    hint: str | Callable[[int], str],
    user_ids: Sequence[str] | np.ndarray | None,
) -> LlmrecError:
    """The error for sequences of which some leave fewer than ``num`` unseen items: it names the user with
    the fewest (the first of them), so that the advice (``hint``, given that number) holds for every user."""
    unseen = np.array([n_items - len(np.unique(seq)) for seq in sequences])
    u = int(np.argmin(unseen))
    fewest = int(unseen[u])
    who = f"user '{user_ids[u]}'" if user_ids is not None else f"the user at position {u + 1}"
    return LlmrecError(
        f"{who} has interacted with {n_items - fewest:,} of the {n_items:,} items: {fewest:,} "
        f"{'is' if fewest == 1 else 'are'} left, fewer than the {num:,} evaluation "
        f"negative{'' if num == 1 else 's'} asked for",
        hint=hint(fewest) if callable(hint) else hint,
    )


def _unseen(rng: np.random.Generator, n_items: int, num: int, seen: set[int]) -> list[int]:
    """``num`` uniform items outside ``seen`` (with replacement across calls; none if all were seen)."""
    out: list[int] = []
    while len(out) < num and len(seen) < n_items:
        c = int(rng.integers(n_items))
        if c not in seen:
            out.append(c)
    return out


def ctr_examples(inter: pd.DataFrame, cfg: ProcessConfig) -> pd.DataFrame | None:
    """Labelled (user, history, target, label) rows; history = last liked items strictly before the target:
    of the user's earlier rows, or (``ctr_history_before`` = time) of strictly earlier times.

    Uses the ``label`` column where the source has one, else ``rating >= like_threshold``; returns None
    for implicit-feedback sources (no rating, no label).
    """
    has_label = inter["label"].notna().any()
    if not has_label and not inter["rating"].notna().any() and not cfg.ctr_sampled_negatives:
        return None
    if has_label:
        label = inter["label"]
    elif inter["rating"].notna().any():
        label = (inter["rating"] >= cfg.like_threshold).astype(float)
    else:  # implicit feedback: every interaction is a positive, sampled items are the negatives
        label = pd.Series(np.ones(len(inter)), index=inter.index)
    rows: dict[str, list[Any]] = {k: [] for k in ("user_idx", "target", "label", "timestamp", "history")}
    users, items, times = (
        inter["user_idx"].to_numpy(),
        inter["item_idx"].to_numpy(),
        inter["timestamp"].to_numpy(),
    )
    labels = label.to_numpy()
    rng = np.random.default_rng(cfg.seed)
    n_items = int(items.max()) + 1 if len(items) else 0
    seen = inter.groupby("user_idx")["item_idx"].agg(set).to_dict() if cfg.ctr_sampled_negatives else {}
    by_time = cfg.ctr_history_before == "time"
    liked: list[int] = []
    liked_times: list[int] = []  # the time of each liked item (non-decreasing: rows are chronological)
    for i in range(len(inter)):
        if i == 0 or users[i] != users[i - 1]:
            liked, liked_times = [], []
        # by time: only the likes of strictly earlier times (rows of one impression never see each other)
        before = bisect.bisect_left(liked_times, times[i]) if by_time else len(liked)
        if before >= cfg.ctr_min_history:
            history = np.asarray(liked[max(before - cfg.ctr_history_len, 0) : before], dtype=np.int32)
            sampled = _unseen(rng, n_items, cfg.ctr_sampled_negatives, seen.get(users[i], set()))
            for target, y in [(items[i], int(labels[i]))] + [(c, 0) for c in sampled]:
                rows["user_idx"].append(users[i])
                rows["target"].append(target)
                rows["label"].append(y)
                rows["timestamp"].append(times[i])
                rows["history"].append(history)
        if labels[i] == 1:
            liked.append(int(items[i]))
            liked_times.append(int(times[i]))
    df = pd.DataFrame(rows)
    df["user_idx"] = df["user_idx"].astype("int32")
    df["target"] = df["target"].astype("int32")
    df["label"] = df["label"].astype("int8")
    df["timestamp"] = df["timestamp"].astype("int64")
    # Global temporal split (CoLLM): sort by time; the oldest 80% train, then 10% valid, 10% test.
    df = df.sort_values(["timestamp", "user_idx", "target"], kind="stable").reset_index(drop=True)
    n = len(df)
    a = int(round(cfg.ctr_split[0] * n))
    b = int(round((cfg.ctr_split[0] + cfg.ctr_split[1]) * n))
    df["split"] = np.array(["train"] * a + ["valid"] * (b - a) + ["test"] * (n - b))
    return df


def no_known_items(n_items: int, n_item_ids: int, files: list[str]) -> LlmrecError:
    """The error for an item file none of whose ids the interactions name (both engines raise it)."""
    return LlmrecError(
        f"no item of this file appears in the interactions ({n_items} items, {n_item_ids} item ids in {files[0]})",
        file=files[1],  # importers list the interactions file first, the items file second
        hint="check that the item file belongs to the same source as --path and that both name items "
        "by the same id (--columns item_id=<column>)",
    )


def nothing_left(filters: list[dict[str, Any]], files: list[str]) -> LlmrecError:
    """The error for filters that removed every interaction, with what each step removed."""
    steps = "; ".join(f"{f['step']} removed {f['interactions_removed']:,}" for f in filters)
    return LlmrecError(
        f"no interactions left after filtering ({steps})",
        file=files[0] if files else None,
        hint="lower --kcore or --min-user-len, or check the input"
        + (f" and its item file {files[1]}" if len(files) > 1 else ""),
    )


def split_record(cfg: ProcessConfig) -> dict[str, Any]:
    """meta.json's record of the processing config, the splits and the negatives (both engines)."""
    return {
        "config": to_dict(cfg),
        "splits": "leave-one-out: train = sequence[:-2], valid target = sequence[-2], test target = sequence[-1]",
        "negatives": {
            "per_user": cfg.num_negatives,
            "seed": cfg.seed,
            "sampling": "uniform, never-interacted",
        },
    }


def from_input(e: LlmrecError, files: list[str]) -> LlmrecError:
    """An error found after the import (it names no file) said to come from the input ``files``
    (interactions first, then items); an error that names its file stays as it is."""
    if e.file is not None:
        return e
    items_file = f" and its item file {files[1]}" if len(files) > 1 else ""
    return LlmrecError(f"after importing it{items_file}: {e}", file=files[0])
