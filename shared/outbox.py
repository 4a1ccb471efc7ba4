"""State changes and their events stored together, then published (DESIGN §4).

A unit of work runs in one MongoDB transaction: the service's writes plus one outbox
document holding the events they produce. After commit the events are published with
`Nats-Msg-Id` and the outbox document is deleted. `OutboxRelay` republishes anything left
behind by a crash between commit and publish; JetStream's duplicate window drops repeats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.operations import IndexModel
from ulid import ULID

from .contract.envelope import Envelope
from .db import Indexes
from .logs import log
from .messaging import EventPublisher

logger = logging.getLogger("gridcase.outbox")

OUTBOX = "outbox"


@dataclass
class UnitOfWork:
    session: AsyncClientSession
    events: list[Envelope[Any]] = field(default_factory=list)

    def emit(self, *events: Envelope[Any]) -> None:
        self.events.extend(events)


class Outbox:
    def __init__(self, client: AsyncMongoClient, db: AsyncDatabase, publisher: EventPublisher) -> None:
        self.client = client
        self.db = db
        self.collection = db[OUTBOX]
        self.publisher = publisher
        # Test hook: simulate a crash between commit and publish.
        self.crash_after_commit = False

    @staticmethod
    def declare(indexes: Indexes) -> None:
        indexes.add(OUTBOX, IndexModel([("created_at", ASCENDING)]))

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """`async with outbox.unit_of_work() as uow:` write with `session=uow.session`, `uow.emit(...)`."""
        async with self.client.start_session() as session:
            uow = UnitOfWork(session)
            async with await session.start_transaction():
                yield uow
                entry = None
                if uow.events:
                    entry = {
                        "_id": str(ULID()),
                        "created_at": datetime.now(UTC),
                        "events": [[e.type, e.id, e.to_json()] for e in uow.events],
                    }
                    await self.collection.insert_one(entry, session=session)
        if entry is not None:
            if self.crash_after_commit:
                raise SimulatedCrash("crashed after commit, before publish")
            await self._publish(entry)

    async def store(self, events: Sequence[Envelope[Any]]) -> None:
        """Events with no state change of their own (e.g. a rejection notice)."""
        async with self.unit_of_work() as uow:
            uow.emit(*events)

    async def _publish(self, entry: dict[str, Any]) -> None:
        try:
            await self.publisher.publish_raw([(s, i, b) for s, i, b in entry["events"]])
        except Exception as exc:  # the relay will retry; the state change is safe
            log(logger, logging.WARNING, "publish deferred to relay", outbox=entry["_id"], error=type(exc).__name__)
            return
        await self.collection.delete_one({"_id": entry["_id"]})

    async def relay_once(self, *, older_than: timedelta = timedelta(seconds=3), limit: int = 200) -> int:
        cutoff = datetime.now(UTC) - older_than
        entries = await self.collection.find({"created_at": {"$lte": cutoff}}).sort("created_at", 1).limit(limit).to_list()
        for entry in entries:
            await self._publish(entry)
        if entries:
            log(logger, logging.INFO, "relayed unpublished events", entries=len(entries))
        return len(entries)

    async def relay_forever(self, interval: float) -> None:
        while True:
            try:
                while await self.relay_once() > 0:
                    pass
            except Exception as exc:
                log(logger, logging.WARNING, "outbox relay failed", error=type(exc).__name__)
            await asyncio.sleep(interval)


class SimulatedCrash(RuntimeError):
    pass
