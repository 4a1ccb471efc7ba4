"""Coalescing concurrent calls into one batched call (group commit).

A pull consumer fetches a batch and runs the handler for every message concurrently; each
handler stays a few lines (load, decide, save), and `Coalescer` turns their saves into one
`bulk_write`/`insert_many` — the writes SecantusDB and MongoDB are fast at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

# A consumer nobody waits on (a projection, a service's view of cases) starts a flush at most
# this often: ~4 units of work a second, however fast events come. (At 0.1 s their small
# units of work crowded the database at 100 reports/s: report → assigned p50 180 ms.)
OFF_PATH_INTERVAL_S = 0.25
# ... so such a consumer handles at most a fetched batch per interval: it fetches this many
# (about 2,000 events a second; with 128 a report stream over ~250/s left them behind for good).
OFF_PATH_BATCH = 512
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence["R | BaseException"]]]


class Coalescer(Generic[T, R]):
    """`await submit(item)` returns that item's result from a shared `flush(items)` call.

    A flush starts once the current burst of submissions has settled (`max_delay`), or as soon
    as `max_batch` items wait. At most `inflight` flushes run at once: what arrives meanwhile
    waits and goes into the next, larger flush (group commit) — fewer, bigger transactions and
    no two of this process's flushes conflicting on the same documents. `flush` returns one
    result per item; an exception instance fails only that item.

    `min_interval` spaces flush starts at least that far apart (unless `max_batch` items
    wait): a consumer that is not on anyone's latency path (a projection) then costs the
    shared database a bounded number of transactions a second, however fast events come.

    `parallel_from`: a flush beyond the first starts only when at least that many items wait.
    A trickle is then group-committed by one flush at a time (what arrives during a flush goes
    into the next: fewest transactions), while a backlog is written by `inflight` at once.
    """

    def __init__(
        self,
        flush: Flush[T, R],
        *,
        max_batch: int = 500,
        max_delay: float = 0.002,
        inflight: int = 1,
        min_interval: float = 0.0,
        parallel_from: int = 1,
    ) -> None:
        self._flush_fn = flush
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.inflight = inflight
        self.min_interval = min_interval
        self.parallel_from = parallel_from
        self._last_start = float("-inf")
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.max_batch:
            self._start_flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._delay(loop.time()), self._start_flush)
        return await fut

    def _delay(self, now: float) -> float:
        return max(self.max_delay, self._last_start + self.min_interval - now)

    async def submit_many(self, items: Sequence[T]) -> list[R | Exception]:
        """Submit a burst that is already complete (a fetched batch): it flushes at once.
        An item that failed has its exception in its place."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            fut: asyncio.Future[R] = loop.create_future()
            self._pending.append((item, fut))
            futures.append(fut)
        self._start_flush()
        return list(await asyncio.gather(*futures, return_exceptions=True))

    def _start_flush(self, force: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running >= self.inflight or not self._pending:
            return  # picked up when a running flush ends
        if self._running and len(self._pending) < self.parallel_from and not force:
            return  # a trickle: the running flush's successor takes it
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not force and len(self._pending) < self.max_batch and now < self._last_start + self.min_interval:
            self._timer = loop.call_later(self._last_start + self.min_interval - now, self._start_flush)
            return
        self._last_start = now
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._running += 1
        task = loop.create_task(self._run_then_next(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_then_next(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            await self._run(batch)
        finally:
            self._running -= 1
            if self._pending:
                self._start_flush()

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush_fn([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError("flush returned a result count that does not match its items")
        except BaseException as exc:  # every waiter learns of the failure
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def drain(self) -> None:
        """Flush everything waiting, including what queues behind a running flush (shutdown)."""
        while self._pending or self._tasks:
            self._start_flush(force=True)
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def one_by_one(items: Sequence[T], handle: Callable[[T], Awaitable[object]]) -> list[Exception | None]:
    """The fallback of a batched flush: each item on its own, in order; a failure fails only
    that item (its message is retried with back-off), as a flush result list wants it."""
    results: list[Exception | None] = []
    for item in items:
        try:
            await handle(item)
            results.append(None)
        except Exception as exc:
            results.append(exc)
    return results
