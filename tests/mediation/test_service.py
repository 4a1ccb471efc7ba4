"""The mediation service against a real nats-server and SecantusDB (DESIGN §3, issue 5)."""

from __future__ import annotations

import asyncio
import io
import os
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.mediation import cli
from shared.contract import subjects as s
from shared.contract.envelope import new_id

from ..support import eventually, running, service_settings
from .conftest import DEFAULT_STAFF, Harness, load_directory
from .support import (
    DIRECTOR,
    assigned,
    closed,
    feed,
    mediation_events,
    new_case_id,
    received,
    staff,
    wait_events,
)

pytestmark = pytest.mark.integration

RECEIVED, ASSIGNED, CLOSED = s.case_event("received"), s.case_event("assigned"), s.case_event("closed")


async def open_case(h: Harness, languages=("zh", "zh"), **kw) -> tuple[str, str, dict]:
    case_id = new_case_id()
    await feed(h.js, RECEIVED, received(case_id, languages))
    await eventually(lambda: h.rt.db.cases.find_one({"_id": case_id}), what="parties stored")
    await feed(h.js, ASSIGNED, assigned(case_id, **kw))
    evs = await wait_events(h.js, case_id, "opened")
    opened = next(d for n, d in evs if n == "opened")
    return case_id, opened["mediation_id"], opened


def held(minutes_ago: int = 0) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()


async def test_consent_session_agreement_follow_up_and_export(med: Harness) -> None:
    case_id, mid, opened = await open_case(med)
    assert opened["level"] == "grid" and opened["version"] == 1
    assert opened["mediator"] == "med-a"  # both speak zh; tie on language and load → smallest id
    due = datetime.fromisoformat(opened["due_by"]) - datetime.fromisoformat(opened["at"])
    assert abs(due - timedelta(days=30)) < timedelta(seconds=1)
    m = "med-a"

    r = await med.cmd("record_consent", mediation_id=mid, by=m, party="p1", consented=True)
    assert r["ok"] and r["state"] == "open" and r["events"] == ["consent_recorded"]
    await med.cmd("record_consent", mediation_id=mid, by=m, party="p2", consented=True)
    r = await med.cmd(
        "record_session", mediation_id=mid, by=m, held_at=held(), attendees=["applicant", "respondent"], summary="双方陈述"
    )
    assert r["ok"], r
    r = await med.cmd(
        "record_session", mediation_id=mid, by=m, held_at=held(), attendees=["applicant", "respondent"], summary="协商赔偿"
    )
    assert r["ok"], r
    r = await med.cmd("record_agreement", mediation_id=mid, by=m, terms="楼上住户修复防水并赔偿500元")
    assert r == {**r, "ok": True, "state": "agreed", "events": ["agreed"]}

    evs = await wait_events(med.js, case_id, "opened", "consent_recorded", "consent_recorded", "session_recorded", "session_recorded", "agreed")
    agreed = next(d for n, d in evs if n == "agreed")
    assert agreed["terms"].startswith("楼上住户") and agreed["mediation_id"] == mid and agreed["level"] == "grid"
    sessions = [d for n, d in evs if n == "session_recorded"]
    assert [x["n"] for x in sessions] == [1, 2]
    versions = [d["version"] for _, d in evs]
    assert versions == list(range(1, len(versions) + 1))

    r = await med.cmd("record_follow_up", mediation_id=mid, by=m, fulfilled=True)
    assert r["ok"] and r["state"] == "closed" and r["events"] == ["followed_up", "closed"]
    await wait_events(med.js, case_id, "agreed", "followed_up", "closed")

    reg = med.rt.registry
    assert reg.get_sample_value("gridcase_mediation_opened_total", {"level": "grid"}) == 1
    assert reg.get_sample_value("gridcase_mediation_agreed_total", {"level": "grid"}) == 1
    assert reg.get_sample_value("gridcase_mediation_days_to_agreement_count", {"level": "grid"}) == 1

    # `gridcase mediation export <id>` reads the database through the environment's settings
    env = {
        "GRIDCASE_MONGODB_URL": med.settings.mongodb_url,
        "GRIDCASE_DATABASE_PREFIX": med.settings.database_prefix,
    }
    out = io.StringIO()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with redirect_stdout(out):
            code = await asyncio.to_thread(cli.main, ["export", mid])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = out.getvalue()
    assert code == 0
    assert mid in text and case_id in text
    order = [
        "Dossier opened",
        "Mediator assigned: med-a",
        "Parties informed of their rights",
        "p1: 同意调解",
        "p2: 同意调解",
        "Session 1",
        "双方陈述",
        "Session 2",
        "协商赔偿",
        "Agreement: 楼上住户修复防水并赔偿500元",
        "Follow-up: 协议已履行",
        "Closed: 回访完毕",
    ]
    positions = [text.find(x) for x in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions, strict=True))
    assert positions == sorted(positions)


async def test_refusal_fails_then_escalated_assignment_opens_a_new_dossier(med: Harness) -> None:
    case_id, mid, _ = await open_case(med)
    r = await med.cmd("record_consent", mediation_id=mid, by="med-a", party="p1", consented=True)
    assert r["ok"]
    r = await med.cmd("record_consent", mediation_id=mid, by="med-a", party="p2", consented=False)
    assert r["ok"] and r["state"] == "failed" and r["events"] == ["consent_recorded", "failed"]
    evs = await wait_events(med.js, case_id, "opened", "consent_recorded", "consent_recorded", "failed")
    failed = [d for n, d in evs if n == "failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "party_declined" and failed[0]["level"] == "grid"
    # nothing more can happen on a failed dossier
    r = await med.cmd("record_session", mediation_id=mid, by="med-a", held_at=held(), attendees=["applicant"], summary="x")
    assert r["error"]["code"] == "invalid_state"

    # routing escalates to the community: a new dossier opens there
    await feed(med.js, ASSIGNED, assigned(case_id, version=4, level="community", reason="escalated"))
    evs = await wait_events(med.js, case_id, "failed", "opened")
    opened = [d for n, d in evs if n == "opened"]
    assert len(opened) == 2
    assert opened[1]["level"] == "community" and opened[1]["mediation_id"] != mid
    assert opened[1]["mediator"] in {"med-a", "med-b"}
    assert await med.rt.db.dossiers.count_documents({"case_id": case_id}) == 2
    reg = med.rt.registry
    assert reg.get_sample_value("gridcase_mediation_failed_total", {"level": "grid", "reason": "party_declined"}) == 1


async def test_overdue_fails_once_across_a_restart(nc, nats_url, mongodb_url, db_prefix, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("mediation_norm: PT3S\n", encoding="utf-8")
    settings = service_settings("mediation", nats_url, mongodb_url, db_prefix, policy_file=policy)
    async with running("mediation", settings) as rt:
        h = Harness(rt, nc, settings)
        await load_directory(h, 1, DEFAULT_STAFF)
        case_id, mid, opened = await open_case(h)
        r = await h.cmd("record_consent", mediation_id=mid, by="med-a", party="p1", consented=True)
        assert r["ok"]
    # the service is down; a new process starts before the dossier is due
    assert datetime.now(UTC) < datetime.fromisoformat(opened["due_by"])
    async with running("mediation", settings) as rt:
        h = Harness(rt, nc, settings)
        evs = await wait_events(h.js, case_id, "failed", timeout=10)
        await asyncio.sleep(1.5)  # several more timer polls
        evs = await mediation_events(h.js, case_id)
        failed = [d for n, d in evs if n == "failed"]
        assert len(failed) == 1 and failed[0]["reason"] == "overdue"
        doc = await h.dossier(case_id)
        assert doc["state"] == "failed" and doc["wake_at"] is None
        r = await h.cmd("record_consent", mediation_id=mid, by="med-a", party="p2", consented=True)
        assert r["ok"] is False and r["error"]["code"] == "invalid_state"
    # and a third start does not fire it again
    async with running("mediation", settings) as rt:
        await asyncio.sleep(1)
        assert [n for n, _ in await mediation_events(nc.jetstream(), case_id)].count("failed") == 1


async def test_commands_out_of_order_are_refused_with_reasons(med: Harness) -> None:
    case_id, mid, _ = await open_case(med)
    m = "med-a"

    async def refused(verb: str, code: str, **data) -> str:
        r = await med.cmd(verb, mediation_id=mid, **data)
        assert r["ok"] is False and r["error"]["code"] == code, r
        assert r["error"]["message"]
        return r["error"]["message"]

    await refused("record_agreement", "consent_missing", by=m, terms="x")
    msg = await refused("record_session", "consent_missing", by=m, held_at=held(), attendees=["applicant"], summary="x")
    assert "p1" in msg and "p2" in msg
    await refused("record_follow_up", "invalid_state", by=m, fulfilled=True)
    await refused("record_consent", "not_allowed", by="med-b", party="p1", consented=True)
    await refused("record_consent", "unknown_party", by=m, party="p9", consented=True)
    await refused("record_failure", "invalid_reason", by=m, reason="overdue")
    r = await med.cmd("record_consent", mediation_id="M-0NOSUCH", by=m, party="p1", consented=True)
    assert r["error"]["code"] == "not_found"

    cid = new_id()
    first = await med.cmd("record_consent", id=cid, mediation_id=mid, by=m, party="p1", consented=True)
    again = await med.cmd("record_consent", id=cid, mediation_id=mid, by=m, party="p1", consented=True)
    assert first == again and first["ok"]
    await refused("record_consent", "already_recorded", by=m, party="p1", consented=True)
    await med.cmd("record_consent", mediation_id=mid, by=m, party="p2", consented=True)
    await refused("record_agreement", "no_session", by=m, terms="x")
    # a community director may act too
    r = await med.cmd("record_session", mediation_id=mid, by=DIRECTOR, held_at=held(), attendees=["applicant"], summary="x")
    assert r["ok"], r
    bad = await med.cmd("record_agreement", mediation_id=mid, by=m, terms="")
    assert bad["error"]["code"] == "invalid"

    evs = await mediation_events(med.js, case_id)
    assert [n for n, _ in evs] == ["opened", "consent_recorded", "consent_recorded", "session_recorded"]
    doc = await med.dossier(case_id)
    assert doc["version"] == 4 and doc["state"] == "open"


async def test_mongolian_speaking_parties_get_a_mongolian_speaking_mediator(med: Harness) -> None:
    # med-a (zh) has fewer open dossiers than med-b (zh, mn) after this one
    _, _, first = await open_case(med, ("zh", "zh"))
    assert first["mediator"] == "med-a"
    _, _, opened = await open_case(med, ("mn", "mn"))
    assert opened["mediator"] == "med-b"
    # a mixed dispute also goes to the one who speaks both
    _, _, mixed = await open_case(med, ("zh", "mn"))
    assert mixed["mediator"] == "med-b"


async def test_assigned_before_received_fills_parties_and_hands_over_by_language(med: Harness) -> None:
    case_id = new_case_id()
    await feed(med.js, ASSIGNED, assigned(case_id))
    evs = await wait_events(med.js, case_id, "opened")
    opened = evs[0][1]
    assert opened["mediator"] == "med-a"  # languages unknown yet
    r = await med.cmd("record_consent", mediation_id=opened["mediation_id"], by="med-a", party="p1", consented=True)
    assert r["error"]["code"] == "parties_unknown"
    await feed(med.js, RECEIVED, received(case_id, ("mn", "zh")))
    evs = await wait_events(med.js, case_id, "opened", "mediator_assigned")
    assert evs[-1][1]["mediator"] == "med-b"
    doc = await med.dossier(case_id)
    assert [p["ref"] for p in doc["parties"]] == ["p1", "p2"] and doc["mediator"] == "med-b"


async def test_redelivered_assignment_opens_one_dossier_and_case_close_closes_it(med: Harness) -> None:
    case_id, mid, _ = await open_case(med)
    again = assigned(case_id)  # the same assignment delivered twice (another envelope id)
    await feed(med.js, ASSIGNED, again)
    await feed(med.js, ASSIGNED, assigned(case_id, version=3, reason="reassigned"))  # same level: keep it
    await asyncio.sleep(1)
    assert await med.rt.db.dossiers.count_documents({"case_id": case_id}) == 1
    await feed(med.js, CLOSED, closed(case_id, version=5))
    evs = await wait_events(med.js, case_id, "opened", "closed")
    assert [n for n, _ in evs] == ["opened", "closed"]
    assert (await med.dossier(case_id))["state"] == "closed"
    # a late (stale) assignment after the close opens nothing
    await feed(med.js, ASSIGNED, assigned(case_id, version=4, level="community", reason="escalated"))
    await asyncio.sleep(1)
    assert await med.rt.db.dossiers.count_documents({"case_id": case_id}) == 1


async def test_no_mediator_in_community_then_assign_mediator(med: Harness) -> None:
    case_id = new_case_id()
    await feed(med.js, RECEIVED, received(case_id, community="empty"))
    await feed(med.js, ASSIGNED, assigned(case_id, community="empty"))
    evs = await wait_events(med.js, case_id, "opened")
    opened = evs[0][1]
    mid = opened["mediation_id"]
    assert opened["mediator"] is None
    r = await med.cmd("record_consent", mediation_id=mid, by="med-a", party="p1", consented=True)
    assert r["error"]["code"] == "no_mediator"
    r = await med.cmd("assign_mediator", mediation_id=mid, by="med-a", mediator="med-a")
    assert r["error"]["code"] == "unknown_mediator"  # med-a mediates in another community
    # the directory gains a director and a mediator for the community
    await load_directory(
        med, 2, [*DEFAULT_STAFF, staff("dir-e", role="community_director", community="empty")]
    )
    r = await med.cmd("assign_mediator", mediation_id=mid, by="med-z", mediator="med-z")
    assert r["error"]["code"] == "unknown_mediator"
    await load_directory(
        med,
        3,
        [*DEFAULT_STAFF, staff("dir-e", role="community_director", community="empty"), staff("med-e", community="empty")],
    )
    # a waiting dossier gets the new mediator automatically
    evs = await wait_events(med.js, case_id, "opened", "mediator_assigned")
    assert evs[-1][1]["mediator"] == "med-e"
    await load_directory(
        med,
        4,
        [
            *DEFAULT_STAFF,
            staff("dir-e", role="community_director", community="empty"),
            staff("med-e", community="empty"),
            staff("med-f", community="empty", languages=("mn",)),
        ],
    )
    r = await med.cmd("assign_mediator", mediation_id=mid, by="med-f", mediator="med-f")
    assert r["error"]["code"] == "not_allowed"
    r = await med.cmd("assign_mediator", mediation_id=mid, by="dir-e", mediator="med-f")
    assert r["ok"] and r["events"] == ["mediator_assigned"]
    evs = await wait_events(med.js, case_id, "mediator_assigned", "mediator_assigned")
    assert evs[-1][1]["mediator"] == "med-f"


async def test_received_and_assigned_racing_for_many_cases(med: Harness) -> None:
    cases = [new_case_id() for _ in range(12)]
    sends = []
    for i, case_id in enumerate(cases):
        langs = ("mn", "mn") if i % 3 == 0 else ("zh", "zh")
        pair = [feed(med.js, RECEIVED, received(case_id, langs)), feed(med.js, ASSIGNED, assigned(case_id))]
        sends.extend(pair if i % 2 else reversed(pair))
    await asyncio.gather(*sends)

    async def settled():
        docs = await med.rt.db.dossiers.find({"case_id": {"$in": cases}}).to_list()
        return docs if len(docs) == len(cases) and all(d["parties_known"] for d in docs) else None

    docs = await eventually(settled, timeout=20, what="every dossier opened with its parties")
    assert sorted(d["case_id"] for d in docs) == sorted(cases)
    for i, case_id in enumerate(cases):
        d = next(x for x in docs if x["case_id"] == case_id)
        assert [p["ref"] for p in d["parties"]] == ["p1", "p2"]
        if i % 3 == 0:  # Mongolian-speaking parties end with the Mongolian-speaking mediator
            assert d["mediator"] == "med-b"
    assert await med.rt.db.cases.count_documents({"_id": {"$in": cases}, "assigned_version": 2}) == len(cases)
