"""Wiring of the mediation service: subscribers, commands, indexes and the overdue timer."""

from __future__ import annotations

from typing import Any

from shared.app import Runtime
from shared.batching import OFF_PATH_BATCH
from shared.contract import subjects as s
from shared.contract.case import CaseAssigned, CaseClosed, CaseReceived
from shared.contract.common import Handling
from shared.contract.directory import DirectoryChanged
from shared.contract.envelope import Envelope
from shared.contract.mediation import (
    AssignMediator,
    RecordAgreement,
    RecordConsent,
    RecordFailure,
    RecordFollowUp,
    RecordSession,
)
from shared.timers import DuePoller

from . import store
from .handlers import Mediation


def register(rt: Runtime) -> None:
    """Declare the mediation service on the runtime."""
    svc = Mediation(rt)
    rt.mediation = svc  # type: ignore[attr-defined]  # for tests and tools in this process
    store.declare(rt.indexes)
    consume, serve = rt.messaging.consume, rt.messaging.serve

    # Three durables (deployment config), one coalescer: the events of a fetched burst share
    # one transaction, in arrival order. Cases that are not disputes cost nothing.
    # hot: `received` should be here before routing has assigned the case (then the parties or
    # needs are known when the dossier or task opens); `assigned` and `closed` can wait longer
    def each(subject: str, model: Any, **kw: Any):
        return rt.messaging.consume_each(subject, model, batch=OFF_PATH_BATCH, **kw)

    @each(s.case_event("received"), CaseReceived, hot=True)
    async def on_received(body: Envelope[CaseReceived]) -> None:
        if rt.policy.concerns(Handling.mediation, body.data.category):
            await svc.on_case_event(body.data)

    @each(s.case_event("assigned"), CaseAssigned)
    async def on_assigned(body: Envelope[CaseAssigned]) -> None:
        if rt.policy.concerns(Handling.mediation, body.data.category, body.data.handling):
            await svc.on_case_event(body.data)

    @each(s.case_event("closed"), CaseClosed)
    async def on_closed(body: Envelope[CaseClosed]) -> None:
        if rt.policy.concerns(Handling.mediation, body.data.category):
            await svc.on_case_event(body.data)

    @consume(s.DIRECTORY_CHANGED)
    async def on_directory(body: Envelope[DirectoryChanged]) -> None:
        await svc.on_directory(body.data)

    @serve(s.command("mediation", "assign_mediator"))
    async def assign_mediator(body: Envelope[AssignMediator]) -> dict[str, Any]:
        return await svc.command("assign_mediator", body)

    @serve(s.command("mediation", "record_consent"))
    async def record_consent(body: Envelope[RecordConsent]) -> dict[str, Any]:
        return await svc.command("record_consent", body)

    @serve(s.command("mediation", "record_session"))
    async def record_session(body: Envelope[RecordSession]) -> dict[str, Any]:
        return await svc.command("record_session", body)

    @serve(s.command("mediation", "record_agreement"))
    async def record_agreement(body: Envelope[RecordAgreement]) -> dict[str, Any]:
        return await svc.command("record_agreement", body)

    @serve(s.command("mediation", "record_failure"))
    async def record_failure(body: Envelope[RecordFailure]) -> dict[str, Any]:
        return await svc.command("record_failure", body)

    @serve(s.command("mediation", "record_follow_up"))
    async def record_follow_up(body: Envelope[RecordFollowUp]) -> dict[str, Any]:
        return await svc.command("record_follow_up", body)

    rt.on_start.append(svc.start)
    rt.on_stop.append(svc.case_events.drain)
    poller = DuePoller(rt.db[store.DOSSIERS], svc.on_due, interval=rt.settings.timer_poll_s)
    rt.background.append(poller.run_forever)
    rt.background.append(svc.refresh_load_forever)
