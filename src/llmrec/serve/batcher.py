"""The micro-batcher: a bounded queue of validated queries and one worker task that answers up to
``max_batch`` of them with ONE ``Model.answer`` call in a thread, waiting at most ``max_wait_ms`` after the
first one arrived."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmrec.errors import LlmrecError

if TYPE_CHECKING:
    from llmrec.api import Model, Query
    from llmrec.serve.settings import ServeSettings


class Overloaded(Exception):
    """The queue is full (or the service is stopping): answered 503 with Retry-After."""


# ----------------------------------------------------------------------------- the micro-batcher


@dataclass
class _Pending:
    query: Query
    future: asyncio.Future
    arrived: float  # loop time


class Batcher:
    """One worker task answering queued queries in batches with ``Model.answer`` in a thread."""

    def __init__(
        self,
        model: Model,
        settings: ServeSettings,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """``on_batch(size, seconds)`` hears of each model call (the service's metrics)."""
        self.model, self.settings, self.on_batch = model, settings, on_batch
        self.pending: collections.deque[_Pending] = collections.deque()
        self.batches = 0  # model.answer calls made by the worker
        self.served = 0  # requests those calls answered
        self.model_seconds = 0.0  # time spent in those calls
        self.closing = False
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llmrec-model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="llmrec-batcher")

    async def close(self) -> None:
        """Stop taking requests, answer every queued one, stop the worker."""
        self.closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, query: Query) -> list[dict[str, Any]]:
        """The query's ranked items, once the worker has answered its batch."""
        if self.closing:
            raise Overloaded("the service is shutting down")
        if len(self.pending) >= self.settings.queue_size:
            raise Overloaded(f"{len(self.pending)} requests are already waiting for the model")
        loop = asyncio.get_running_loop()
        item = _Pending(query, loop.create_future(), loop.time())
        self.pending.append(item)
        self._wake.set()
        return await item.future

    async def _next_batch(self) -> list[_Pending]:
        """Up to batch_limit queued requests, once the batch is full or its first request has waited
        max_wait_ms (requests that queued while the model was busy have waited already: no extra wait)."""
        loop, limit = asyncio.get_running_loop(), self.settings.batch_limit
        while not self.pending:
            if self.closing:
                return []
            self._wake.clear()
            await self._wake.wait()
        deadline = self.pending[0].arrived + self.settings.max_wait_ms / 1000
        while len(self.pending) < limit and not self.closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        batch = []
        while self.pending and len(batch) < limit:
            item = self.pending.popleft()
            if not item.future.done():  # a request whose client went away is dropped
                batch.append(item)
        return batch

    async def _run(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                if batch:
                    await self._serve(batch)
                elif self.closing and not self.pending:
                    return
        finally:  # cancelled (a forced exit): no request is left waiting for ever
            for item in self.pending:
                if not item.future.done():
                    item.future.set_exception(Overloaded("the service stopped"))

    async def _serve(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._answer, [b.query for b in batch])
        except Exception as e:  # never let the worker die: each request of the batch reports the error
            results = [e] * len(batch)
        took = time.perf_counter() - start
        self.model_seconds += took
        self.batches += 1
        self.served += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), took)
        for item, result in zip(batch, results):
            if item.future.done():  # its client went away
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _answer(self, queries: list[Query]) -> list[list[dict[str, Any]] | BaseException]:
        """One model call for the batch; if the model refuses it (an LlmrecError about one query), each
        query is answered alone so that only the offending request fails."""
        try:
            return list(self.model.answer(queries))
        except LlmrecError as e:
            if len(queries) == 1:
                return [e]
        out: list[list[dict[str, Any]] | BaseException] = []
        for q in queries:
            try:
                out.append(self.model.answer([q])[0])
            except LlmrecError as e:
                out.append(e)
        return out
