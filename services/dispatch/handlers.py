"""Dispatch handlers: load → decide with the domain → save with events, in one unit of work.

`Dispatch` holds the in-memory registry (loaded at start, updated on register and after every
stored change) and the metrics. Each operation runs in `_atomically`, which retries a lost
version-guarded write (or a transient transaction error) from a fresh load, so two volunteers
taking the last place at once end with exactly one winner and a clear refusal for the other.

Case events go through one `Coalescer`: a burst of them (all three subjects, in arrival order)
is one unit of work — one `$in` read per collection, the same `CaseRules` applied event by
event in memory, bulk writes. A batch that loses a race is taken again event by event
(`on_received` / `on_assigned` / `on_closed`, each retried by `_atomically`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Histogram

from shared.app import Runtime
from shared.batching import OFF_PATH_INTERVAL_S, Coalescer, one_by_one
from shared.contract import subjects
from shared.contract.case import CaseAssigned, CaseClosed, CaseReceived
from shared.contract.catalogue import published_as
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

from .domain import (
    CaseInfo,
    CaseRules,
    Matcher,
    NeedsPending,
    Outcome,
    Registry,
    Task,
    VolunteerState,
)
from .store import DispatchStore, volunteer_state

logger = logging.getLogger("gridcase.dispatch")

ATTEMPTS = 12
OFFER_OUTCOMES = {"accepted", "declined", "expired"}
CASE_BATCH = 500  # events per unit of work, at most
CASE_BATCH_DELAY = 0.003  # s: lets the three consumers' fetches join one batch


def now_utc() -> datetime:
    return datetime.now(UTC)


CaseEventData = CaseReceived | CaseAssigned | CaseClosed


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """One case event waiting for its batch; `delivered` matters to `assigned` only."""

    data: CaseEventData
    delivered: int = 1

    def apply(self, rules: CaseRules, case: CaseInfo, tasks: Mapping[str, Task]) -> bool:
        """The domain rule for this event; whether the case document changed."""
        if isinstance(self.data, CaseReceived):
            return rules.received(case, self.data)
        if isinstance(self.data, CaseAssigned):
            return rules.assigned(case, self.data, tasks, self.delivered)
        return rules.closed(case, self.data, tasks)


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
        # every case event of a burst (all three subjects) shares one unit of work
        self.case_events: Coalescer[CaseEvent, None] = Coalescer(
            self._flush_case_events, max_batch=CASE_BATCH, max_delay=CASE_BATCH_DELAY, min_interval=OFF_PATH_INTERVAL_S
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
        await self._write(uow, task, outcome)

    async def _write(self, uow: UnitOfWork, task: Task, outcome: Outcome) -> None:
        await self.store.save_task(task, uow.session)
        await self.store.apply_effects(outcome.effects, uow.session)
        self._emit(uow, task, outcome)

    def _emit(self, uow: UnitOfWork, task: Task, outcome: Outcome) -> None:
        for name, data in outcome.events:
            for subject, body in published_as(subjects.dispatch_event(name), data):
                uow.emit(self.rt.event(subject, body, subject=task.case_id))

    async def _task(self, task_id: str, uow: UnitOfWork) -> Task:
        task = await self.store.get_task(task_id, uow.session)
        if task is None:
            raise NotFound(f"task {task_id}")
        return task

    # ---- case events ----
    def _rules(self, work: Work, tasks: dict[str, Task]) -> CaseRules:
        """The case-event rules for one unit of work over `tasks` (the tasks loaded for it)."""

        def decided(task: Task, outcome: Outcome) -> None:
            tasks.setdefault(task.id, task)  # a task opened now is seen by later events of a batch
            self._decided(work, task, outcome)

        return CaseRules(self.matcher, self.ttl, self.max_offers, now_utc(), lambda: f"T-{new_id()}", decided)

    async def case_event(self, data: CaseEventData, delivered: int = 1) -> None:
        """Hand a case event to the current batch; returns once it is stored (or raises for it)."""
        await self.case_events.submit(CaseEvent(data, delivered))

    async def _flush_case_events(self, items: Sequence[CaseEvent]) -> list[Exception | None]:
        """A batch of case events in one unit of work; on a lost race, event by event."""
        work = Work()
        try:
            async with self.rt.outbox.unit_of_work() as uow:
                results = await self._apply_batch(uow, work, items)
        except Exception as exc:
            self._undo(work)
            if not lost_race(exc):
                raise
            log(logger, logging.INFO, "case batch lost a race: event by event", events=len(items), error=type(exc).__name__)
            return await self._one_at_a_time(items)
        self._committed(work)
        return results

    async def _apply_batch(self, uow: UnitOfWork, work: Work, items: Sequence[CaseEvent]) -> list[Exception | None]:
        """Load every case and task of the batch at once, apply the events in order, save once."""
        cases = await self.store.get_cases((item.data.case_id for item in items), uow.session)
        tasks = await self.store.get_tasks((tid for case in cases.values() for tid in case.task_ids), uow.session)
        rules = self._rules(work, tasks)
        changed: dict[str, CaseInfo] = {}
        results: list[Exception | None] = []
        for item in items:
            case = cases[item.data.case_id]
            try:
                if item.apply(rules, case, tasks):
                    changed[case.case_id] = case
                results.append(None)
            except NeedsPending as exc:  # raised before any change: only this event waits
                results.append(exc)
        touched = {task.id: task for task, _ in work.outcomes}  # each saved once, as it ends up
        await self.store.save_cases(changed.values(), uow.session)
        await self.store.save_tasks(touched.values(), uow.session)
        await self.store.apply_effects((e for _, o in work.outcomes for e in o.effects), uow.session)
        for task, outcome in work.outcomes:
            self._emit(uow, task, outcome)
        return results

    async def _one_at_a_time(self, items: Sequence[CaseEvent]) -> list[Exception | None]:
        return await one_by_one(items, self._one)  # in arrival order, each with its own retries

    async def on_received(self, ev: CaseReceived) -> None:
        await self._one(CaseEvent(ev))

    async def on_assigned(self, ev: CaseAssigned, delivered: int = 1) -> None:
        await self._one(CaseEvent(ev, delivered))

    async def on_closed(self, ev: CaseClosed) -> None:
        await self._one(CaseEvent(ev))

    async def _one(self, item: CaseEvent) -> None:
        """One case event in its own unit of work: the path a batch falls back to."""

        async def attempt(uow: UnitOfWork, work: Work) -> None:
            case = await self.store.get_case(item.data.case_id, uow.session)
            needs_tasks = not isinstance(item.data, CaseReceived)
            tasks = await self.store.get_tasks(case.task_ids, uow.session) if needs_tasks else {}
            if not item.apply(self._rules(work, tasks), case, tasks):
                return
            for task, outcome in work.outcomes:
                await self._write(uow, task, outcome)
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
