"""Per-key asyncio locks and claims: serialise work on one aggregate inside a process.

Version-guarded writes already keep replicas correct; this keeps one process's concurrent
handlers (a fetched batch runs concurrently) from racing each other on a hot aggregate,
e.g. a flood of duplicate reports merged into one original case.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]  # no waiter left: forget the key
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class KeyClaims:
    """Keys held by one process's concurrent batched writes (group commits in flight).

    A batch writes at once the items whose keys no running write holds; the others wait until
    those keys are free. Two writes in flight then never touch the same document (no write
    conflict, and a read-then-write such as duplicate linking sees what the other wrote), while
    batches that share nothing overlap. A waiting item keeps its place: a later batch does not
    take its key before it, so each key's items are written in the order they were handed over.
    """

    def __init__(self) -> None:
        self._held: set[Hashable] = set()
        self._waiting: dict[Hashable, deque[int]] = {}  # key → the tickets of batches waiting for it
        self._tickets = itertools.count()
        self._released = asyncio.Event()

    def split(self, keys: Sequence[Iterable[Hashable]], ticket: int | None = None) -> tuple[list[int], list[int]]:
        """Positions free to write now, and those to write later. An item waits if one of its
        keys is held, is waited for by an earlier batch than `ticket`'s, or is a key of an earlier
        waiting item of this batch."""
        blocked = set(self._held)
        now: list[int] = []
        later: list[int] = []
        for i, item_keys in enumerate(keys):
            ks = set(item_keys)
            if ks & blocked or any(self._ahead(k, ticket) for k in ks):
                later.append(i)
                blocked |= ks
            else:
                now.append(i)
        return now, later

    def _ahead(self, key: Hashable, ticket: int | None) -> bool:
        queue = self._waiting.get(key)
        return bool(queue) and queue[0] != ticket

    @asynccontextmanager
    async def hold(self, keys: Iterable[Hashable]) -> AsyncIterator[None]:
        """Hold `keys` (free, as `split` just said: no await between) for the write."""
        mine = set(keys)
        self._held |= mine
        try:
            yield
        finally:
            self._held -= mine
            self._wake()

    async def write_apart(
        self,
        items: Sequence[T],
        keys_of: Callable[[T], Iterable[Hashable]],
        write: Callable[[list[T]], Awaitable[Sequence[R]]],
    ) -> list[R]:
        """`write(part)` the items in parts no other write in flight touches: those free now at
        once, the rest as the writes holding their keys finish. Results in the items' order."""
        ticket = next(self._tickets)
        results: list[Any] = [None] * len(items)
        todo = list(range(len(items)))
        try:
            while todo:
                keys = [tuple(keys_of(items[i])) for i in todo]
                now, later = self.split(keys, ticket)
                waiting = {k for j in later for k in keys[j]}
                self._queue(ticket, waiting)  # keep this batch's place for what must wait
                if not now:  # everything touches a write in flight: wait for one to finish
                    await self.released()
                    continue
                taken = {k for j in now for k in keys[j]}
                self._leave(ticket, taken - waiting)
                async with self.hold(taken):
                    written = await write([items[todo[j]] for j in now])
                for j, result in zip(now, written, strict=True):
                    results[todo[j]] = result
                todo = [todo[j] for j in later]
        finally:
            self._leave(ticket, [k for k, q in self._waiting.items() if ticket in q])
            self._wake()
        return results

    def _queue(self, ticket: int, keys: Iterable[Hashable]) -> None:
        for k in keys:
            queue = self._waiting.setdefault(k, deque())
            if ticket not in queue:
                queue.append(ticket)

    def _leave(self, ticket: int, keys: Iterable[Hashable]) -> None:
        for k in keys:
            queue = self._waiting.get(k)
            if queue and ticket in queue:
                queue.remove(ticket)
                if not queue:
                    del self._waiting[k]

    def _wake(self) -> None:
        self._released.set()
        self._released = asyncio.Event()

    async def released(self) -> None:
        """Wait until a write lets its keys go."""
        await self._released.wait()
