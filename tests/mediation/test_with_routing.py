"""Mediation and routing together (both in-process, real servers): the case outcome follows
the dossier — agreement resolves the case; a refusal escalates it and a new dossier opens."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.contract import subjects as s
from shared.contract.case import PartyRef

from ..routing.helpers import build_directory, received
from ..support import command, connect, eventually, running, service_settings, stream_messages
from .support import feed, wait_events

pytestmark = pytest.mark.integration


async def case_events(js, case_id: str) -> list[tuple[str, dict]]:
    out = []
    for m in await stream_messages(js, "GRIDCASE_CASES"):
        env = json.loads(m.data)
        if env["data"]["case_id"] == case_id:
            out.append((env["type"].split(".")[2], env["data"]))
    return out


@pytest.fixture
async def routing_service(nats_url, mongodb_url, db_prefix):
    async with running("routing", service_settings("routing", nats_url, mongodb_url, db_prefix)) as rt:
        yield rt


async def test_agreement_resolves_and_refusal_escalates_with_routing(routing_service, nats_url, mongodb_url, db_prefix) -> None:
    nc = await connect(nats_url)
    js = nc.jetstream()
    mediation = service_settings("mediation", nats_url, mongodb_url, db_prefix)
    async with running("mediation", mediation) as med:
        reply = await command(nc, s.DIRECTORY_LOAD, build_directory(2, 2, 2))
        assert reply["ok"], reply
        await eventually(lambda: med.db.directory.find_one({"_id": "current"}), what="mediators known")

        async def dispute() -> tuple[str, dict]:
            r = received(category="dispute.neighbour", building="c1-g01-b01")
            r = r.model_copy(update={"parties": [PartyRef(ref="p1", role="applicant", language="zh"), PartyRef(ref="p2", role="respondent")]})
            await feed(js, s.case_event("received"), r)
            evs = await wait_events(js, r.case_id, "opened", timeout=15)
            return r.case_id, evs[0][1]

        async def cmd(verb: str, **data) -> dict:
            reply = await command(nc, s.command("mediation", verb), data)
            assert reply["ok"], reply
            return reply

        # 1. consent by all → session → agreement → routing resolves the case
        case_id, opened = await dispute()
        mid, m = opened["mediation_id"], opened["mediator"]
        assert opened["level"] == "grid" and m == "med-c1"
        await cmd("record_consent", mediation_id=mid, by=m, party="p1", consented=True)
        await cmd("record_consent", mediation_id=mid, by=m, party="p2", consented=True)
        await cmd("record_session", mediation_id=mid, by=m, held_at=datetime.now(UTC).isoformat(), attendees=["applicant", "respondent"], summary="面谈")
        await cmd("record_agreement", mediation_id=mid, by=m, terms="互相谅解")

        async def resolved():
            evs = await case_events(js, case_id)
            return next((d for n, d in evs if n == "resolved"), None)

        res = await eventually(resolved, timeout=15, what="routing resolves the case")
        assert res["level"] == "grid"

        # 2. a party refuses → failed → routing escalates to the community → a new dossier there
        case_id, opened = await dispute()
        mid = opened["mediation_id"]
        await cmd("record_consent", mediation_id=mid, by=m, party="p1", consented=False)
        evs = await wait_events(js, case_id, "opened", "failed", "opened", timeout=15)
        second = [d for n, d in evs if n == "opened"][1]
        assert second["level"] == "community" and second["mediation_id"] != mid
        names = [n for n, _ in await case_events(js, case_id)]
        assert "escalated" in names
    await nc.close()
