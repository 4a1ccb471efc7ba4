"""Durable timers: a due time stored on the aggregate itself, polled through an index.

Each aggregate document carries `wake_at` (the earliest deadline it cares about, or null).
`DuePoller` finds the due ones and hands them to the service, which decides with its domain
rules and saves with a version guard — so a firing survives restarts, fires once even with
several replicas, and a stale firing (the case moved on) changes nothing.

While a backlog is worked off, the poller reads it a slice at a time (`DueSlice`): the
embedded database reads every match of a query before it sorts and limits, so "everything
due, earliest 1,000" over 100,000 due documents costs seconds, a slice of about a batch
milliseconds. With `overlap=N` up to N batches are in hand: the next slice is read and
decided while the last ones are being written, so the database is not left idle between them.
Batches in hand stay due until written, so while any are, a poll reads on from the newest due
time in hand rather than everything due again (re-reading them was a sixth of the database's
work in a burst of escalations); everything due is read once nothing is in hand, and at least
every `FULL_POLL_S`, so a document left behind below (a failed write) is still picked up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
MIN_SPAN = timedelta(milliseconds=10)
MAX_SPAN = timedelta(seconds=60)
FULL_POLL_S = 10.0  # with batches in hand, read everything due at least this often


@dataclass
class DueSlice:
    """Where a poller is in a backlog of due documents: the next slice starts at `low` and
    spans `span` (halved when a slice fills a batch, doubled when it holds less). None of it
    while caught up: then a poll asks for everything due, which also picks up a document
    left behind below the slices (one whose write failed)."""

    low: datetime | None = None
    span: timedelta = MIN_SPAN

    def query(self, field: str, now: datetime) -> tuple[dict[str, Any], datetime]:
        if self.low is None:
            return {field: {"$lte": now}}, now
        high = min(now, self.low + self.span)
        return {field: {"$gte": self.low, "$lte": high}}, high

    def advance(self, first: datetime | None, last: datetime | None, full: bool, high: datetime, now: datetime) -> None:
        if full and last is not None:
            # more may be due at or after `last`: the handed-over ones have moved on by then
            if self.low is None and first is not None:
                self.span = max(last - first, MIN_SPAN)
            elif self.low is not None:
                self.span = max(self.span / 2, MIN_SPAN)
            self.low = last
        elif self.low is None or high >= now:
            self.low = None
        else:
            self.low, self.span = high, min(self.span * 2, MAX_SPAN)


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
        overlap: int = 1,
    ) -> None:
        self.collection = collection
        self.on_due = on_due
        self.interval = interval
        self.batch = batch
        self.field = field
        # one replica polls at a time; another takes over within `lease_ttl` if it dies
        self.lease = Lease(collection.database, f"timers:{collection.name}", ttl=lease_ttl)
        self._last_ids: set[Any] = set()
        self.slice = DueSlice()
        # `overlap` > 1: the next batch is read and decided while the database writes the last
        # (a backlog then keeps the database busy). Only for an `on_due` that is safe to run
        # for disjoint documents at once; a document in hand is not handed over again.
        self.overlap = overlap
        self._in_hand: set[Any] = set()
        self._handing: set[asyncio.Task[None]] = set()
        self._hand_high: datetime | None = None  # the newest due time handed over while any is in hand
        self._full_poll_at = float("-inf")  # monotonic time of the last read of everything due

    async def poll_once(self, now: datetime | None = None) -> int:
        """Hand the due documents to `on_due`; how many were new since the last poll (a
        document that stays due — held by a lock, or left for a retry — counts once)."""
        now = now or datetime.now(UTC)
        self._read_on_past_hand(now)
        if self.slice.low is None:
            self._full_poll_at = time.monotonic()
        query, high = self.slice.query(self.field, now)
        # a batch that finishes while this query runs may be read here as it was before: still
        # due. So what was in hand when the query started is left alone too.
        was_in_hand = set(self._in_hand)
        # the whole batch in one reply (a find's first reply holds 101 documents unless told)
        docs = await self.collection.find(query, batch_size=self.batch).sort(self.field, ASCENDING).limit(self.batch).to_list()
        first, last = (_utc(docs[0].get(self.field)), _utc(docs[-1].get(self.field))) if docs else (None, None)
        self.slice.advance(first, last, len(docs) >= self.batch, high, now)
        ids = {d["_id"] for d in docs}
        handed = ids - was_in_hand - self._in_hand
        fresh, self._last_ids = len(handed - self._last_ids), ids
        docs = [d for d in docs if d["_id"] in handed]
        if not docs:
            return fresh
        if self.overlap <= 1:
            await self.on_due(docs, now)
            return fresh
        while len(self._handing) >= self.overlap:
            await asyncio.wait(self._handing, return_when=asyncio.FIRST_COMPLETED)
        self._in_hand |= handed  # now, not when the task first runs: the next query starts first
        if (newest := _utc(docs[-1].get(self.field))) is not None:
            self._hand_high = newest if self._hand_high is None else max(self._hand_high, newest)
        task = asyncio.get_running_loop().create_task(self._hand_over(docs, handed, now))
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)
        return fresh

    async def _hand_over(self, docs: list[dict[str, Any]], ids: set[Any], now: datetime) -> None:
        try:
            await self.on_due(docs, now)
        except Exception as exc:  # the documents stay due: picked up again by a later poll
            log(logger, logging.WARNING, "due documents not handled", error=type(exc).__name__, detail=str(exc)[:200])
        finally:
            self._in_hand -= ids
            if not self._in_hand:
                self._hand_high = None

    def _read_on_past_hand(self, now: datetime) -> None:
        """Caught up, with batches in hand: start this poll's slice at the newest due time in
        hand (those at it are filtered out as in hand), up to now."""
        if self.slice.low is not None or not self._in_hand or self._hand_high is None:
            return
        if time.monotonic() - self._full_poll_at >= FULL_POLL_S:
            return
        self.slice.low, self.slice.span = self._hand_high, max(now - self._hand_high, MIN_SPAN)

    async def settle(self) -> None:
        """Wait for the batches in hand (overlap > 1)."""
        while self._handing:
            await asyncio.gather(*list(self._handing), return_exceptions=True)

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
                if n == 0 and self._handing:
                    await asyncio.wait(self._handing, return_when=asyncio.FIRST_COMPLETED)
                elif n == 0 and self.slice.low is None:
                    await asyncio.sleep(self.interval)
                elif n < self.batch // 2:
                    await asyncio.sleep(min(BUSY_INTERVAL_S, self.interval))
        finally:  # stopping: finish the batches in hand, then hand the lease over at once
            await _quietly(self.settle(), timeout=10.0)
            await _quietly(self.lease.release())


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def _quietly(aw, timeout: float = 1.0) -> None:
    try:
        await asyncio.wait_for(aw, timeout=timeout)
    except Exception:
        pass
