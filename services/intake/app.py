"""Wiring of the intake service: subscribers, indexes, background loops."""

from __future__ import annotations

from typing import Any

from shared.app import Runtime
from shared.batching import OFF_PATH_BATCH
from shared.contract import subjects as s
from shared.contract.case import CaseAssigned, CaseClosed
from shared.contract.directory import DirectoryChanged
from shared.contract.envelope import Envelope
from shared.contract.intake import ContactRequest

from .handlers import Intake
from .privacy import Privacy
from .store import IntakeStore

SUBMIT_WORKERS = 256
REPORT_BATCH = 512


async def raw_body(msg: Any) -> bytes:
    """FastStream decoder: the message body as received."""
    return msg.body


def register(rt: Runtime) -> None:
    store = IntakeStore(rt.db)
    store.declare(rt.indexes)
    intake = Intake(rt, store)
    rt.intake = intake  # type: ignore[attr-defined]  # for tests and tools

    async def load_key() -> None:  # at start, not at build: `gridcase docs` builds apps too
        intake.privacy = Privacy.from_settings(rt.settings)

    rt.on_start.append(load_key)
    rt.on_start.append(store.migrate)

    # Reports: the raw bytes are validated by intake itself, so an invalid report is answered,
    # announced and quarantined instead of being dead-lettered. Whole fetched batches go to one
    # call (no per-message framework cost, raw bytes: intake decodes once, itself); the next
    # batch is parsed while the previous one is being written.
    @rt.messaging.consume_batches(
        s.INTAKE_REPORT, batch=REPORT_BATCH, overlap=6, hot=True, description="A platform submits a report (Report envelope)"
    )
    async def on_reports(bodies: list[bytes]) -> list[Exception | None]:
        outcomes = await intake.take_many(bodies, s.INTAKE_REPORT)
        return [o if isinstance(o, Exception) else None for o in outcomes]  # failed ones are retried

    # max_workers: concurrent submits share batched writes (core subscriptions are sequential by default)
    @rt.messaging.serve(
        s.INTAKE_SUBMIT, decoder=raw_body, max_workers=SUBMIT_WORKERS, description="Submit a report; answers accepted/duplicate + case_id"
    )
    async def on_submit(body: bytes) -> dict[str, Any]:
        return (await intake.take(body, s.INTAKE_SUBMIT)).reply()

    @rt.messaging.serve(s.INTAKE_CONTACT)
    async def on_contact(body: Envelope[ContactRequest]) -> dict[str, Any]:
        return await intake.contact(body.data, body.id)

    @rt.messaging.consume_each(s.case_event("assigned"), CaseAssigned, batch=OFF_PATH_BATCH)
    async def on_assigned(body: Envelope[CaseAssigned]) -> None:
        await intake.on_assigned(body.data)

    @rt.messaging.consume_each(s.case_event("closed"), CaseClosed, batch=OFF_PATH_BATCH)
    async def on_closed(body: Envelope[CaseClosed]) -> None:
        await intake.on_closed(body.data)

    @rt.messaging.consume(s.DIRECTORY_CHANGED)
    async def on_directory(body: Envelope[DirectoryChanged]) -> None:
        await intake.on_directory(body.data)

    rt.on_start.append(intake.refresh_directory)
    rt.background.append(intake.refresh_forever)

    async def drain() -> None:
        await intake.coalescer.drain()

    rt.on_stop.append(drain)
