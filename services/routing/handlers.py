"""Routing's handlers: load → decide with the domain → save version-guarded with the events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.app import Runtime
from shared.batching import Coalescer, one_by_one
from shared.contract import subjects
from shared.contract.case import CaseReceived, case_reply
from shared.contract.directory import Directory, DirectoryChanged
from shared.contract.envelope import Envelope
from shared.errors import BadMessage, Conflict, DomainError, lost_race, only_duplicates
from shared.locks import KeyedLocks
from shared.logs import log

from . import domain
from .directory import DirectoryIndex, counts, merge
from .domain import Case, Ctx, Workload
from .metrics import RoutingMetrics
from .store import Store

logger = logging.getLogger("gridcase.routing")

RETRIES = 8


@dataclass(frozen=True)
class Outcome:
    """What another service reports on a case, and the domain rule that applies it."""

    case_id: str
    event_id: str
    rule: Callable[[Case, Ctx], list]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Routing:
    """The service's state in one process: the directory index, the workload, the metrics."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.store = Store(rt.db)
        self.index = DirectoryIndex.build(None)
        self.workload = Workload()
        self.metrics = RoutingMetrics(rt.registry)
        self._blocked: dict[str, datetime] = {}
        self.received = Coalescer(self._flush_received, max_batch=500, max_delay=0.002)
        self.outcomes: Coalescer[Outcome, None] = Coalescer(self._flush_outcomes, max_batch=500, max_delay=0.002)
        self.case_locks = KeyedLocks()
        self.directory_nudge = asyncio.Event()

    def ctx(self, now: datetime | None = None) -> Ctx:
        # whole milliseconds, as stored (BSON): a deadline in an event is exactly the stored one,
        # so a timer never fires a fraction of a millisecond before the deadline it announced
        now = now or utcnow()
        return Ctx(self.rt.policy, self.index, self.workload, now.replace(microsecond=now.microsecond // 1000 * 1000))

    # ---- start -------------------------------------------------------------------------
    async def start(self) -> None:
        directory, version = await self.store.load_directory()
        self.index = DirectoryIndex.build(directory, version)
        self.workload.counts.clear()
        self.metrics.reset()
        n = 0
        async for doc in self.store.active_cases():
            n += 1
            if doc.get("assignee"):
                self.workload.counts[doc["assignee"]] = self.workload.counts.get(doc["assignee"], 0) + 1
            self.metrics.account_doc(doc, +1)
        log(logger, logging.INFO, "routing state loaded", directory_version=version, open_cases=n)

    async def listen_for_directory(self) -> None:
        """Every replica hears `directory.changed` (a core subscription, not the shared durable)."""

        async def nudge(_msg: Any) -> None:
            self.directory_nudge.set()

        await self.rt.messaging.nc.subscribe(subjects.DIRECTORY_CHANGED, cb=nudge)

    async def watch_directory(self, interval: float = 5.0) -> None:
        """Another replica may load the directory: pick up a newer version at once when
        nudged, and in any case within `interval`."""
        while True:
            try:
                await asyncio.wait_for(self.directory_nudge.wait(), timeout=interval)
            except TimeoutError:
                pass
            self.directory_nudge.clear()
            try:
                if await self.store.directory_version() != self.index.version:
                    directory, version = await self.store.load_directory()
                    self.index = DirectoryIndex.build(directory, version)
            except Exception as exc:
                log(logger, logging.WARNING, "directory refresh failed", error=type(exc).__name__)

    # ---- helpers -----------------------------------------------------------------------
    def envelopes(self, case_id: str, events: Sequence[tuple[str, BaseModel]]) -> list[Envelope[Any]]:
        return [self.rt.event(subjects.case_event(name), data, subject=case_id) for name, data in events]

    def committed(self, before: Case | None, after: Case | None, events: Sequence[tuple[str, BaseModel]]) -> None:
        self.workload.move(domain.workload_key(before), domain.workload_key(after))
        self.metrics.account(before, -1)
        self.metrics.account(after, +1)
        self.metrics.observe(events)

    # ---- directory ---------------------------------------------------------------------
    async def load_directory(self, body: Envelope[Directory]) -> dict[str, Any]:
        replay = await self.rt.commands.replay(body.id)
        if replay is not None:
            return replay
        for _ in range(RETRIES):
            current, version = await self.store.load_directory()
            try:
                merged = merge(current, body.data)
            except DomainError as exc:
                await self.rt.commands.record(body.id, exc.reply())
                raise
            index = DirectoryIndex.build(merged, version + 1)
            reply = {"ok": True, "counts": counts(merged), "version": version + 1}
            changed = DirectoryChanged(
                version=version + 1,
                districts=merged.districts,
                streets=merged.streets,
                communities=merged.communities,
                grids=merged.grids,
                buildings=merged.buildings,
                staff=index.announced_staff(),
                counts=counts(merged),
                at=utcnow(),
            )
            try:
                async with self.rt.outbox.unit_of_work() as uow:
                    if not await self.store.save_directory(merged, version + 1, version, uow.session):
                        raise Conflict()
                    uow.emit(self.rt.event(subjects.DIRECTORY_CHANGED, changed))
                    await self.rt.commands.record(body.id, reply, session=uow.session)
            except (Conflict, DuplicateKeyError):
                continue
            self.index = index
            log(logger, logging.INFO, "directory loaded", version=version + 1, **counts(merged))
            return reply
        raise DomainError("conflict", "the directory changed concurrently; try again")

    # ---- case.received (hot path) ------------------------------------------------------
    async def on_received(self, body: Envelope[CaseReceived]) -> None:
        if body.data.duplicate_of:
            await self._merge_duplicate(body.data)
        else:
            await self.received.submit(body.data)

    async def _flush_received(self, items: Sequence[CaseReceived]) -> list[Any]:
        ctx = self.ctx()
        opened: list[tuple[Case, list]] = []
        ids: set[str] = set()
        for data in items:
            if data.case_id in ids:
                continue
            ids.add(data.case_id)
            case, events = domain.open_case(data, self.index.locate(data.location), ctx)
            self.workload.move(None, domain.workload_key(case))  # so the next pick in this batch sees it
            opened.append((case, events))
        try:
            async with self.rt.outbox.unit_of_work() as uow:
                self.store.insert([c for c, _ in opened], uow)
                for case, events in opened:
                    uow.emit(*self.envelopes(case.id, events))
        except PyMongoError as exc:
            if not only_duplicates(exc) and not lost_race(exc):
                raise
            # some were already opened (a redelivery), or one is held by a transaction a crashed
            # process left open: undo and take them one at a time, so only that one waits
            for case, _ in opened:
                self.workload.move(domain.workload_key(case), None)
            return await one_by_one(items, self._open_one)
        for case, events in opened:
            self.workload.move(domain.workload_key(case), None)
            self.committed(None, case, events)
        return [None] * len(items)

    async def _open_one(self, data: CaseReceived) -> None:
        if await self.store.get(data.case_id) is not None:
            return  # already opened: a repeated `received` changes nothing
        case, events = domain.open_case(data, self.index.locate(data.location), self.ctx())
        try:
            async with self.rt.outbox.unit_of_work() as uow:
                self.store.insert([case], uow)
                uow.emit(*self.envelopes(case.id, events))
        except PyMongoError as exc:
            if only_duplicates(exc):
                return
            raise
        self.committed(None, case, events)

    async def _merge_duplicate(self, data: CaseReceived) -> None:
        # a burst of duplicates all note the same original: take them one at a time here
        async with self.case_locks.hold(data.duplicate_of or ""):
            await self._merge_duplicate_locked(data)

    async def _merge_duplicate_locked(self, data: CaseReceived) -> None:
        for _ in range(RETRIES):
            if await self.store.get(data.case_id) is not None:
                return
            original = await self.store.get(data.duplicate_of or "")
            if original is None:
                # the original's `received` may still be on its way; retried with back-off
                raise RuntimeError("original case not known yet")
            ctx = self.ctx()
            case, events = domain.open_case(data, self.index.locate(data.location), ctx)
            noted = original.copy()
            old_rev = noted.rev
            note_events = domain.note_duplicate(noted, case.id, ctx)
            try:
                async with self.rt.outbox.unit_of_work() as uow:
                    self.store.insert([case], uow)
                    self.store.replace(noted, old_rev, uow)
                    uow.emit(*self.envelopes(case.id, events), *self.envelopes(noted.id, note_events))
            except (Conflict, PyMongoError) as exc:
                if only_duplicates(exc):
                    return
                if not lost_race(exc):
                    raise
                continue
            self.committed(None, case, events)
            self.committed(original, noted, note_events)
            return
        raise RuntimeError("original case kept changing")

    # ---- commands ----------------------------------------------------------------------
    async def command(self, verb: str, body: Envelope[Any]) -> dict[str, Any]:
        replay = await self.rt.commands.replay(body.id)
        if replay is not None:
            return replay
        cmd = body.data
        for _ in range(RETRIES):
            before = await self.store.get(cmd.case_id)
            if before is None:
                return await self._refuse(body.id, DomainError("not_found", f"case {cmd.case_id} not found"))
            case = before.copy()
            try:
                events = domain.command(case, verb, cmd, self.ctx())
            except DomainError as exc:
                return await self._refuse(body.id, exc)
            reply = case_reply(case.id, case.version, case.public_state())
            try:
                async with self.rt.outbox.unit_of_work() as uow:
                    self.store.replace(case, before.rev, uow)
                    uow.emit(*self.envelopes(case.id, events))
                    await self.rt.commands.record(body.id, reply, session=uow.session)
            except DuplicateKeyError:  # a racing replica answered this command id first
                replay = await self.rt.commands.replay(body.id)
                if replay is not None:
                    return replay
                raise
            except (Conflict, PyMongoError) as exc:
                if not lost_race(exc):
                    raise
                continue
            self.committed(before, case, events)
            return reply
        raise DomainError("conflict", "the case changed concurrently; try again")

    async def _refuse(self, command_id: str, exc: DomainError) -> dict[str, Any]:
        await self.rt.commands.record(command_id, exc.reply())
        raise exc

    # ---- outcomes from mediation and dispatch --------------------------------------------
    async def apply_external(self, case_id: str, event_id: str, rule: Callable[[Case, Ctx], list]) -> None:
        """An outcome event (mediation, dispatch): applied with the others of its burst."""
        await self.outcomes.submit(Outcome(case_id, event_id, rule))

    async def _flush_outcomes(self, items: Sequence[Outcome]) -> list[Any]:
        """One unit of work for a burst of outcomes: the cases read at once, the rules applied
        in arrival order, the cases replaced version-guarded. If a case moved on meanwhile (or a
        rule refuses), each outcome takes the one-at-a-time path, which reloads and retries."""
        try:
            changes = await self._apply_outcomes(items)
        except (Conflict, BadMessage, DomainError, PyMongoError) as exc:
            if isinstance(exc, PyMongoError) and not lost_race(exc):
                raise
            return await one_by_one(items, self._apply_one)
        for before, case, events in changes:
            self.committed(before, case, events)
        return [None] * len(items)

    async def _apply_outcomes(self, items: Sequence[Outcome]) -> list[tuple[Case, Case, list]]:
        loaded = await self.store.get_many(list(dict.fromkeys(i.case_id for i in items)))
        ctx = self.ctx()
        changes: dict[str, tuple[Case, Case, list]] = {}
        for item in items:
            if item.case_id not in loaded:
                raise BadMessage(f"unknown case {item.case_id}")
            before, case, events = changes.get(item.case_id) or (loaded[item.case_id], loaded[item.case_id].copy(), [])
            if not domain.seen(case, item.event_id):
                events = [*events, *item.rule(case, ctx)]
            changes[item.case_id] = (before, case, events)
        async with self.rt.outbox.unit_of_work() as uow:
            self.store.replace_many([(b, c) for b, c, _ in changes.values()], uow)
            for _, case, events in changes.values():
                uow.emit(*self.envelopes(case.id, events))
        return list(changes.values())

    async def _apply_one(self, item: Outcome) -> None:
        for _ in range(RETRIES):
            before = await self.store.get(item.case_id)
            if before is None:
                raise BadMessage(f"unknown case {item.case_id}")
            case = before.copy()
            if domain.seen(case, item.event_id):
                return
            events = item.rule(case, self.ctx())
            try:
                async with self.rt.outbox.unit_of_work() as uow:
                    self.store.replace(case, before.rev, uow)
                    uow.emit(*self.envelopes(case.id, events))
            except (Conflict, PyMongoError) as exc:
                if not lost_race(exc):
                    raise
                continue
            self.committed(before, case, events)
            return
        raise RuntimeError("case kept changing")

    # ---- timers ------------------------------------------------------------------------
    async def on_due(self, docs: list[dict[str, Any]], now: datetime) -> None:
        ctx = self.ctx(now)
        decided: list[tuple[Case, Case, list]] = []
        # a case held by a transaction a crashed process left open (until the database reaps
        # it, 60 s) is retried alone about once a second, so it cannot hold up the batch
        blocked = {d["_id"] for d in docs if d["_id"] in self._blocked}
        retry = [i for i in blocked if self._blocked[i] <= now]
        docs = [d for d in docs if d["_id"] not in blocked]
        for doc in docs:
            before = Case.from_doc(doc)
            case = before.copy()
            events = domain.on_timer(case, ctx)
            decided.append((before, case, events))
        for case_id in retry:
            await self._due_one(case_id)
        if not decided:
            return
        try:
            # publishing in the background lets the next poll overlap it (a backlog of due cases)
            async with self.rt.outbox.unit_of_work(publish_later=True) as uow:
                self.store.replace_many([(b, c) for b, c, _ in decided], uow)
                for _, case, events in decided:
                    if events:
                        uow.emit(*self.envelopes(case.id, events))
        except (Conflict, PyMongoError) as exc:
            if not lost_race(exc):
                raise
            # one of them moved on meanwhile (a command): decide each one again on its own
            for before, _, _ in decided:
                await self._due_one(before.id)
            return
        for before, case, events in decided:
            self.committed(before, case, events)
        lateness = [(now - b.wake_at).total_seconds() for b, _, _ in decided if b.wake_at is not None]
        self.metrics.timer_lateness(lateness)

    async def _due_one(self, case_id: str) -> None:
        self._blocked.pop(case_id, None)
        for _ in range(RETRIES):
            before = await self.store.get(case_id)
            now = utcnow()
            if before is None or before.wake_at is None or before.wake_at > now:
                return
            case = before.copy()
            events = domain.on_timer(case, self.ctx(now))
            try:
                async with self.rt.outbox.unit_of_work() as uow:
                    self.store.replace(case, before.rev, uow)
                    uow.emit(*self.envelopes(case.id, events))
            except (Conflict, PyMongoError) as exc:
                if not lost_race(exc):
                    raise
                await asyncio.sleep(0.01)
                continue
            self.committed(before, case, events)
            return
        self._blocked[case_id] = utcnow() + timedelta(seconds=1)
