"""Wiring of the dispatch service: subscribers, commands, indexes, the registry and the offer timer.

Volunteer dispatch (DESIGN §3, issue 6): a task per (case, level) on `case.assigned` with
`handling: dispatch`; offers one at a time per open place, or open claims for micro-wishes;
`completed` / `unfilled` / `cancelled` for routing. Decisions are documented in `domain.py`.
"""

from __future__ import annotations

from typing import Any

from shared.app import Runtime
from shared.batching import OFF_PATH_BATCH
from shared.contract import subjects as s
from shared.contract.case import CaseAssigned, CaseClosed, CaseReceived
from shared.contract.common import Handling
from shared.contract.dispatch import ClaimTask, CompleteTask, RegisterVolunteer, RespondToOffer
from shared.contract.envelope import Envelope
from shared.timers import DuePoller

from .handlers import Dispatch
from .store import TASKS, DispatchStore


def register(rt: Runtime) -> None:
    svc = Dispatch(rt)
    rt.dispatch = svc  # type: ignore[attr-defined]  # for tests and the benchmark
    DispatchStore.declare(rt.indexes)
    rt.on_start.append(svc.listen_for_volunteers)  # before the load: nothing falls in between
    rt.on_start.append(svc.load)
    poller = DuePoller(rt.db[TASKS], svc.on_due, interval=rt.settings.timer_poll_s)
    rt.background.append(poller.run_forever)
    rt.background.append(svc.refresh_forever)
    rt.on_stop.append(svc.case_events.drain)

    # Three durables (deployment config), one batch: each handler waits for its event's place
    # in the next unit of work (`Dispatch.case_event`). Non-help cases are skipped here, free.
    # hot: `received` should be here before routing has assigned the case (then the parties or
    # needs are known when the dossier or task opens); `assigned` and `closed` can wait longer
    @rt.messaging.consume_each(s.case_event("received"), CaseReceived, batch=OFF_PATH_BATCH, hot=True)
    async def on_received(body: Envelope[CaseReceived]) -> None:
        if rt.policy.concerns(Handling.dispatch, body.data.category):
            await svc.case_event(body.data)

    @rt.messaging.consume_each(s.case_event("assigned"), CaseAssigned, batch=OFF_PATH_BATCH)
    async def on_assigned(body: Envelope[CaseAssigned], delivered: int) -> None:
        if rt.policy.concerns(Handling.dispatch, body.data.category, body.data.handling):
            await svc.case_event(body.data, delivered)

    @rt.messaging.consume_each(s.case_event("closed"), CaseClosed, batch=OFF_PATH_BATCH)
    async def on_closed(body: Envelope[CaseClosed]) -> None:
        if rt.policy.concerns(Handling.dispatch, body.data.category):
            await svc.case_event(body.data)

    @rt.messaging.serve(s.command("dispatch", "register_volunteer"))
    async def register_volunteer(body: Envelope[RegisterVolunteer]) -> dict[str, Any]:
        return await svc.register_volunteer(body.id, body.data)

    @rt.messaging.serve(s.command("dispatch", "respond"))
    async def respond(body: Envelope[RespondToOffer]) -> dict[str, Any]:
        return await svc.respond(body.id, body.data)

    @rt.messaging.serve(s.command("dispatch", "claim"))
    async def claim(body: Envelope[ClaimTask]) -> dict[str, Any]:
        return await svc.claim(body.id, body.data)

    @rt.messaging.serve(s.command("dispatch", "complete"))
    async def complete(body: Envelope[CompleteTask]) -> dict[str, Any]:
        return await svc.complete(body.id, body.data)
