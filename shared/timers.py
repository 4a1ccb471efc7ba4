"""Durable timers: a due time stored on the aggregate itself, polled through an index.

Each aggregate document carries `wake_at` (the earliest deadline it cares about, or null).
`DuePoller` finds the due ones and hands them to the service, which decides with its domain
rules and saves with a version guard — so a firing survives restarts, fires once even with
several replicas, and a stale firing (the case moved on) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.operations import IndexModel

from .lease import Lease
from .logs import log

logger = logging.getLogger("gridcase.timers")

WAKE_AT = "wake_at"
WAKE_INDEX = IndexModel([(WAKE_AT, ASCENDING)])
BUSY_INTERVAL_S = 0.02


class DuePoller:
    def __init__(
        self,
        collection: AsyncCollection,
        on_due: Callable[[list[dict[str, Any]], datetime], Awaitable[None]],
        *,
        interval: float = 0.25,
        batch: int = 500,
        field: str = WAKE_AT,
        lease_ttl: float = 5.0,
    ) -> None:
        self.collection = collection
        self.on_due = on_due
        self.interval = interval
        self.batch = batch
        self.field = field
        # one replica polls at a time; another takes over within `lease_ttl` if it dies
        self.lease = Lease(collection.database, f"timers:{collection.name}", ttl=lease_ttl)
        self._last_ids: set[Any] = set()

    async def poll_once(self, now: datetime | None = None) -> int:
        """Hand the due documents to `on_due`; how many were new since the last poll (a
        document that stays due — held by a lock, or left for a retry — counts once)."""
        now = now or datetime.now(UTC)
        docs = (
            await self.collection.find({self.field: {"$lte": now}})
            .sort(self.field, ASCENDING)
            .limit(self.batch)
            .to_list()
        )
        ids = {d["_id"] for d in docs}
        fresh, self._last_ids = len(ids - self._last_ids), ids
        if docs:
            await self.on_due(docs, now)
        return fresh

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    if not self.lease.held() and not await self.lease.acquire():
                        await asyncio.sleep(self.interval * 4)  # a standby: check the lease now and then
                        continue
                    n = await self.poll_once()
                except Exception as exc:
                    log(logger, logging.WARNING, "timer poll failed", error=type(exc).__name__, detail=str(exc)[:200])
                    n = 0
                # while timers are falling due, look again at once: a case due just after a poll
                # then waits for the current batch, not for a whole idle interval on top of it
                if n == 0:
                    await asyncio.sleep(self.interval)
                elif n < self.batch // 2:
                    await asyncio.sleep(min(BUSY_INTERVAL_S, self.interval))
        finally:  # stopping: hand the lease over at once rather than after its ttl
            await _quietly(self.lease.release())


async def _quietly(aw) -> None:
    try:
        await asyncio.wait_for(aw, timeout=1.0)
    except Exception:
        pass
