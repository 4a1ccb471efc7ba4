"""Mediation handlers: load → domain → save (version-guarded) with events, in one unit of work."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram
from pymongo.errors import PyMongoError

from shared.app import Runtime
from shared.contract import subjects
from shared.contract.case import CaseAssigned, CaseClosed, CaseReceived
from shared.contract.common import Handling, Level, Role
from shared.contract.directory import DirectoryChanged
from shared.contract.envelope import Envelope
from shared.contract.mediation import MediationCommand
from shared.errors import Conflict, DomainError, NotFound, lost_race
from shared.logs import log

from . import domain
from .domain import CloseReason, Dossier, Emitted
from .store import Store

logger = logging.getLogger("gridcase.mediation")

T = TypeVar("T")
Done = tuple[Dossier | None, Dossier, list[Emitted]]  # a committed change: before, after, its events
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


class Mediation:
    """The service's behaviour, bound to a runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.store = Store(rt.db)
        self.metrics = Metrics(rt)
        self.load = MediatorLoad()

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

    async def _choose(self, community: str | None, parties: list[dict[str, Any]] | None) -> tuple[domain.MediatorChoice, dict]:
        directory = await self.store.get_directory()
        candidates = directory.mediators_of(community)
        load = self.load.of([m.id for m in candidates])
        langs = domain.party_languages(parties or [])
        return domain.choose_mediator(candidates, langs, load), {m.id: m for m in candidates}

    # -- case events ----------------------------------------------------------------

    async def on_received(self, r: CaseReceived) -> None:
        parties = [p.model_dump(mode="json") for p in r.parties]
        langs = domain.party_languages(parties)

        async def attempt() -> list[Done]:
            done: list[Done] = []
            async with self.rt.outbox.unit_of_work() as uow:
                cf = await self.store.get_case(r.case_id, uow.session)
                if cf.parties is not None:
                    return []  # already known (redelivery)
                cf.parties = parties
                cf.community = cf.community or r.scope.community
                cf.category = cf.category or r.category
                for d in await self.store.missing_parties(r.case_id, uow.session):
                    better, known = await self._choose(d.community, parties)
                    current = known.get(d.mediator) if d.mediator else None
                    covered = len(current.languages & langs) if current else 0
                    nd, events = domain.learn_parties(d, parties, better, covered, now())
                    await self.store.save(nd, d.version, uow.session)
                    self._emit(uow, events, d.case_id)
                    done.append((d, nd, events))
                await self.store.save_case(cf, uow.session)
            return done

        for before, after, events in await retrying(attempt):
            self.committed(before, after, events)

    async def on_assigned(self, a: CaseAssigned) -> None:
        is_mediation = a.handling == Handling.mediation
        level = Level(a.level)

        async def attempt() -> list[Done]:
            done: list[Done] = []
            async with self.rt.outbox.unit_of_work() as uow:
                s = uow.session
                cf = await self.store.get_case(a.case_id, s)
                if not cf.newer_assignment(a.version):
                    return []  # repeated or stale assignment
                cf.assigned_version = a.version
                cf.community = a.scope.community or cf.community
                cf.category = a.category
                t = now()
                keep = []
                for d in await self.store.open_for_case(a.case_id, s):
                    if domain.supersedes(d, level, is_mediation):
                        nd, events = domain.close_quietly(d, t, CloseReason.superseded)
                        await self.store.save(nd, d.version, s)
                        self._emit(uow, events, d.case_id)
                        done.append((d, nd, events))
                    else:
                        keep.append(d)
                if is_mediation and not keep:
                    choice, _ = await self._choose(cf.community, cf.parties)
                    d, events = domain.open_dossier(
                        case_id=a.case_id,
                        level=level,
                        case_version=a.version,
                        community=cf.community,
                        category=str(a.category),
                        parties=cf.parties,
                        choice=choice,
                        now=t,
                        norm=self.rt.policy.mediation_norm,
                        assigned_at=a.at,
                    )
                    if not await self.store.exists(d.mediation_id, s):
                        await self.store.insert(d, s)
                        self._emit(uow, events, d.case_id)
                        done.append((None, d, events))
                await self.store.save_case(cf, s)
            return done

        for before, after, events in await retrying(attempt):
            self.committed(before, after, events)

    async def on_closed(self, c: CaseClosed) -> None:
        async def attempt() -> list[Done]:
            done: list[Done] = []
            async with self.rt.outbox.unit_of_work() as uow:
                cf = await self.store.get_case(c.case_id, uow.session)
                if c.version <= cf.closed_version:
                    return []
                cf.closed_version = c.version
                for d in await self.store.open_for_case(c.case_id, uow.session):
                    if d.assigned_version < c.version:
                        nd, events = domain.close_quietly(d, now(), CloseReason.case_closed)
                        await self.store.save(nd, d.version, uow.session)
                        self._emit(uow, events, d.case_id)
                        done.append((d, nd, events))
                await self.store.save_case(cf, uow.session)
            return done

        for before, after, events in await retrying(attempt):
            self.committed(before, after, events)

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
            choice, _ = await self._choose(d.community, d.parties)
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

