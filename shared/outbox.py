"""State changes and their events stored together, then published (DESIGN §4).

A unit of work runs in one MongoDB transaction: the service's writes plus one outbox
document holding the events they produce. After commit the events are published with
`Nats-Msg-Id`; published documents are deleted in batches a moment later (one `delete_many`
for many units of work). The relay republishes anything left behind by a crash between
commit and publish (or before the delete); JetStream's duplicate window drops repeats.

Outbox `_id`s are ULIDs, so "older than" is an `_id` range: no secondary index to maintain
on every unit of work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import groupby
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.operations import InsertOne
from ulid import ULID

from .contract.envelope import Envelope
from .errors import Conflict
from .logs import log
from .messaging import EventPublisher

logger = logging.getLogger("gridcase.outbox")

OUTBOX = "outbox"
PUBLISHING = 4  # units of work publishing in the background at once, at most
# Published entries are deleted this long after the first of them, all in one statement. Each
# statement holds the (one-threaded, embedded) database a few ms, in front of the report →
# assigned path; an entry left a little longer costs nothing (the relay takes only those
# older than 3 s, and a repeat is dropped by JetStream's duplicate window).
SWEEP_PAUSE_S = 0.5
# A unit of work with more writes than this sends them per collection (`insert_many` and
# collection `bulk_write`s) rather than as one client `bulkWrite`: the embedded database spends
# about twice the time per document on a client `bulkWrite` (measured: 0.54 against 0.31 ms a
# document for 500 inserts), which outweighs the round trips saved once a batch is large.
ONE_STATEMENT_MAX = 32


@dataclass
class UnitOfWork:
    session: AsyncClientSession
    events: list[Envelope[Any]] = field(default_factory=list)
    writes: list[Any] = field(default_factory=list)
    guarded: list[int] = field(default_factory=list)  # indexes in `writes` of guarded writes
    must_match: int = 0

    def emit(self, *events: Envelope[Any]) -> None:
        self.events.extend(events)

    def write(self, models: Iterable[Any], *, matched: int = 0) -> None:
        """Writes (pymongo write models with a `namespace`) sent together with the outbox entry
        in one `client.bulk_write` at commit: a unit of work is then one statement and the
        commit, not one per collection plus the outbox's (each statement is a round trip the
        report → assigned path waits for). Over `ONE_STATEMENT_MAX` writes they go per
        collection instead (see there). `matched`: how many documents the guarded updates and
        replacements among them must match, or the unit of work fails with `Conflict`."""
        start = len(self.writes)
        self.writes.extend(models)
        if matched:
            self.guarded.extend(range(start, len(self.writes)))
            self.must_match += matched

    async def _send(self, client: AsyncMongoClient, outbox: str, entry: dict[str, Any] | None) -> None:
        models = self.writes + ([InsertOne(entry, namespace=outbox)] if entry else [])
        if len(models) > ONE_STATEMENT_MAX:
            matched = await self._send_per_collection(client, models)
        else:
            # per-write results only when a guard is to be checked (they make the reply longer)
            result = await client.bulk_write(models, session=self.session, ordered=True, verbose_results=bool(self.guarded))
            updates = result.update_results if self.guarded else {}
            matched = sum(updates[i].matched_count for i in self.guarded if i in updates)
        if matched != self.must_match:
            raise Conflict()

    async def _send_per_collection(self, client: AsyncMongoClient, models: list[Any]) -> int:
        """The writes in order, one statement for each run of the same collection and kind
        (plain inserts; guarded writes; other writes): the matched count of the guarded ones."""
        guarded, matched = set(self.guarded), 0
        runs = groupby(enumerate(models), key=lambda im: _run_key(im[1], im[0] in guarded))
        for (ns, kind), run in runs:
            run_models = [m for _, m in run]
            db, _, coll = ns.partition(".")
            collection = client[db][coll]
            if kind == "insert":
                await collection.insert_many([m._doc for m in run_models], ordered=True, session=self.session)
            else:  # a collection's bulk_write takes the same models (it ignores their namespace)
                result = await collection.bulk_write(run_models, ordered=True, session=self.session)
                if kind == "guarded":
                    matched += result.matched_count
        return matched


def _run_key(model: Any, guarded: bool) -> tuple[str, str]:
    # pymongo's write models keep their namespace (and an insert its document) in slots with no
    # public accessor; both have been there since client bulk writes came (4.9)
    kind = "guarded" if guarded else "insert" if isinstance(model, InsertOne) else "other"
    return model._namespace, kind


class Outbox:
    def __init__(self, client: AsyncMongoClient, db: AsyncDatabase, publisher: EventPublisher) -> None:
        self.client = client
        self.db = db
        self.collection = db[OUTBOX]
        self.publisher = publisher
        # Test hook: simulate a crash between commit and publish.
        self.crash_after_commit = False
        self._published: list[str] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def unit_of_work(self, *, publish_later: bool = False) -> AsyncIterator[UnitOfWork]:
        """`async with outbox.unit_of_work() as uow:` write with `session=uow.session` (or queue
        writes with `uow.write(...)`), `uow.emit(...)`.

        `publish_later`: return once committed and publish in the background (at most
        `PUBLISHING` units of work at a time), so a pipeline's next write overlaps this one's
        publishing. Safe because the events are in the outbox: a crash before they are out
        leaves them to the relay."""
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
                if uow.writes:
                    await uow._send(self.client, self.collection.full_name, entry)
                elif entry is not None:
                    await self.collection.insert_one(entry, session=session)
        if entry is not None:
            if self.crash_after_commit:
                raise SimulatedCrash("crashed after commit, before publish")
            if not publish_later:
                await self._publish(entry)
                return
            while len(self._publishing) >= PUBLISHING:
                await asyncio.wait(self._publishing, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.get_running_loop().create_task(self._publish(entry))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def drain(self) -> None:
        """Let background publishing finish (shutdown, before the connection closes)."""
        if self._publishing:
            await asyncio.gather(*list(self._publishing), return_exceptions=True)

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
        self._published.append(entry["_id"])
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self, pause: float = SWEEP_PAUSE_S) -> None:
        """Delete published entries, many per statement, until none are waiting."""
        while self._published:
            await asyncio.sleep(pause)  # let more units of work finish meanwhile
            await self.flush_published()

    async def flush_published(self) -> None:
        ids, self._published = self._published, []
        if not ids:
            return
        try:
            await self.collection.delete_many({"_id": {"$in": ids}})
        except Exception as exc:  # left for the relay: it republishes (deduplicated) and deletes
            log(logger, logging.WARNING, "outbox cleanup deferred", entries=len(ids), error=type(exc).__name__)

    async def relay_once(self, *, older_than: timedelta = timedelta(seconds=3), limit: int = 200) -> int:
        # a ULID starts with its millisecond timestamp: ids below this bound are older than the cutoff
        bound = str(ULID.from_datetime(datetime.now(UTC) - older_than))[:10]
        entries = await self.collection.find({"_id": {"$lt": bound}}).sort("_id", 1).limit(limit).to_list()
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
