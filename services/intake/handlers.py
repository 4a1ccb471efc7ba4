"""Intake's handling: one code path for reports arriving on JetStream and by `submit`.

`Intake.take(raw, subject)` decodes and validates the raw bytes itself (an invalid report is
answered, announced, quarantined and acked — never dead-lettered), then hands valid reports
to a `Coalescer`: the reports of one fetch become one `insert_many` plus one outbox document
in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import Binary
from prometheus_client import Counter, Histogram
from pymongo.errors import DuplicateKeyError, PyMongoError
from ulid import ULID

from shared.app import Runtime
from shared.batching import OFF_PATH_INTERVAL_S, Coalescer
from shared.contract import subjects as s
from shared.contract.case import CaseAssigned, CaseClosed
from shared.contract.common import Scope
from shared.contract.directory import DirectoryChanged
from shared.contract.intake import Contact, ContactReply, ContactRequest, Report, ReportRejected
from shared.errors import DomainError, lost_race, only_duplicates
from shared.locks import KeyClaims
from shared.logs import log

from . import domain
from .privacy import Privacy
from .store import IntakeStore

logger = logging.getLogger("gridcase.intake")

MAX_ATTEMPTS = 8
ISOLATING_ATTEMPTS = 2  # for each part while a batch that kept losing races is split…
ISOLATING_WRITES = 16  # …and at most this many writes in all
# Waits for a duplicate key another replica holds in a transaction not yet committed (~5 s in
# all: under load its commit can take that long; a retried submit would meet the same wait).
UNSEEN_WAITS_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.0, 1.0)
REPORT_WRITES = 4  # batched report writes in flight at once (a backlog)…
PARALLEL_FROM = 64  # …when this many reports wait; a trickle is written one batch at a time


async def backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0.002, 0.01) * attempt)


@dataclass
class Pending:
    """A valid report with its case prepared: the batched write only links and stores it."""

    report: Report
    envelope_id: str | None
    key: str
    doc: dict[str, Any]


def _claimed_keys(item: Pending) -> tuple[tuple[str, str], ...]:
    """What a report's write touches that another batch's might: its report and its place."""
    lk = item.doc["link_key"]
    return (("report", item.key), ("link", lk)) if lk else (("report", item.key),)


@dataclass
class Outcome:
    status: str  # accepted | duplicate | rejected
    case_id: str | None = None
    new: bool = False
    quarantine_id: str | None = None
    errors: list[dict[str, str]] | None = None

    def reply(self) -> dict[str, Any]:
        if self.status == "rejected":
            return {
                "ok": False,
                "error": {
                    "code": "invalid",
                    "message": "invalid report (kept in quarantine)",
                    "details": self.errors or [],
                    "quarantine_id": self.quarantine_id,
                },
            }
        return {"ok": True, "status": self.status, "case_id": self.case_id}


class Metrics:
    def __init__(self, rt: Runtime) -> None:
        r = rt.registry
        self.received = Counter("gridcase_intake_reports_received", "Reports received", ["channel"], registry=r)
        self.accepted = Counter("gridcase_intake_reports_accepted", "Reports that opened a case", ["channel"], registry=r)
        self.duplicates = Counter(
            "gridcase_intake_reports_duplicate", "Repeated reports answered with their case", ["channel"], registry=r
        )
        self.rejected = Counter("gridcase_intake_reports_rejected", "Reports refused and quarantined", ["reason"], registry=r)
        self.linked = Counter("gridcase_intake_reports_linked", "New cases linked to an open case", ["channel"], registry=r)
        self.contact = Counter("gridcase_intake_contact_lookups", "Contact look-ups", ["outcome"], registry=r)
        self._received: dict[str, Any] = {}
        self.flush = Histogram(
            "gridcase_intake_flush_reports",
            "Reports per batched write",
            buckets=(1, 4, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )

    def count_received(self, channel: str) -> None:
        """Hot path: the labelled child is looked up once per channel."""
        child = self._received.get(channel)
        if child is None:
            child = self._received[channel] = self.received.labels(channel)
        child.inc()


class Intake:
    def __init__(self, rt: Runtime, store: IntakeStore, privacy: Privacy | None = None) -> None:
        self.rt = rt
        self.store = store
        self._privacy = privacy
        self.metrics = Metrics(rt)
        self.directory = domain.DirectoryView()
        self._repeats_seen = False
        # what intake learns of cases (assignments, closures): one insert into `case_changes` per
        # `OFF_PATH_INTERVAL_S` at most
        self.case_updates: Coalescer[Any, None] = Coalescer(self._flush_case_updates, max_batch=500, min_interval=OFF_PATH_INTERVAL_S)
        # Several group commits in flight: the next batch is written while the database commits
        # the last. `claims` keeps them apart: a report whose key or place+category a write in
        # flight holds waits for it (no write conflict; duplicate linking sees the earlier case).
        self.claims = KeyClaims()
        self.coalescer: Coalescer[Pending, Outcome] = Coalescer(
            self._flush,
            max_batch=max(rt.settings.fetch_batch, 512),
            max_delay=0.003,
            inflight=REPORT_WRITES,
            parallel_from=PARALLEL_FROM,
        )

    @property
    def privacy(self) -> Privacy:
        if self._privacy is None:
            raise RuntimeError("intake key not loaded (the service has not started)")
        return self._privacy

    @privacy.setter
    def privacy(self, value: Privacy) -> None:
        self._privacy = value

    # ---- reports ---------------------------------------------------------------------------
    async def take(self, raw: bytes, subject: str) -> Outcome:
        """The one code path for both subjects: one report (a `submit`)."""
        outcome = (await self.take_many([raw], subject))[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def take_many(self, raws: Sequence[bytes], subject: str) -> list[Outcome | Exception]:
        """Reports in arrival order (a fetched batch): the valid ones share one batched write.
        A report that could not be stored has the exception in its place (retry that one)."""
        outcomes: list[Outcome | Exception | None] = [None] * len(raws)
        valid: list[tuple[int, Pending]] = []
        for i, raw in enumerate(raws):
            parsed = domain.parse_report(raw, subject)
            self.metrics.count_received(parsed.channel or "unknown")
            if not parsed.ok:
                outcomes[i] = await self._reject(raw, subject, parsed)
                continue
            report = parsed.report
            assert report is not None
            key = domain.report_key(report.channel.value, report.external_id)
            valid.append((i, Pending(report, parsed.envelope_id, key, self._case_doc(report, parsed.envelope_id, key))))
        results = await self.coalescer.submit_many([p for _, p in valid])
        for (i, pending), outcome in zip(valid, results, strict=True):
            outcomes[i] = outcome
            if isinstance(outcome, Exception):
                continue
            channel = pending.report.channel.value
            if outcome.new:
                self.metrics.accepted.labels(channel).inc()
            elif outcome.status == "duplicate":
                self.metrics.duplicates.labels(channel).inc()
        return outcomes  # type: ignore[return-value]  # every slot is filled above

    async def _reject(self, raw: bytes, subject: str, parsed: domain.Parsed) -> Outcome:
        qid = domain.quarantine_id(raw, parsed.envelope_id, subject)
        errors = [e.model_dump() for e in parsed.errors]
        now = datetime.now(UTC)
        doc = {
            "_id": qid,
            "at": now,
            "subject": subject,
            "reason": parsed.reason,
            "envelope_id": parsed.envelope_id,
            "channel": parsed.channel,
            "external_id": parsed.external_id,
            "errors": errors,
            "raw": Binary(self.privacy.seal_bytes(raw)),  # the raw report holds personal data: encrypted
        }
        notice = ReportRejected(
            channel=parsed.channel, external_id=parsed.external_id, errors=parsed.errors, quarantine_id=qid, at=now
        )
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.rt.outbox.unit_of_work() as uow:
                    await self.store.put_quarantine(doc, uow.session)
                    uow.emit(self.rt.event(s.INTAKE_REJECTED, notice))
            except DuplicateKeyError:
                break  # this very envelope was quarantined and announced already
            except PyMongoError as exc:
                if not lost_race(exc) or attempt == MAX_ATTEMPTS:
                    raise
                await backoff(attempt)
            else:
                self.metrics.rejected.labels(parsed.reason or "invalid").inc()
                break
        return Outcome("rejected", quarantine_id=qid, errors=errors)

    async def _flush(self, items: Sequence[Pending]) -> list[Outcome | Exception]:
        """One batch: repeats answered from the store, new reports inserted with their events.

        A batch that keeps losing races is halved until the reports at fault stand alone — e.g.
        keys still locked by the transaction of a process that was killed (the database frees
        them only when it reaps that transaction): only those are retried later, not their
        whole batch."""
        self.metrics.flush.observe(len(items))

        def isolating(part: list[Pending]) -> Awaitable[list[Outcome | Exception]]:
            return self._store_isolating(part, MAX_ATTEMPTS, [ISOLATING_WRITES])

        return await self.claims.write_apart(items, _claimed_keys, isolating)

    async def _store_isolating(
        self, items: Sequence[Pending], attempts: int, budget: list[int]
    ) -> list[Outcome | Exception]:
        budget[0] -= 1
        try:
            return await self._store_batch(items, attempts)
        except PyMongoError as exc:
            if not lost_race(exc) or len(items) == 1 or budget[0] <= 0:
                return [exc] * len(items)
        # The search for the reports at fault is bounded (`budget` writes, few attempts each):
        # they are most likely held by a crashed writer's transaction (until the database reaps
        # it, 60 s), so retrying them here helps nothing — and when a whole batch was held, the
        # search down to every single report outlasted the ack wait. JetStream's redelivery with
        # back-off retries what is left.
        half = len(items) // 2
        parts = (items[:half], items[half:])
        return [r for part in parts for r in await self._store_isolating(part, ISOLATING_ATTEMPTS, budget)]

    async def _store_batch(self, items: Sequence[Pending], attempts: int) -> list[Outcome | Exception]:
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            first.setdefault(item.key, i)
        keys = [items[i].key for i in first.values()]
        known: dict[str, dict[str, Any]] = {}
        created: dict[str, dict[str, Any]] = {}
        # Optimistic by default (insert, let the unique `_id` refuse repeats); while repeats are
        # about (the last batch had some), read the keys first: an aborted batch costs more.
        if self._repeats_seen:
            known = await self.store.existing(keys)
        attempt = unseen = 0
        while True:
            fresh = [items[i] for i in first.values() if items[i].key not in known]
            try:
                created = await self._insert(fresh)
                break
            except PyMongoError as exc:
                if only_duplicates(exc):
                    # another replica (or an earlier delivery) stored some of these: read them back
                    seen = len(known)
                    known.update(await self.store.existing(keys))
                    if len(known) == seen:
                        # taken by a transaction not committed yet, so not readable: give it time
                        unseen += 1
                        if unseen > len(UNSEEN_WAITS_S):
                            raise RuntimeError("report batch kept meeting duplicates it cannot read") from exc
                        await asyncio.sleep(UNSEEN_WAITS_S[unseen - 1])
                    continue
                attempt += 1
                if not lost_race(exc) or attempt >= attempts:
                    raise
                await backoff(attempt)
        self._repeats_seen = bool(known) or len(first) < len(items)
        results = []
        for i, item in enumerate(items):
            if item.key in created and first[item.key] == i:
                results.append(Outcome("accepted", created[item.key]["case_id"], new=True))
                continue
            stored = created.get(item.key) or known[item.key]
            same = item.envelope_id is not None and item.envelope_id == stored.get("envelope_id")
            # the same envelope again (a retry of the same command) answers as the first time
            results.append(Outcome("accepted" if same else "duplicate", stored["case_id"]))
        return results

    def _case_doc(self, report: Report, envelope_id: str | None, key: str) -> dict[str, Any]:
        """The stored report of a new case — everything but its link to an earlier one. Built
        before the batched write (the next batch is prepared while one is being written)."""
        scope = domain.scope_of(report, self.directory)
        contact = domain.contact_of(report)
        return {
            "_id": key,
            "case_id": domain.new_case_id(),
            "envelope_id": envelope_id,
            "channel": report.channel.value,
            "external_id": report.external_id,
            "category": report.category.value,
            "priority": report.priority.value,
            "reported_at": report.reported_at,
            "received_at": datetime.now(UTC),
            "link_key": domain.link_key(report),
            "duplicate_of": None,
            "district": scope.district,
            "community": scope.community,
            "grid": scope.grid,
            "contact": self.privacy.seal(contact),
            "phone_hashes": [self.privacy.match_hash(p) for p in domain.phones_of(contact)],
        }

    async def _insert(self, fresh: Sequence[Pending]) -> dict[str, dict[str, Any]]:
        if not fresh:
            return {}
        now = datetime.now(UTC)
        open_cases = await self.store.open_cases(
            [lk for item in fresh if (lk := item.doc["link_key"])], now - domain.LINK_WINDOW
        )
        docs: list[dict[str, Any]] = []
        events = []
        out: dict[str, dict[str, Any]] = {}
        for item in fresh:
            doc = item.doc
            lk = doc["link_key"]
            doc["duplicate_of"] = domain.duplicate_of(open_cases.get(lk, ()), now) if lk else None
            if lk:  # later reports of this batch link to this one when nothing older is open
                open_cases.setdefault(lk, []).append(domain.OpenCase(doc["case_id"], doc["received_at"]))
            scope = Scope(district=doc["district"], community=doc["community"], grid=doc["grid"])
            event = domain.case_received(
                item.report, case_id=doc["case_id"], at=doc["received_at"], scope=scope, duplicate_of=doc["duplicate_of"]
            )
            docs.append(doc)
            events.append(self.rt.event(s.case_event("received"), event, subject=doc["case_id"]))
            out[item.key] = doc
        # the next batch is written while this one's `received` events go out
        async with self.rt.outbox.unit_of_work(publish_later=True) as uow:
            self.store.insert_reports(docs, uow)
            uow.emit(*events)
        for doc in docs:
            if doc["duplicate_of"]:
                self.metrics.linked.labels(doc["channel"]).inc()
        return out

    # ---- what intake learns from other services --------------------------------------------
    async def on_assigned(self, data: CaseAssigned) -> None:
        await self.case_updates.submit(self.store.assignment(data.case_id, data.version, data.assignee, data.scope.model_dump()))

    async def on_closed(self, data: CaseClosed) -> None:
        await self.case_updates.submit(self.store.closure(data.case_id, data.version))

    async def _flush_case_updates(self, ops: Sequence[Any]) -> list[None]:
        await self.store.record_changes(list(ops))
        return [None] * len(ops)

    async def on_directory(self, data: DirectoryChanged) -> None:
        view = domain.DirectoryView.from_changed(data)
        await self.store.save_directory(view)
        if view.version >= self.directory.version:
            self.directory = view

    async def refresh_directory(self) -> None:
        """Replicas share one durable: each learns the directory from the store."""
        view = await self.store.load_directory()
        if view.version >= self.directory.version:
            self.directory = view

    async def refresh_forever(self, interval: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh_directory()
            except Exception as exc:
                log(logger, logging.WARNING, "directory refresh failed", error=type(exc).__name__)

    # ---- contact look-up -------------------------------------------------------------------
    async def contact(self, request: ContactRequest, command_id: str) -> dict[str, Any]:
        doc = await self.store.by_case(request.case_id)
        directory = await self.store.load_directory()
        community = doc.get("community") if doc else None
        decision = domain.may_see_contact(
            case_known=doc is not None,
            assignee=doc.get("assignee") if doc else None,
            community=community,
            requested_by=request.requested_by,
            directors=directory.directors.get(community, frozenset()) if community else frozenset(),
        )
        first_time = await self.store.record_audit(
            {
                "_id": command_id,
                "audit_id": str(ULID()),
                "at": datetime.now(UTC),
                "case_id": request.case_id,
                "requested_by": request.requested_by,
                "purpose": request.purpose,
                "granted": decision.granted,
                "reason": decision.reason,
            }
        )
        if first_time:
            self.metrics.contact.labels("granted" if decision.granted else "refused").inc()
            log(logger, logging.INFO, "contact look-up", case_id=request.case_id, by=request.requested_by,
                granted=decision.granted, reason=decision.reason)
        if not decision.granted:
            raise DomainError("not_allowed", "only the case's assignee or its community director may see the contact")
        assert doc is not None
        contact = self.privacy.open(doc["contact"])
        reply = ContactReply(
            case_id=request.case_id,
            reporter=Contact(**contact["reporter"]),
            parties=contact["parties"],
        )
        return reply.model_dump(mode="json")
