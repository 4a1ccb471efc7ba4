"""Mediation handlers: load → domain → save (version-guarded) with events, in one unit of work.

Case events (`received/assigned/closed`) go through one `Coalescer`: a burst shares one unit
of work — bulk reads, the rules of `cases` applied in arrival order in memory, bulk guarded
writes. If another writer got there first, each event of the burst takes the per-event path.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram
from pymongo.errors import PyMongoError

from shared.app import Runtime
from shared.batching import OFF_PATH_INTERVAL_S, Coalescer, one_by_one
from shared.contract import subjects
from shared.contract.case import CaseAssigned, CaseClosed, CaseReceived
from shared.contract.common import Role
from shared.contract.directory import DirectoryChanged
from shared.contract.envelope import Envelope
from shared.contract.mediation import MediationCommand
from shared.errors import Conflict, DomainError, NotFound, lost_race
from shared.logs import log

from . import cases, domain
from .cases import CaseEvent, Done, Working
from .domain import CaseFile, Dossier, Emitted, Mediator, MediatorChoice
from .store import Directory, Store

logger = logging.getLogger("gridcase.mediation")

T = TypeVar("T")
DAY_BUCKETS = (0.5, 1, 2, 3, 5, 7, 10, 14, 21, 30, 45, 60, 90)


class Metrics:
    def __init__(self, rt: Runtime) -> None:
        r = rt.registry
        self.opened = Counter("gridcase_mediation_opened", "Mediation dossiers opened", ["level"], registry=r)
        self.agreed = Counter("gridcase_mediation_agreed", "Mediations ending in a written agreement", ["level"], registry=r)
        self.failed = Counter("gridcase_mediation_failed", "Mediations that failed, by reason", ["level", "reason"], registry=r)
        self.closed = Counter("gridcase_mediation_closed", "Mediation dossiers closed", ["level"], registry=r)
        self.days = Histogram(
            "gridcase_mediation_days_to_agreement",
            "Days from opening a dossier to the written agreement",
            ["level"],
            buckets=DAY_BUCKETS,
            registry=r,
        )

    def observe(self, dossier: Dossier, events: list[Emitted]) -> None:
        level = str(dossier.level)
        for name, data in events:
            if name == "opened":
                self.opened.labels(level).inc()
            elif name == "agreed":
                self.agreed.labels(level).inc()
                days = dossier.days_to_agreement()
                if days is not None:
                    self.days.labels(level).observe(days)
            elif name == "failed":
                self.failed.labels(level, str(getattr(data, "reason", "unknown"))).inc()
            elif name == "closed":
                self.closed.labels(level).inc()


async def retrying(fn: Callable[[], Awaitable[T]], attempts: int = 8) -> T:
    """Rerun a load-decide-save on a lost version race or a transient transaction error."""
    for i in range(attempts):
        try:
            return await fn()
        except (Conflict, PyMongoError) as exc:
            if not lost_race(exc) or i == attempts - 1:
                raise
        await asyncio.sleep(0.01 * (i + 1) + random.random() * 0.02)
    raise AssertionError("unreachable")


def now() -> datetime:
    return datetime.now(UTC)


class MediatorLoad:
    """Open dossiers per mediator, kept in memory: choosing a mediator runs for every dossier
    opened, and counting in the database costs a scan of the open dossiers each time.

    Exact for this process's own writes (`move` after each commit); `refresh` recounts from
    the database at start and every `REFRESH_S`, which takes in other replicas' writes.
    """

    REFRESH_S = 30.0

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def of(self, mediators: list[str]) -> dict[str, int]:
        return {m: self.counts.get(m, 0) for m in mediators}

    def copy(self) -> MediatorLoad:
        load = MediatorLoad()
        load.counts = dict(self.counts)
        return load

    def move(self, before: Dossier | None, after: Dossier | None) -> None:
        for d, sign in ((before, -1), (after, 1)):
            if d is not None and d.is_open and d.mediator:
                self.counts[d.mediator] = self.counts.get(d.mediator, 0) + sign

    async def refresh(self, store: Store) -> None:
        directory = await store.get_directory()
        self.counts = await store.load([m.id for m in directory.mediators])

    async def refresh_forever(self, store: Store) -> None:
        while True:
            await asyncio.sleep(self.REFRESH_S)
            try:
                await self.refresh(store)
            except Exception as exc:
                log(logger, logging.WARNING, "mediator load refresh failed", error=type(exc).__name__)


class Chooser:
    """Chooses mediators (`cases.Choose`) from one read of the directory and a private copy of
    the load: a batch counts what it has decided but not committed yet (`decided`), so two
    dossiers opened in one batch balance as they would one after the other."""

    def __init__(self, directory: Directory, load: MediatorLoad) -> None:
        self.directory = directory
        self.load = load.copy()

    def __call__(self, community: str | None, parties: list[dict[str, Any]] | None) -> tuple[MediatorChoice, Mapping[str, Mediator]]:
        candidates = self.directory.mediators_of(community)
        load = self.load.of([m.id for m in candidates])
        langs = domain.party_languages(parties or [])
        return domain.choose_mediator(candidates, langs, load), {m.id: m for m in candidates}

    def decided(self, done: Sequence[Done]) -> None:
        for before, after, _ in done:
            self.load.move(before, after)


class Mediation:
    """The service's behaviour, bound to a runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.store = Store(rt.db)
        self.metrics = Metrics(rt)
        self.load = MediatorLoad()
        # one coalescer for received/assigned/closed: a batch keeps their arrival order. Off the
        # report → assigned path: at most ~10 units of work a second, however fast events come
        self.case_events: Coalescer[CaseEvent, None] = Coalescer(
            self._flush_case_events, max_batch=500, max_delay=0.002, min_interval=OFF_PATH_INTERVAL_S
        )

    async def start(self) -> None:
        await self.load.refresh(self.store)

    async def refresh_load_forever(self) -> None:
        await self.load.refresh_forever(self.store)

    def committed(self, before: Dossier | None, after: Dossier, events: list[Emitted]) -> None:
        self.load.move(before, after)
        self.metrics.observe(after, events)

    # -- helpers --------------------------------------------------------------------

    def _emit(self, uow: Any, events: list[Emitted], case_id: str) -> None:
        for name, data in events:
            uow.emit(self.rt.event(subjects.mediation_event(name), data, subject=case_id))

    async def _chooser(self) -> Chooser:
        return Chooser(await self.store.get_directory(), self.load)

    # -- case events, batched -------------------------------------------------------

    async def on_case_event(self, event: CaseEvent) -> None:
        """One `case.received/assigned/closed`: applied with the others of its burst."""
        await self.case_events.submit(event)

    async def _flush_case_events(self, items: Sequence[CaseEvent]) -> list[Exception | None]:
        """One unit of work for the batch; when someone else wrote meanwhile, the per-event
        path takes each event (it reloads and retries), so no event is lost or applied twice."""
        try:
            done = await self._apply_batch(items)
        except (Conflict, PyMongoError) as exc:
            if not lost_race(exc):
                raise
            log(logger, logging.INFO, "case event batch lost a race, one at a time", size=len(items), error=type(exc).__name__)
            return await one_by_one(items, self._one)
        for change in done:
            self.committed(*change)
        return [None] * len(items)

    async def _one(self, event: CaseEvent) -> None:
        handler = {CaseReceived: self.on_received, CaseAssigned: self.on_assigned, CaseClosed: self.on_closed}[type(event)]
        await handler(event)  # type: ignore[operator]  # the handler of the event's own type

    async def _apply_batch(self, items: Sequence[CaseEvent]) -> list[Done]:
        """Load every case file and dossier concerned (one query each), apply the events in
        order in memory, save it all (guarded) with the events: the changes, not yet committed."""
        chooser = None if all(isinstance(e, CaseClosed) for e in items) else await self._chooser()
        t = now()
        async with self.rt.outbox.unit_of_work() as uow:
            work = await self._load_batch(items, uow.session)
            for e in items:
                self._decide(work, e, chooser, t)
            files, new, changed = work.writes()
            await self.store.save_cases(files, uow.session)
            await self.store.insert_many(new, uow.session)
            await self.store.save_many(changed, uow.session)
            for _, after, events in work.done:
                self._emit(uow, events, after.case_id)
        return work.done

    def _decide(self, work: Working, e: CaseEvent, chooser: Chooser | None, t: datetime) -> None:
        """One event of a batch, with the per-event rules, on what the batch has decided so far."""
        cf = work.case(e.case_id)
        if isinstance(e, CaseClosed):
            work.apply(cf, cases.closed(cf, e, work.open_of(e.case_id), t))
            return
        assert chooser is not None  # read for any batch with a received or an assigned
        if isinstance(e, CaseReceived):
            done = cases.received(cf, e, work.missing_parties_of(e.case_id), chooser, t)
        else:
            done = cases.assigned(cf, e, work.open_of(e.case_id), chooser, t, self.rt.policy.mediation_norm)
        chooser.decided(done or [])  # the next choice in this batch counts these dossiers
        work.apply(cf, done)

    async def _load_batch(self, items: Sequence[CaseEvent], s: Any) -> Working:
        ids = list(dict.fromkeys(e.case_id for e in items))
        # `received` looks at dossiers missing parties, `assigned`/`closed` at open ones
        learning = list(dict.fromkeys(e.case_id for e in items if isinstance(e, CaseReceived)))
        moving = list(dict.fromkeys(e.case_id for e in items if not isinstance(e, CaseReceived)))
        files = await self.store.get_cases(ids, s)
        dossiers = await self.store.open_for_cases(moving, s) if moving else []
        if learning:
            dossiers += await self.store.missing_parties_of(learning, s)
        return Working(files, dossiers)

    # -- case events, one at a time (the batch's fallback): each its own unit of work --

    async def on_received(self, r: CaseReceived) -> None:
        async def decide(s: Any) -> tuple[CaseFile, list[Done] | None]:
            cf = await self.store.get_case(r.case_id, s)
            missing = await self.store.missing_parties(r.case_id, s)
            return cf, cases.received(cf, r, missing, await self._chooser(), now())

        await self._per_event(decide)

    async def on_assigned(self, a: CaseAssigned) -> None:
        async def decide(s: Any) -> tuple[CaseFile, list[Done] | None]:
            cf = await self.store.get_case(a.case_id, s)
            open_ = await self.store.open_for_case(a.case_id, s)
            return cf, cases.assigned(cf, a, open_, await self._chooser(), now(), self.rt.policy.mediation_norm)

        await self._per_event(decide)

    async def on_closed(self, c: CaseClosed) -> None:
        async def decide(s: Any) -> tuple[CaseFile, list[Done] | None]:
            cf = await self.store.get_case(c.case_id, s)
            return cf, cases.closed(cf, c, await self.store.open_for_case(c.case_id, s), now())

        await self._per_event(decide)

    async def _per_event(self, decide: Callable[[Any], Awaitable[tuple[CaseFile, list[Done] | None]]]) -> None:
        """Load → decide → save in one unit of work, retried on a lost race; then account."""

        async def attempt() -> list[Done]:
            saved: list[Done] = []
            async with self.rt.outbox.unit_of_work() as uow:
                cf, done = await decide(uow.session)
                if done is None:
                    return []  # nothing to do (redelivery, stale)
                for change in done:
                    if await self._save_change(uow, change):
                        saved.append(change)
                await self.store.save_case(cf, uow.session)
            return saved

        for change in await retrying(attempt):
            self.committed(*change)

    async def _save_change(self, uow: Any, change: Done) -> bool:
        before, after, events = change
        if before is None:
            if await self.store.exists(after.mediation_id, uow.session):
                return False  # opened already: its id is deterministic
            await self.store.insert(after, uow.session)
        else:
            await self.store.save(after, before.version, uow.session)
        self._emit(uow, events, after.case_id)
        return True

    async def on_directory(self, dc: DirectoryChanged) -> None:
        mediators, directors = [], []
        for s in dc.staff:
            if not s.active:
                continue
            community = s.community or s.unit
            if s.role == Role.mediator:
                mediators.append({"id": s.id, "community": community, "languages": [str(x) for x in s.languages]})
            elif s.role == Role.community_director:
                directors.append({"id": s.id, "community": community})
        if not await self.store.save_directory(dc.version, mediators, directors):
            return
        directory = await self.store.get_directory()
        # dossiers opened when their community had no mediator get one now
        for waiting in await self.store.open_without_mediator(directory.communities_with_mediators()):
            await self._auto_assign(waiting.mediation_id)

    async def _auto_assign(self, mediation_id: str) -> None:
        async def attempt() -> Done | None:
            d = await self.store.get(mediation_id)
            if d is None or d.mediator is not None or not d.is_open:
                return None
            choice, _ = (await self._chooser())(d.community, d.parties)
            nd, events = domain.auto_assign(d, choice, now())
            if not events:
                return None
            async with self.rt.outbox.unit_of_work() as uow:
                await self.store.save(nd, d.version, uow.session)
                self._emit(uow, events, d.case_id)
            return d, nd, events

        result = await retrying(attempt)
        if result:
            self.committed(*result)

    # -- commands -------------------------------------------------------------------

    async def command(self, verb: str, env: Envelope[Any]) -> dict[str, Any]:
        prior = await self.rt.commands.replay(env.id)
        if prior is not None:
            return prior
        cmd: MediationCommand = env.data
        rule = domain.COMMANDS[verb]

        async def attempt() -> tuple[Dossier, Dossier, list[Emitted], dict[str, Any]]:
            d = await self.store.get(cmd.mediation_id)
            if d is None:
                raise NotFound(f"mediation {cmd.mediation_id}")
            directory = await self.store.get_directory()
            kw: dict[str, Any] = {"directors": directory.directors_of(d.community)}
            if verb == "assign_mediator":
                kw["mediators"] = directory.mediators_of(d.community)
            nd, events = rule(d, cmd, now(), **kw)
            reply = {
                "ok": True,
                "mediation_id": nd.mediation_id,
                "case_id": nd.case_id,
                "version": nd.version,
                "state": str(nd.state),
                "events": [name for name, _ in events],
            }
            async with self.rt.outbox.unit_of_work() as uow:
                if events:
                    await self.store.save(nd, d.version, uow.session)
                    self._emit(uow, events, nd.case_id)
                await self.rt.commands.record(env.id, reply, session=uow.session)
            return d, nd, events, reply

        try:
            before, nd, events, reply = await retrying(attempt)
        except DomainError as exc:
            # a refusal is an answer too: the same command id keeps getting it
            await self.rt.commands.record(env.id, exc.reply())
            raise
        self.committed(before, nd, events)
        return reply

    # -- the 30-day norm ------------------------------------------------------------

    async def on_due(self, docs: list[dict[str, Any]], at: datetime) -> None:
        for doc in docs:
            d = Dossier.model_validate(doc)
            nd, events = domain.on_due(d, at)
            if not events:
                await self.store.set_wake(nd)
                continue
            try:
                async with self.rt.outbox.unit_of_work() as uow:
                    await self.store.save(nd, d.version, uow.session)
                    self._emit(uow, events, nd.case_id)
            except Conflict:
                continue  # changed meanwhile: the next poll decides again on the new version
            log(logger, logging.INFO, "mediation overdue", mediation_id=nd.mediation_id, case_id=nd.case_id)
            self.committed(d, nd, events)

