"""Wiring of the routing service: subscribers, commands, indexes, start hooks, timers."""

from typing import Any

from shared.app import Runtime
from shared.contract import case as case_contract
from shared.contract import subjects as s
from shared.contract.directory import Directory
from shared.contract.dispatch import TaskCompleted, TaskUnfilledV2
from shared.contract.envelope import Envelope
from shared.contract.mediation import MediationAgreed, MediationFailed, MediationOpened
from shared.timers import DuePoller

from . import domain
from .handlers import Routing
from .store import Store

COMMAND_MODELS: dict[str, type] = {
    "accept": case_contract.AcceptCase,
    "note": case_contract.NoteCase,
    "pause": case_contract.PauseCase,
    "resume": case_contract.ResumeCase,
    "resolve": case_contract.ResolveCase,
    "escalate": case_contract.EscalateCase,
    "refer": case_contract.ReferCase,
    "feedback": case_contract.RecordFeedback,
    "reassign": case_contract.ReassignCase,
    "withdraw": case_contract.WithdrawCase,
}


def register(rt: Runtime) -> None:
    routing = Routing(rt)
    rt.routing = routing  # type: ignore[attr-defined]  # for tests and tools in this process
    Store.declare(rt.indexes)
    rt.on_start.append(routing.start)
    rt.on_start.append(routing.listen_for_directory)
    # overlap: `on_due` decides and writes disjoint cases safely side by side (each write is
    # guarded by the case's revision). Two batches in hand: one is written while the next is
    # read and decided. More keep the embedded database no busier but slower: its transactions
    # then contend (100,000 due over 60 s: p99 0.54 s late with 2, 2.1 s with 4, 6.6 s with 1)
    poller = DuePoller(routing.store.cases, routing.on_due, interval=rt.settings.timer_poll_s, batch=1000, overlap=2)
    rt.background.append(poller.run_forever)
    rt.background.append(routing.watch_directory)
    rt.on_stop.append(routing.received.drain)
    rt.on_stop.append(routing.outcomes.drain)

    @rt.messaging.serve(s.DIRECTORY_LOAD)
    async def load_directory(body: Envelope[Directory]) -> dict[str, Any]:
        return await routing.load_directory(body)

    for verb, model in COMMAND_MODELS.items():
        _serve_command(rt, routing, verb, model)

    @rt.messaging.consume_each(s.case_event("received"), case_contract.CaseReceived, batch=256, hot=True)
    async def on_received(body: Envelope[case_contract.CaseReceived]) -> None:
        await routing.on_received(body)

    @rt.messaging.consume(s.mediation_event("opened"))
    async def on_mediation_opened(body: Envelope[MediationOpened]) -> None:
        d = body.data
        await routing.apply_external(
            d.case_id, body.id, lambda case, ctx: domain.mediation_opened(case, d.mediation_id, d.level, d.mediator, ctx)
        )

    @rt.messaging.consume(s.mediation_event("agreed"))
    async def on_mediation_agreed(body: Envelope[MediationAgreed]) -> None:
        d = body.data
        await routing.apply_external(
            d.case_id, body.id, lambda case, ctx: domain.mediation_agreed(case, d.mediation_id, d.level, ctx)
        )

    @rt.messaging.consume(s.mediation_event("failed"))
    async def on_mediation_failed(body: Envelope[MediationFailed]) -> None:
        d = body.data
        await routing.apply_external(d.case_id, body.id, lambda case, ctx: domain.mediation_failed(case, d.level, ctx))

    @rt.messaging.consume(s.dispatch_event("completed"))
    async def on_dispatch_completed(body: Envelope[TaskCompleted]) -> None:
        d = body.data
        if d.case_id:
            await routing.apply_external(
                d.case_id, body.id, lambda case, ctx: domain.dispatch_completed(case, d.volunteer, ctx)
            )

    @rt.messaging.consume(s.DISPATCH_UNFILLED_V2)
    async def on_dispatch_unfilled(body: Envelope[TaskUnfilledV2]) -> None:
        d = body.data
        if d.case_id:
            await routing.apply_external(
                d.case_id, body.id, lambda case, ctx: domain.dispatch_unfilled(case, d.level, ctx)
            )


def _serve_command(rt: Runtime, routing: Routing, verb: str, model: type) -> None:
    async def handle(body: Envelope[model]) -> dict[str, Any]:  # type: ignore[valid-type]
        return await routing.command(verb, body)

    handle.__name__ = f"case_{verb}"
    handle.__annotations__ = {"body": Envelope[model], "return": dict[str, Any]}  # type: ignore[valid-type]
    rt.messaging.serve(s.command("case", verb))(handle)
