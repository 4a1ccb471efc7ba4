"""Per-key asyncio locks and claims: serialise work on one aggregate inside a process.

Version-guarded writes already keep replicas correct; this keeps one process's concurrent
handlers (a fetched batch runs concurrently) from racing each other on a hot aggregate,
e.g. a flood of duplicate reports merged into one original case.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager


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
    batches that share nothing overlap.
    """

    def __init__(self) -> None:
        self._held: set[Hashable] = set()
        self._released = asyncio.Event()

    def split(self, keys: Sequence[Iterable[Hashable]]) -> tuple[list[int], list[int]]:
        """Positions free to write now, and those to write later. An item waits if one of its
        keys is held, or is a key of an earlier waiting item: each key's items keep their order."""
        blocked = set(self._held)
        now: list[int] = []
        later: list[int] = []
        for i, item_keys in enumerate(keys):
            ks = set(item_keys)
            if ks & blocked:
                later.append(i)
                blocked |= ks
            else:
                now.append(i)
        return now, later

    @asynccontextmanager
    async def hold(self, keys: Iterable[Hashable]) -> AsyncIterator[None]:
        """Hold `keys` (free, as `split` just said: no await between) for the write."""
        mine = set(keys)
        self._held |= mine
        try:
            yield
        finally:
            self._held -= mine
            self._released.set()
            self._released = asyncio.Event()

    async def released(self) -> None:
        """Wait until a write lets its keys go."""
        await self._released.wait()

    @property
    def held(self) -> frozenset[Hashable]:
        return frozenset(self._held)
