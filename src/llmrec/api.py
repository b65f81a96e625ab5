"""The Python API: prepare, train, evaluate, and a trained run that answers recommendation queries.

A notebook session, end to end (the README's walkthrough; a test runs exactly this)::

    import llmrec

    ds = llmrec.prepare("ml-100k", out="data/ml-100k")
    run = llmrec.train("sasrec", data=ds, out="runs/nb/sasrec", options={"epochs": 5})
    run.metrics["test"]["hit@10"]
    model = llmrec.load(run)
    model.recommend(user_ids=["1", "2"], k=10)             # a DataFrame: user, rank, item_id, title, score
    model.recommend(histories=[["50", "172", "181"]], k=5)  # an ad-hoc history of item ids, oldest first
    model.rank(["50", "181", "100"], user_ids=["1"])        # every candidate, scored and ranked

``Model.answer`` is the batched core under ``recommend``, ``rank``, ``llmrec recommend --all-users`` and the
service's micro-batches: many queries, one model call per kind of query (whole catalog, or candidate lists
of one length). A CTR-only model (TALLRec, CoLLM, BinLLM, HistLLM) ranks through its ``score`` /
``score_all``, which encode each user's part of the prompt once and every candidate's suffix after it.
Retrieve then re-rank: ``llmrec.load(llm_run, retriever=sasrec_run, retrieve=100)`` re-ranks each user's
top-100 of the retriever instead of the whole catalog.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrec.errors import LlmrecError
from llmrec.filters import ItemAttributes, RuleError, mask_scores, without_items

if TYPE_CHECKING:
    import pandas as pd

    from llmrec.data.dataset import Dataset
    from llmrec.models.base import Recommender
    from llmrec.retrieval.lookup import RunIndex

#: the columns of every recommendation table (API, batch files)
COLUMNS = ("user", "rank", "item_id", "title", "score")


class QueryError(LlmrecError):
    """A query the model cannot answer as asked (unknown id, empty history, k out of range...): the
    caller's input, named by ``field``. ``status`` is the HTTP status the service answers with.

    Attributes:
        field: the input at fault (``"user_id"``, ``"history"``, ``"candidates"``, ``"k"``...).
        status: 404 for an unknown user or item id, 422 for any other bad input.
        message: the message without the field and hint that ``str(error)`` adds.

    Example:
        ```python
        try:
            model.recommend(user_ids=["no-such-user"])
        except llmrec.QueryError as e:
            print(e.field, e.status)  # user_id 404
        ```
    """

    def __init__(self, message: str, *, field: str, status: int = 422, hint: str | None = None) -> None:
        super().__init__(message, field=field, hint=hint)
        self.status, self.message = status, message


@dataclasses.dataclass
class Query:
    """One resolved request: whose history, how many items, among which candidates."""

    user: str | None  # the user id; None for an ad-hoc history
    user_idx: int  # what the model is given as the user index (0 for an ad-hoc history)
    history: np.ndarray  # item indices, oldest first
    k: int
    exclude_history: bool = True
    candidates: np.ndarray | None = (
        None  # item indices to rank; None = the whole catalog (or the retriever's)
    )
    allowed: np.ndarray | None = None  # (N,) bool: the items its rules let through; None = every item


def check_k(k: Any, field: str = "k") -> int:
    """How many items: an integer >= 1 (more than the catalog gives every item that can be recommended)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise QueryError(f"must be an integer >= 1, got {k!r}", field=field, hint="ask for 1 or more items")
    return int(k)


class Model:
    """A trained run, loaded once, answering queries in batches: what ``load()`` returns.

    Everything a query reads (catalog, users' histories) is read when the model is loaded, so a loaded
    ``Model`` never goes back to its dataset folder. ``recommend()`` and ``rank()`` are the notebook
    calls; ``query()`` and ``answer()`` are the batched core under them, under
    ``llmrec recommend --all-users`` and under the service's micro-batches: many queries, one model call
    per kind of query (the whole catalog, or candidate lists of one length). Calls are thread-safe (one
    model call at a time).

    Example:
        ```python
        model = llmrec.load("runs/nb/sasrec")
        model.recommend(user_ids=["1", "2"], k=10)
        model.recommend(histories=[["50", "172", "181"]], k=5)
        model.rank(["50", "181", "100"], user_ids=["1"])
        ```
    """

    def __init__(
        self,
        model: Recommender,
        dataset: Dataset,
        run: Path,
        retriever: Model | None = None,
        retrieve: int = 100,
    ) -> None:
        self.model, self.dataset, self.run = model, dataset, Path(run)
        # everything a query reads, read now: a loaded Model (and the service around it) never goes back
        # to the dataset folder, so a folder moved or deleted after loading cannot fail a query
        self._catalog = items = dataset.items  # the rows /items answers with
        self.sequences: list[np.ndarray] = dataset.sequences  # a known user's history
        self.item_ids: list[str] = items["item_id"].astype(str).tolist()
        self.titles: list[str] = items["title"].astype(str).tolist()
        self.item_index = {iid: i for i, iid in enumerate(self.item_ids)}
        self.user_ids: list[str] = dataset.users["user_id"].astype(str).tolist()
        self.user_index = {uid: u for u, uid in enumerate(self.user_ids)}
        self.retriever, self.retrieve = None, check_k(retrieve, "retrieve")
        if retriever is not None:
            self.set_retriever(retriever, retrieve)
        self._attributes: ItemAttributes | None = None  # the catalog's columns, as filters read them
        self.calls = 0  # model calls made (the service's micro-batching is checked by counting them)
        self.index: RunIndex | None = None  # the run's item index (RUN/index/), which load() opens
        self._lock = threading.Lock()  # one model call at a time (torch modules are not re-entrant)

    # ------------------------------------------------------------------ what it is
    @property
    def name(self) -> str:
        """The registered name of the model (``"sasrec"``, ``"illmrec"``...)."""
        return self.model.name

    @property
    def device(self) -> str:
        """The device the model runs on (``"cpu"``, ``"cuda:0"``...), as resolved when it was loaded."""
        return self.model.placement.device

    @property
    def needs_user_id(self) -> bool:
        """Whether the model scores a user by its id (MF, VBPR, CoLLM/BinLLM/HistLLM's CF part): an ad-hoc
        history of an unknown user then cannot be scored."""
        return self.model.needs_user_id

    def info(self) -> dict[str, Any]:
        """What is loaded: model, run, dataset, device, sizes, retriever."""
        return {
            "model": self.name,
            "run": str(self.run),
            "dataset": str(Path(self.dataset.root).resolve()),
            "device": self.device,
            "users": len(self.user_ids),
            "items": len(self.item_ids),
            "retriever": None
            if self.retriever is None
            else {"model": self.retriever.name, "run": str(self.retriever.run), "candidates": self.retrieve},
            "index": None if self.index is None else self.index.describe(),
        }

    def __repr__(self) -> str:
        return f"llmrec.Model({self.name} from {self.run}, {len(self.item_ids):,} items, on {self.device})"

    def set_retriever(self, retriever: Model, retrieve: int = 100) -> None:
        """Re-rank ``retriever``'s top-``retrieve`` per user instead of the whole catalog (same dataset)."""
        if retriever.item_ids != self.item_ids or retriever.user_ids != self.user_ids:
            raise LlmrecError(
                f"the retriever {retriever.run} was trained on another dataset ({retriever.dataset.root}) "
                f"than {self.run} ({self.dataset.root})",
                hint="retrieve with a run trained on the same dataset",
            )
        self.retriever, self.retrieve = retriever, check_k(retrieve, "retrieve")

    def item(self, item_id: str) -> dict[str, Any]:
        """An item's row of the catalog (JSON-ready: missing values are None)."""
        i = self.item_index.get(str(item_id))
        if i is None:
            raise QueryError(f"unknown item id {str(item_id)!r}", field="item_id", status=404)
        row = self._catalog.iloc[i].to_dict()
        out = {}
        for key, value in row.items():
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and not np.isfinite(value):
                value = None
            out[str(key)] = value
        return out

    def add_items(self, items: pd.DataFrame, image_dir: str | Path | None = None) -> list[str]:
        """Add new items to the run without retraining: their features computed with the encoders the
        run's were, kept in the run's ``catalog/`` (committed atomically: a kill leaves the old catalog),
        and recommendable at once (thread-safe: a concurrent query sees the old or the new catalog).

        Args:
            items: one row per item: ``item_id``, ``title``, the text columns the run's features read,
                ``image`` (a local path, relative to ``image_dir``, or a URL; empty: no image).
            image_dir: the folder relative image paths are in (default: the working directory).

        Returns:
            The added item ids, in order.

        Raises:
            LlmrecError: an ID model, a duplicate id, a missing column or an encoder not available here.
        """
        from llmrec.catalog import add_items, encoder_device

        return add_items(self, items, image_dir, device=encoder_device(self))

    # ------------------------------------------------------------------ queries
    def query(
        self,
        user_id: str | None = None,
        history: Sequence[str] | None = None,
        k: int = 10,
        exclude_history: bool = True,
        candidates: Sequence[str] | None = None,
        include: dict[str, Any] | None = None,
        exclude: dict[str, Any] | None = None,
        exclude_items: Sequence[str] | None = None,
    ) -> Query:
        """One query, checked: exactly one of a known ``user_id`` (its whole sequence is the history) or an
        ad-hoc ``history`` of item ids (oldest first); optional ``candidates`` item ids to rank; optional
        business rules (``include``, ``exclude``, ``exclude_items``: see ``recommend()``)."""
        k = check_k(k)
        allowed = self.allowed(include, exclude, exclude_items)
        if (user_id is None) == (history is None):
            raise QueryError(
                "give exactly one of user_id or history",
                field="user_id/history",
                hint="a known user's id, or the item ids a user interacted with, oldest first",
            )
        if user_id is not None:
            u = self.user_index.get(str(user_id))
            if u is None:
                raise QueryError(f"unknown user id {str(user_id)!r}", field="user_id", status=404)
            user, hist = str(user_id), self.sequences[u]
        else:
            if isinstance(history, str):
                raise QueryError("must be a list of item ids, not one string", field="history")
            if not history:
                raise QueryError("is empty", field="history", hint="give at least one item id")
            if self.needs_user_id:
                raise QueryError(
                    f"model '{self.name}' scores a user by its id, so it cannot score an ad-hoc history",
                    field="history",
                    hint="give the user_id of a user of its dataset, or use a sequential or LLM model",
                )
            user, u, hist = None, 0, self._items(history, "history")
        cand = None
        if candidates is not None:
            if isinstance(candidates, str):
                raise QueryError("must be a list of item ids, not one string", field="candidates")
            if not candidates:
                raise QueryError("is empty", field="candidates", hint="give at least one item id")
            cand = self._items(candidates, "candidates")
            if len(np.unique(cand)) != len(cand):
                raise QueryError("lists an item twice", field="candidates")
        elif user is None and self.retriever is not None and self.retriever.needs_user_id:
            raise QueryError(
                f"the retriever '{self.retriever.name}' scores a user by its id and cannot retrieve for an "
                "ad-hoc history",
                field="history",
                hint="give a user_id or candidates, or retrieve with a sequential model",
            )
        return Query(user, u, hist, k, bool(exclude_history), cand, allowed)

    def allowed(
        self,
        include: dict[str, Any] | None = None,
        exclude: dict[str, Any] | None = None,
        exclude_items: Sequence[str] | None = None,
    ) -> np.ndarray | None:
        """The (N,) bool mask of the items these rules let through (None: no rule), checked (see
        :mod:`llmrec.filters`); a Query carries it as ``allowed``."""
        if include is None and exclude is None and exclude_items is None:
            return None
        attributes = self._attributes
        if attributes is None or attributes.catalog is not self._catalog:  # first rule, or a grown catalog
            attributes = self._attributes = ItemAttributes(self._catalog)
        try:
            allowed = attributes.mask(include, exclude)
        except RuleError as e:
            raise QueryError(e.message, field=str(e.field), hint=e.hint) from None
        if exclude_items is not None:
            if isinstance(exclude_items, str):
                raise QueryError("must be a list of item ids, not one string", field="exclude_items")
            allowed = without_items(allowed, attributes.n, self._items(exclude_items, "exclude_items"))
        return allowed

    def _items(self, ids: Sequence[str], field: str) -> np.ndarray:
        index = self.item_index
        out = np.empty(len(ids), dtype=np.int64)
        for pos, iid in enumerate(ids):
            i = index.get(str(iid)) if isinstance(iid, str | int) and not isinstance(iid, bool) else None
            if i is None:
                raise QueryError(f"unknown item id {iid!r} (position {pos + 1})", field=field, status=404)
            out[pos] = i
        return out

    def answer(self, queries: Sequence[Query], batch_size: int = 256) -> list[list[dict[str, Any]]]:
        """Ranked items ({item_id, title, score}) per query, best first, with one model call per group of
        queries asking the same thing (the whole catalog, or candidate lists of one length)."""
        queries = list(queries)
        if self.retriever is not None:
            queries = self._retrieved(queries)
        out: list[list[dict[str, Any]]] = [[] for _ in queries]
        groups: dict[int, list[int]] = defaultdict(list)  # candidate count (-1 = catalog) -> query positions
        for pos, q in enumerate(queries):
            groups[-1 if q.candidates is None else len(q.candidates)].append(pos)
        groups.pop(0, None)  # nothing to rank (a retriever found nothing left to recommend): no items
        for width, positions in groups.items():
            for s in range(0, len(positions), batch_size):
                chunk = [queries[p] for p in positions[s : s + batch_size]]
                users = np.array([q.user_idx for q in chunk], dtype=np.int64)
                histories = [q.history for q in chunk]
                if width < 0 and self.index is not None:  # the run's item index instead of every score
                    with self._lock:
                        self.calls += 1
                        found = self.index.answer(self, chunk)
                    for p, recs in zip(positions[s : s + batch_size], found):
                        out[p] = recs
                    continue
                with self._lock:
                    self.calls += 1
                    if width < 0:
                        scores = self.model.score_all(users, histories)  # (b, N)
                        items = None
                    else:
                        items = np.stack([q.candidates for q in chunk])  # (b, C)
                        scores = self.model.score(users, histories, items)  # (b, C)
                scores = np.asarray(scores, dtype=np.float64)
                for row, (p, q) in enumerate(zip(positions[s : s + batch_size], chunk)):
                    out[p] = self._top(q, scores[row], None if items is None else items[row])
        return out

    def _top(self, q: Query, scores: np.ndarray, items: np.ndarray | None) -> list[dict[str, Any]]:
        """The ``q.k`` best of one row of scores (over the catalog, or over ``items``)."""
        scores = mask_scores(scores.copy(), q.allowed, items)  # the rules, before the top-k: k stays filled
        if q.exclude_history and len(q.history):
            if items is None:
                scores[q.history] = -np.inf
            else:
                scores[np.isin(items, q.history)] = -np.inf
        top = np.argsort(-scores, kind="stable")[: q.k]
        top = top[np.isfinite(scores[top])]
        idx = top if items is None else items[top]
        return [
            {"item_id": self.item_ids[i], "title": self.titles[i], "score": float(s)}
            for i, s in zip(idx.tolist(), scores[top].tolist())
        ]

    def _retrieved(self, queries: list[Query]) -> list[Query]:
        """Queries without candidates get the retriever's top-``retrieve`` for the same user/history."""
        assert self.retriever is not None
        need = [p for p, q in enumerate(queries) if q.candidates is None]
        first = [dataclasses.replace(queries[p], k=self.retrieve) for p in need]  # checked by query()
        found = self.retriever.answer(first)
        out = list(queries)
        for p, recs in zip(need, found):
            cands = np.array([self.item_index[r["item_id"]] for r in recs], dtype=np.int64)
            out[p] = dataclasses.replace(queries[p], candidates=cands)
        return out

    def similar_items(self, item_id: str, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` items most like ``item_id`` ({item_id, title, score}, best first, the item itself left
        out): the cosine similarity of the model's item vectors (``item_matrix()``, the vectors its scores
        are dot products with; for MF and VBPR they end in the item bias), over every item, exactly. Only a
        model whose scores are a dot product has item vectors (the others: status 422)."""
        from llmrec.retrieval.vectors import similar_rows

        i = self.item_index.get(str(item_id))
        if i is None:
            raise QueryError(f"unknown item id {str(item_id)!r}", field="item_id", status=404)
        k = check_k(k)
        if not self.model.dot_product:
            raise QueryError(
                f"model '{self.name}' has no item vectors (its scores are not a dot product)",
                field="item_id",
                hint="ask a run of mf, vbpr, sasrec, gru4rec, bert4rec, bm3, lgmrec or illmrec",
            )
        with self._lock:
            rows, sims = similar_rows(self.model, i, k)
        return [
            {"item_id": self.item_ids[r], "title": self.titles[r], "score": float(v)}
            for r, v in zip(rows.tolist(), sims.tolist())
        ]

    # ------------------------------------------------------------------ the notebook calls
    def recommend(
        self,
        user_ids: Sequence[str] | None = None,
        histories: Sequence[Sequence[str]] | None = None,
        k: int = 10,
        exclude_history: bool = True,
        candidates: Sequence[str] | Sequence[Sequence[str]] | None = None,
        include: dict[str, Any] | None = None,
        exclude: dict[str, Any] | None = None,
        exclude_items: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Top-``k`` items for each user id (their whole sequence as history) or each ad-hoc history of item
        ids: a DataFrame with columns user, rank, item_id, title, score (``user`` is None for an ad-hoc
        history; ``query`` numbers the inputs in order). ``user_ids=None`` and ``histories=None``: every
        user of the dataset. ``candidates``: one list of item ids for every query, or one list per query;
        only those are ranked (history items among them are dropped when ``exclude_history``).

        Args:
            user_ids: ids of users of the run's dataset (not with ``histories``).
            histories: ad-hoc histories, each a list of item ids, oldest first (not with ``user_ids``).
            k: how many items per query (an integer >= 1).
            exclude_history: leave out the items already in the user's history.
            candidates: item ids to rank instead of the whole catalog: one list for all, or one per query.
            include: only items with these attribute values, e.g. ``{"category": ["Horror"]}`` (an item
                must match every column named, any of its values; see :mod:`llmrec.filters`).
            exclude: never items with these attribute values, e.g. ``{"brand": ["Acme"]}``.
            exclude_items: never these item ids.

        Returns:
            One row per recommended item: ``query, user, rank, item_id, title, score``, best first.

        Raises:
            QueryError: an unknown id (status 404) or any other input the model cannot answer (422).
        """
        import pandas as pd

        if user_ids is not None and histories is not None:
            raise QueryError("give user_ids or histories, not both", field="user_ids/histories")
        if isinstance(user_ids, str) or (histories and isinstance(histories[0], str)):
            raise QueryError(
                "expects a list (of user ids, or of histories that are lists of item ids)",
                field="user_ids" if isinstance(user_ids, str) else "histories",
            )
        who = list(self.user_ids if user_ids is None and histories is None else user_ids or [])
        n = len(histories) if histories is not None else len(who)
        per_query = _per_query(candidates, n)
        queries = [
            self.query(
                user_id=who[i] if histories is None else None,
                history=histories[i] if histories is not None else None,
                k=k,
                exclude_history=exclude_history,
                candidates=per_query[i],
            )
            for i in range(n)
        ]
        allowed = self.allowed(include, exclude, exclude_items)  # one mask, shared by every query
        if allowed is not None:
            queries = [dataclasses.replace(q, allowed=allowed) for q in queries]
        rows = [
            {"query": i, "user": q.user, "rank": r + 1, **rec}
            for i, (q, recs) in enumerate(zip(queries, self.answer(queries)))
            for r, rec in enumerate(recs)
        ]
        return pd.DataFrame(rows, columns=["query", *COLUMNS])

    def rank(
        self,
        candidates: Sequence[str],
        user_ids: Sequence[str] | None = None,
        histories: Sequence[Sequence[str]] | None = None,
    ) -> pd.DataFrame:
        """Every candidate item scored for each user (or history) and ranked, history items included
        (``candidates``: one list for all, or one list each).

        Returns:
            The same columns as ``recommend()``, with every candidate of every query.
        """
        if candidates is None:
            raise QueryError("is required: the item ids to rank", field="candidates")
        every = len(self.item_ids)  # no more candidates than items: k = the catalog keeps them all
        return self.recommend(user_ids, histories, k=every, exclude_history=False, candidates=candidates)


def _per_query(
    candidates: Sequence[str] | Sequence[Sequence[str]] | None, n: int
) -> list[Sequence[str] | None]:
    """One candidate list per query: none, the same list for all, or one each (n of them)."""
    if candidates is None:
        return [None] * n
    if isinstance(candidates, str):
        raise QueryError("must be a list of item ids, not one string", field="candidates")
    if len(candidates) and not isinstance(candidates[0], str | int):
        if len(candidates) != n:
            raise QueryError(f"gives {len(candidates)} lists for {n} queries", field="candidates")
        return list(candidates)  # type: ignore[arg-type]
    return [candidates] * n  # type: ignore[list-item]


# --------------------------------------------------------------------------- the pipeline, as functions
def load(
    run: str | Path | TrainedRun,
    device: str = "auto",
    dtype: str = "auto",
    data: str | Path | None = None,
    retriever: str | Path | TrainedRun | Model | None = None,
    retrieve: int = 100,
    index: bool = True,
    quantize: str = "none",
) -> Model:
    """A trained run (its folder, or what ``train()`` returned) loaded on ``device`` in ``dtype``, ready
    to answer queries. ``data``: the run's dataset moved to another folder (its checksum is verified).
    ``retriever``: another run on the same dataset whose top-``retrieve`` items per user are re-ranked
    (e.g. SASRec's top-100 re-ranked by HistLLM).

    Args:
        run: the run folder, or the ``TrainedRun`` that ``train()`` returned.
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        dtype: the LLM backbone's dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        data: where the run's dataset is now, if it moved since training.
        retriever: a run (or loaded ``Model``) whose top-``retrieve`` items are re-ranked.
        retrieve: how many of the retriever's items each query re-ranks.
        index: answer whole-catalog queries through the run's item index (``RUN/index/``, built by
            ``llmrec index``) when it has one; False: score every item.
        quantize: ``none`` (exact), or ``int8``: the LLM backbone's linear layers quantised for the CPU
            (cheaper, close to the exact scores; see the CPU inference guide).

    Returns:
        The loaded model.

    Example:
        ```python
        model = llmrec.load("runs/histllm", retriever="runs/sasrec", retrieve=100)
        ```
    """
    from llmrec.models.base import load_model, model_dir
    from llmrec.pipeline import run_dataset

    folder = Path(run.dir if isinstance(run, TrainedRun) else run)
    model_dir(folder)  # not a run at all: say so before looking for its dataset
    ds = run_dataset(folder, data)
    model = load_model(folder, device=device, dtype=dtype, data=ds, quantize=quantize)
    from llmrec.catalog import attach_catalog

    if retriever is not None and not isinstance(retriever, Model):
        retriever = load(retriever, device=device, dtype=dtype)
    loaded = Model(model, ds, folder, retrieve=retrieve)
    attach_catalog(loaded)  # the items added to the run after training
    if retriever is not None:
        loaded.set_retriever(retriever, retrieve)
    if index:
        from llmrec.retrieval.lookup import open_index

        loaded.index = open_index(model, folder)
    return loaded


@dataclasses.dataclass
class TrainedRun:
    """A finished training run, as ``train()`` returns it: its folder and the metrics its evaluation
    wrote. It can be passed wherever a run folder is expected (it is path-like).

    Attributes:
        dir: the run folder (config.json, model weights, metrics.json, logs).
        metrics: per split (``valid``, ``test``), each metric's value, e.g. ``metrics["test"]["hit@10"]``.
    """

    dir: Path
    metrics: dict[str, dict[str, float]]

    def load(self, device: str = "auto", dtype: str = "auto", **kwargs: Any) -> Model:
        """This run, loaded to answer queries: ``llmrec.load(run.dir, ...)`` (see ``load()``)."""
        return load(self.dir, device=device, dtype=dtype, **kwargs)

    def __fspath__(self) -> str:
        return str(self.dir)


def prepare(dataset: str = "ml-100k", out: str | Path | None = None, **options: Any) -> Dataset:
    """Import and process a dataset (``llmrec prepare``'s options as keywords, over the source's own defaults
    such as the paper's history length, as on the command line); returns it.

    Args:
        dataset: an importer name (``ml-100k``, ``amazon2023``, ``table``...).
        out: the dataset folder to write (default: ``data/<dataset>``).
        **options: the options of ``llmrec prepare`` (see "prepare's options" below), e.g.
            ``kcore=5, max_users=500``; an unknown key is an error.

    Returns:
        The prepared dataset (pass it to ``train()`` as ``data``).

    Example:
        ```python
        ds = llmrec.prepare("ml-100k", out="data/ml-100k")
        ```
    """
    from llmrec.config import from_dict
    from llmrec.data.dataset import Dataset
    from llmrec.data.importers import importer_defaults
    from llmrec.data.processing import PrepareConfig
    from llmrec.data.processing import prepare as _prepare

    cfg = from_dict(
        PrepareConfig,
        {
            **importer_defaults(dataset),
            "dataset": dataset,
            "out": None if out is None else str(out),
            **options,
        },
        where="prepare options",
    )
    _prepare(cfg)
    return Dataset(cfg.out_dir)


def train(
    model: str,
    data: str | Path | Dataset = "data/ml-100k",
    out: str | Path | None = None,
    options: dict[str, Any] | None = None,
    restart: bool = False,
    **settings: Any,
) -> TrainedRun:
    """Train and evaluate ``model`` on ``data`` into ``out`` (``llmrec train``: ``options`` are the model's
    ``-o`` options; ``settings`` the command's other flags, e.g. ``seed``, ``device``, ``eval={"ks": [10]}``).
    The same call on a finished run evaluates it again; an interrupted one resumes.

    Args:
        model: a registered model name (``sasrec``, ``illmrec``, ``histllm``...).
        data: a prepared dataset, or its folder.
        out: the run folder (default: ``runs/<model>-<dataset>-<timestamp>``).
        options: the model's options, as ``-o KEY=VALUE`` takes them (nested ones dotted or as
            mappings); an unknown key or a value out of range is an error.
        restart: start again from scratch in an existing run folder instead of resuming it.
        **settings: the other settings of ``llmrec train`` (see "train's settings" below).

    Returns:
        The finished run: its folder and metrics.

    Example:
        ```python
        run = llmrec.train("sasrec", data=ds, out="runs/nb/sasrec", options={"epochs": 5})
        run.metrics["test"]["hit@10"]
        ```
    """
    from llmrec.config import from_dict
    from llmrec.data.dataset import Dataset
    from llmrec.pipeline import TrainConfig
    from llmrec.pipeline import train as _train

    root = data.root if isinstance(data, Dataset) else data
    given = {
        "model": model,
        "data": str(root),
        "out": None if out is None else str(out),
        "options": options or {},
        **settings,
    }
    cfg = from_dict(TrainConfig, given, where="train settings")
    run_dir = _train(cfg, restart=restart)
    return TrainedRun(run_dir, _metrics(run_dir))


def evaluate(
    run: str | Path | TrainedRun,
    data: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str = "none",
    **eval_options: Any,
) -> dict[str, dict[str, float]]:
    """Evaluate a trained run again (``llmrec evaluate``; ``eval_options`` e.g. ``ks=[1, 10]``), on any
    device; returns the metrics per split (also written to the run's metrics.json).

    Args:
        run: the run folder, or what ``train()`` returned.
        data: where the run's dataset is now, if it moved since training.
        device: where to run the model (as for ``load()``).
        dtype: the LLM backbone's dtype (as for ``load()``).
        quantize: ``none`` or ``int8`` (as for ``load()``).
        **eval_options: the evaluation settings (see "evaluation settings" below).

    Returns:
        Per split, each metric's value, e.g. ``{"valid": {"hit@10": ...}, "test": {"hit@10": ...}}``.
    """
    from llmrec.pipeline import evaluate_run

    folder = Path(run.dir if isinstance(run, TrainedRun) else run)
    data_dir = None if data is None else str(data)
    return evaluate_run(folder, eval_options, data_dir, device=device, dtype=dtype, quantize=quantize)


def _metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    from llmrec.utils.io import read_json

    path = run_dir / "metrics.json"
    return read_json(path) if path.exists() else {}
