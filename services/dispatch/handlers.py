"""Dispatch handlers: load → decide with the domain → save with events, in one unit of work.

`Dispatch` holds the in-memory registry (loaded at start, updated on register and after every
stored change) and the metrics. Each operation runs in `_atomically`, which retries a lost
version-guarded write (or a transient transaction error) from a fresh load, so two volunteers
taking the last place at once end with exactly one winner and a clear refusal for the other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Histogram

from shared.app import Runtime
from shared.contract import subjects
from shared.contract.case import CaseAssigned, CaseClosed, CaseReceived
from shared.contract.common import Handling
from shared.contract.dispatch import (
    ClaimTask,
    CompleteTask,
    RegisterVolunteer,
    RespondToOffer,
    VolunteerRegistered,
)
from shared.contract.envelope import new_id
from shared.errors import Conflict, DomainError, NotFound, lost_race
from shared.logs import log
from shared.outbox import UnitOfWork

from .domain import Matcher, Outcome, Registry, Task, VolunteerState
from .store import DispatchStore, volunteer_state

logger = logging.getLogger("gridcase.dispatch")

ATTEMPTS = 12
WAIT_FOR_RECEIVED = 3  # deliveries of `assigned` that wait for `received` before using defaults
OFFER_OUTCOMES = {"accepted", "declined", "expired"}


class NeedsPending(Exception):
    """`assigned` came before `received`: retried with back-off (transient)."""


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass
class Work:
    """What one attempt did: the reply, and per task its outcome (for metrics and memory)."""

    reply: dict[str, Any] = field(default_factory=lambda: {"ok": True})
    outcomes: list[tuple[Task, Outcome]] = field(default_factory=list)


class Dispatch:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.store = DispatchStore(rt.db)
        self.registry = Registry()
        self.matcher = Matcher(self.registry)
        r = rt.registry
        self.m_opened = Counter("gridcase_dispatch_tasks_opened", "Dispatch tasks opened", ["community"], registry=r)
        self.m_offers = Counter(
            "gridcase_dispatch_offers", "Offers (and claims) by outcome", ["community", "outcome"], registry=r
        )
        self.m_unfilled = Counter("gridcase_dispatch_unfilled", "Tasks nobody took", ["community"], registry=r)
        self.m_cancelled = Counter("gridcase_dispatch_cancelled", "Tasks cancelled", ["community"], registry=r)
        self.m_accept = Histogram(
            "gridcase_dispatch_time_to_accept_seconds",
            "From offer (or task opening, for claims) to acceptance",
            ["community"],
            buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 21600, 86400),
            registry=r,
        )
        self.m_hours = Counter(
            "gridcase_dispatch_volunteer_hours", "Volunteer hours credited", ["community"], registry=r
        )

    @property
    def ttl(self):
        return self.rt.policy.dispatch.offer_ttl

    @property
    def max_offers(self) -> int:
        return self.rt.policy.dispatch.max_offers

    # ---- start ----
    async def load(self) -> None:
        states = await self.store.load_registry(now_utc())
        self.registry.reset(states)
        log(logger, logging.INFO, "volunteer registry loaded", volunteers=len(states))

    async def listen_for_volunteers(self) -> None:
        """Every replica hears `volunteer_registered` (a core subscription, not the shared
        durable), so a volunteer registered through another replica is matched at once, not
        only after the next refresh."""

        async def on_registered(msg: Any) -> None:
            try:
                doc = await self.store.get_volunteer(json.loads(msg.data)["data"]["volunteer"])
            except Exception as exc:  # the refresh converges anyway
                log(logger, logging.WARNING, "volunteer reload failed", error=type(exc).__name__)
                return
            if doc is not None:
                self.registry.upsert(volunteer_state(doc))  # a known one keeps this replica's counters

        await self.rt.messaging.nc.subscribe(subjects.dispatch_event("volunteer_registered"), cb=on_registered)

    async def refresh_forever(self, interval: float = 60.0) -> None:
        """Converge the in-memory registry with the database (other replicas' changes)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load()
            except Exception as exc:
                log(logger, logging.WARNING, "registry refresh failed", error=type(exc).__name__)

    # ---- the transaction runner ----
    async def _atomically(
        self, attempt: Callable[[UnitOfWork, Work], Awaitable[None]], *, command_id: str | None = None
    ) -> dict[str, Any]:
        if command_id is not None:
            earlier = await self.rt.commands.replay(command_id)
            if earlier is not None:
                return earlier
        for n in range(ATTEMPTS):
            work = Work()
            try:
                async with self.rt.outbox.unit_of_work() as uow:
                    await attempt(uow, work)
                    if command_id is not None:
                        await self.rt.commands.record(command_id, work.reply, session=uow.session)
            except DomainError as exc:
                self._undo(work)
                if command_id is not None:
                    await self.rt.commands.record(command_id, exc.reply())
                raise
            except Exception as exc:
                self._undo(work)
                if not lost_race(exc) or n == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0.005, 0.02) * (n + 1))
                continue
            self._committed(work)
            return work.reply
        raise Conflict("too many concurrent changes")  # pragma: no cover

    def _decided(self, work: Work, task: Task, outcome: Outcome) -> None:
        """Mirror the counters at once (before any await) so concurrent picks see them."""
        self.registry.apply(outcome.effects)
        work.outcomes.append((task, outcome))

    def _undo(self, work: Work) -> None:
        for _, outcome in work.outcomes:
            self.registry.apply(outcome.effects, sign=-1)

    def _committed(self, work: Work) -> None:
        for task, outcome in work.outcomes:
            self.registry.credit(outcome.effects)
            community = task.community or "unknown"
            for name, data in outcome.events:
                if name == "task_opened":
                    self.m_opened.labels(community).inc()
                elif name == "accepted":
                    claimed = any(o.claim and o.volunteer == data.volunteer for o in task.offers)  # type: ignore[attr-defined]
                    self.m_offers.labels(community, "claimed" if claimed else "accepted").inc()
                elif name in OFFER_OUTCOMES:
                    self.m_offers.labels(community, name).inc()
                elif name == "unfilled":
                    self.m_unfilled.labels(community).inc()
                elif name == "cancelled":
                    self.m_cancelled.labels(community).inc()
                elif name == "completed":
                    self.m_hours.labels(community).inc(data.hours)  # type: ignore[attr-defined]
            for delay in outcome.accept_delays:
                self.m_accept.labels(community).observe(delay)

    async def _save(self, uow: UnitOfWork, work: Work, task: Task, outcome: Outcome) -> None:
        self._decided(work, task, outcome)
        await self.store.save_task(task, uow.session)
        await self.store.apply_effects(outcome.effects, uow.session)
        for name, data in outcome.events:
            uow.emit(self.rt.event(subjects.dispatch_event(name), data, subject=task.case_id))

    async def _task(self, task_id: str, uow: UnitOfWork) -> Task:
        task = await self.store.get_task(task_id, uow.session)
        if task is None:
            raise NotFound(f"task {task_id}")
        return task

    # ---- case events ----
    async def on_received(self, ev: CaseReceived) -> None:
        async def attempt(uow: UnitOfWork, work: Work) -> None:
            case = await self.store.get_case(ev.case_id, uow.session)
            if case.received:
                return
            case.received = True
            case.category = ev.category.value
            case.needs = ev.needs.model_dump(mode="json") if ev.needs is not None else None
            case.languages = sorted({p.language.value for p in ev.parties if p.language is not None})
            if case.assigned_version == 0:
                case.community, case.grid = ev.scope.community, ev.scope.grid
            await self.store.save_case(case, uow.session)

        await self._atomically(attempt)

    async def on_assigned(self, ev: CaseAssigned, delivered: int = 1) -> None:
        async def attempt(uow: UnitOfWork, work: Work) -> None:
            now = now_utc()
            case = await self.store.get_case(ev.case_id, uow.session)
            if ev.version <= case.assigned_version or ev.version < case.closed_version:
                return  # stale or repeated
            case.assigned_version = ev.version
            case.category = case.category or ev.category.value
            case.community, case.grid = ev.scope.community, ev.scope.grid
            dispatch = ev.handling is Handling.dispatch
            # a newer assignment elsewhere (or not by dispatch) supersedes open tasks
            for level, ref in case.tasks.items():
                if level == ev.level.value and dispatch:
                    continue
                task = await self.store.get_task(ref["task_id"], uow.session)
                if task is not None and task.active:
                    await self._save(uow, work, task, task.cancel(now, "superseded"))
            if dispatch:
                ref = case.tasks.get(ev.level.value)
                existing = await self.store.get_task(ref["task_id"], uow.session) if ref else None
                if existing is not None and (existing.active or ev.reason.value != "reopened"):
                    ref["assigned_version"] = ev.version  # same task carries on
                else:
                    if not case.received and delivered < WAIT_FOR_RECEIVED:
                        raise NeedsPending(f"case {ev.case_id}: waiting for received")
                    task, outcome = Task.open(
                        task_id=f"T-{new_id()}",
                        case_id=ev.case_id,
                        level=ev.level.value,
                        category=ev.category.value,
                        community=ev.scope.community,
                        grid=ev.scope.grid,
                        needs=case.needs,
                        languages=case.languages,
                        now=now,
                        max_offers=self.max_offers,
                    )
                    outcome.extend(task.offer_next(self.matcher, now, self.ttl))
                    await self._save(uow, work, task, outcome)
                    case.tasks[ev.level.value] = {"task_id": task.id, "assigned_version": ev.version}
            await self.store.save_case(case, uow.session)

        await self._atomically(attempt)

    async def on_closed(self, ev: CaseClosed) -> None:
        async def attempt(uow: UnitOfWork, work: Work) -> None:
            now = now_utc()
            case = await self.store.get_case(ev.case_id, uow.session)
            if ev.version <= case.closed_version:
                return
            case.closed_version = ev.version
            for ref in case.tasks.values():
                task = await self.store.get_task(ref["task_id"], uow.session)
                if task is not None and task.active:
                    await self._save(uow, work, task, task.cancel(now, "case_closed"))
            await self.store.save_case(case, uow.session)

        await self._atomically(attempt)

    # ---- timers ----
    async def on_due(self, docs: list[dict[str, Any]], now: datetime) -> None:
        results = await asyncio.gather(*(self._expire(d["_id"]) for d in docs), return_exceptions=True)
        for doc, result in zip(docs, results, strict=True):
            if isinstance(result, Exception):
                log(logger, logging.WARNING, "offer expiry failed", task=doc["_id"], error=type(result).__name__)

    async def _expire(self, task_id: str) -> None:
        async def attempt(uow: UnitOfWork, work: Work) -> None:
            now = now_utc()
            task = await self.store.get_task(task_id, uow.session)
            if task is None:
                return
            wake = task.wake_at
            outcome = task.expire(now, self.matcher, self.ttl)
            if outcome.events or wake != task.wake_at:
                await self._save(uow, work, task, outcome)

        await self._atomically(attempt)

    # ---- commands ----
    async def register_volunteer(self, command_id: str, cmd: RegisterVolunteer) -> dict[str, Any]:
        v = cmd.volunteer

        async def attempt(uow: UnitOfWork, work: Work) -> None:
            now = now_utc()
            await self.store.upsert_volunteer(v, now, uow.session)
            data = VolunteerRegistered(
                volunteer=v.id,
                community=v.community,
                grid=v.grid,
                skills=v.skills,
                languages=v.languages,
                kind=v.kind,
                max_tasks=v.max_tasks,
                active=v.active,
                at=now,
            )
            uow.emit(self.rt.event(subjects.dispatch_event("volunteer_registered"), data))
            work.reply = {"ok": True, "volunteer": v.id, "active": v.active}

        reply = await self._atomically(attempt, command_id=command_id)
        doc = await self.store.get_volunteer(v.id)
        if doc is not None:
            self.registry.upsert(volunteer_state(doc))  # counters and hours of a known one are kept
        return reply

    async def respond(self, command_id: str, cmd: RespondToOffer) -> dict[str, Any]:
        accept = cmd.answer.value == "accept"

        async def attempt(uow: UnitOfWork, work: Work) -> None:
            now = now_utc()
            task = await self._task(cmd.task_id, uow)
            if accept:
                await self._check_room(cmd.volunteer, uow)
            outcome = task.respond(cmd.volunteer, accept, now, self.matcher, self.ttl)
            await self._save(uow, work, task, outcome)
            work.reply = self._reply(task)

        return await self._atomically(attempt, command_id=command_id)

    async def claim(self, command_id: str, cmd: ClaimTask) -> dict[str, Any]:
        async def attempt(uow: UnitOfWork, work: Work) -> None:
            now = now_utc()
            task = await self._task(cmd.task_id, uow)
            doc = await self.store.get_volunteer(cmd.volunteer, uow.session)
            volunteer = volunteer_state(doc) if doc else None  # the database is authoritative here
            outcome = task.claim(volunteer, now, self.matcher)
            await self._save(uow, work, task, outcome)
            work.reply = self._reply(task)

        return await self._atomically(attempt, command_id=command_id)

    async def complete(self, command_id: str, cmd: CompleteTask) -> dict[str, Any]:
        async def attempt(uow: UnitOfWork, work: Work) -> None:
            now = now_utc()
            task = await self._task(cmd.task_id, uow)
            outcome = task.complete(cmd.volunteer, cmd.hours, now)
            await self._save(uow, work, task, outcome)
            work.reply = self._reply(task)

        return await self._atomically(attempt, command_id=command_id)

    async def _check_room(self, volunteer_id: str, uow: UnitOfWork) -> None:
        """Accepting turns an offer into a task: the open tasks must stay within `max_tasks`."""
        doc = await self.store.get_volunteer(volunteer_id, uow.session)
        if doc is None:
            raise DomainError("unknown_volunteer", "no such volunteer is registered")
        st: VolunteerState = volunteer_state(doc)
        if st.tasks + 1 > st.max_tasks:
            raise DomainError("at_capacity", "this volunteer already has as many tasks as allowed")

    @staticmethod
    def _reply(task: Task) -> dict[str, Any]:
        return {
            "ok": True,
            "task_id": task.id,
            "case_id": task.case_id,
            "state": task.state.value,
            "version": task.seq,
            "places_left": max(0, task.places_left),
        }
