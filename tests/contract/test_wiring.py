"""Fast wiring checks through FastStream's in-memory TestNatsBroker (no servers)."""

from __future__ import annotations

from typing import Any

import pytest
from faststream.nats import TestNatsBroker

from shared.app import Runtime, build_app
from shared.contract import subjects as s
from shared.contract.case import AcceptCase
from shared.contract.envelope import Envelope
from shared.contract.intake import Report
from shared.errors import DomainError
from shared.settings import Settings

pytestmark = pytest.mark.contract

REPORT = {"channel": "wechat", "external_id": "w-1", "reported_at": "2026-11-30T00:00:00Z", "title": "t", "location": {"grid": "g1"}}


def _register(seen: list[Any]):
    def register(rt: Runtime) -> None:
        @rt.messaging.consume(s.INTAKE_REPORT)
        async def on_report(body: Envelope[Report]) -> None:
            seen.append(body.data)

        @rt.messaging.serve(s.command("case", "accept"))
        async def accept(body: Envelope[AcceptCase]) -> dict[str, Any]:
            if body.data.by == "nobody":
                raise DomainError("not_assignee", "only the assignee may accept")
            return {"ok": True}

    return register


async def test_typed_consumer_and_command_errors() -> None:
    seen: list[Any] = []
    _, rt = build_app("probe", Settings(service="probe"), _register(seen))
    async with TestNatsBroker(rt.broker) as broker:
        env = Envelope.new(s.INTAKE_REPORT, REPORT, source="/tests")
        await broker.publish(env.to_json(), s.INTAKE_REPORT, stream="GRIDCASE_INTAKE")
        assert seen and seen[0].channel == "wechat"

        subject = s.command("case", "accept")
        ok = await broker.request(Envelope.new(subject, {"case_id": "C-1A", "by": "s-1"}, source="/t").to_json(), subject)
        assert await ok.decode() == {"ok": True}
        refused = await broker.request(Envelope.new(subject, {"case_id": "C-1A", "by": "nobody"}, source="/t").to_json(), subject)
        assert (await refused.decode())["error"]["code"] == "not_assignee"
        invalid = await broker.request(Envelope.new(subject, {"case_id": "bad"}, source="/t").to_json(), subject)
        body = await invalid.decode()
        assert body["ok"] is False and body["error"]["code"] == "invalid"
        assert {d["path"] for d in body["error"]["details"]} == {"data.case_id", "data.by"}


def test_asyncapi_documents_consumers_commands_and_published_events() -> None:
    from shared.app import asyncapi_document

    _, rt = build_app("intake", Settings(service="intake"), _register([]))
    doc = asyncapi_document(rt)
    assert doc["asyncapi"].startswith("3.")
    addresses = {c.get("address") for c in doc["channels"].values()}
    assert s.INTAKE_REPORT in addresses
    assert s.case_event("received") in addresses  # documented publication
    assert s.command("case", "accept") in addresses
