"""Intake against a real nats-server and SecantusDB (issue 3, "What must be shown")."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

import pytest

from services.intake.store import IntakeStore
from shared.contract import subjects as s
from shared.contract.envelope import Envelope, new_id
from shared.logs import JsonFormatter

from ..support import command, connect, eventually, publish, running, service_settings
from .helpers import (
    RECEIVED,
    case_assigned,
    case_closed,
    directory_changed,
    invalid_report,
    leaks,
    report,
    stream_messages,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(nats_url, mongodb_url, db_prefix, tmp_path):
    return service_settings("intake", nats_url, mongodb_url, db_prefix, data_dir=tmp_path / "data")


class Captured(logging.Handler):
    """Every log line as the service would write it (JSON with its fields), for the privacy grep."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> bytes:
        return "\n".join(self.lines).encode()


@pytest.fixture
def logs():
    handler = Captured()
    root, gridcase = logging.getLogger(), logging.getLogger("gridcase")
    levels = root.level, gridcase.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    gridcase.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(levels[0])
    gridcase.setLevel(levels[1])


@pytest.fixture
async def nc(nats_url):
    client = await connect(nats_url)
    yield client
    await client.close()


async def received_events(js) -> list[dict]:
    return [json.loads(m.data) for m in await stream_messages(js, "GRIDCASE_CASES", RECEIVED)]


async def count(coll, query=None) -> int:
    return await coll.count_documents(query or {})


async def submit(nc, data, *, id: str | None = None) -> dict:
    return await command(nc, s.INTAKE_SUBMIT, data, id=id, timeout=30)


async def publish_all(js, items) -> None:
    """Publish many envelopes quickly (async acks), each with its own `Nats-Msg-Id`."""
    futures = []
    for data in items:
        env = Envelope.new(s.INTAKE_REPORT, data, source="/tests")
        futures.append(await js.publish_async(s.INTAKE_REPORT, env.to_json(), headers={"Nats-Msg-Id": env.id}))
    await asyncio.gather(*futures)


async def test_reports_become_cases_exactly_once(settings, nc, logs) -> None:
    """1,000 valid reports (800 distinct + 200 exact repeats) and 50 invalid ones, on both subjects:
    800 cases, 800 `received`, 50 `rejected`, 50 quarantined; repeats answer the original case."""
    js = nc.jetstream()
    async with running("intake", settings) as rt:
        reports = rt.db.reports
        # 800 originals: even ones on JetStream, odd ones by submit, all at once
        originals = [report(i, channel="hotline_12345" if i % 3 else "wechat") for i in range(800)]
        replies_1 = await asyncio.gather(
            publish_all(js, originals[0::2]), *(submit(nc, r) for r in originals[1::2])
        )
        assert all(r["ok"] and r["status"] == "accepted" for r in replies_1[1:])
        await eventually(lambda: _eq(count(reports), 800), timeout=60, what="800 cases")
        by_external = {e["data"]["external_id"]: e["data"]["case_id"] for e in await eventually(
            lambda: _at_least(received_events(js), 800), timeout=20, what="800 received events")}

        # 200 exact repeats (new envelope ids): half by submit, half on JetStream, crossing subjects;
        # 50 invalid: half by submit, half on JetStream
        repeats = [originals[i] for i in range(0, 800, 4)]
        submit_repeats, js_repeats = repeats[:100], repeats[100:]
        invalid = [invalid_report(1000 + i) for i in range(50)]
        results = await asyncio.gather(
            publish_all(js, js_repeats + invalid[:25]),
            *(submit(nc, r) for r in submit_repeats),
            *(submit(nc, r) for r in invalid[25:]),
        )
        repeat_replies, invalid_replies = results[1:101], results[101:]
        for data, reply in zip(submit_repeats, repeat_replies, strict=True):
            assert reply == {"ok": True, "status": "duplicate", "case_id": by_external[data["external_id"]]}
        for reply in invalid_replies:
            assert reply["ok"] is False and reply["error"]["code"] == "invalid", logs.lines[-20:]
            assert reply["error"]["quarantine_id"].startswith("Q-")
            assert {"data.title", "data.reporter.phone"} <= {d["path"] for d in reply["error"]["details"]}

        await eventually(lambda: _eq(count(rt.db.quarantine), 50), timeout=30, what="50 quarantined")
        rejected = await eventually(
            lambda: _at_least(_msgs(js, "GRIDCASE_INTAKE", s.INTAKE_REJECTED), 50), timeout=20, what="50 rejected"
        )
        await eventually(lambda: _metric(rt, "gridcase_intake_reports_received_total") == 1050, what="all taken")
        await asyncio.sleep(1.0)  # anything extra would have arrived by now

        events = await received_events(js)
        assert len(events) == 800
        assert len({e["data"]["external_id"] for e in events}) == 800
        assert len({e["data"]["case_id"] for e in events}) == 800
        assert all(e["subject"] == e["data"]["case_id"] and e["source"] == "/gridcase/intake" for e in events)
        assert await count(reports) == 800 and len(await reports.distinct("case_id")) == 800
        assert len(await _msgs(js, "GRIDCASE_INTAKE", s.INTAKE_REJECTED)) == 50
        assert await stream_messages(js, "GRIDCASE_DLQ") == []
        notices = [json.loads(m.data)["data"] for m in rejected]
        assert {n["quarantine_id"] for n in notices} == set(await rt.db.quarantine.distinct("_id"))
        assert sum(1 for n in notices if n["channel"] is None) == 25  # the "fax" ones: channel unreadable
        assert all(n["external_id"].startswith("ext-10") for n in notices)

        # the raw bytes are kept (encrypted) in quarantine
        q = await rt.db.quarantine.find_one({})
        raw = rt.intake.privacy.open_bytes(q["raw"])
        assert json.loads(raw)["data"]["external_id"] == q["external_id"]
        assert not leaks(bytes(q["raw"]))

        # metrics
        m = lambda name, **labels: _metric(rt, name, **labels)  # noqa: E731
        assert m("gridcase_intake_reports_accepted_total") == 800
        assert m("gridcase_intake_reports_duplicate_total") == 200
        assert m("gridcase_intake_reports_rejected_total", reason="invalid") == 50

        # privacy: nothing intake published or logged holds a test name or phone
        published = await stream_messages(js, "GRIDCASE_CASES") + rejected + await stream_messages(js, "GRIDCASE_DLQ")
        for msg in published:
            assert not leaks(msg.data + json.dumps(msg.headers or {}).encode()), msg.subject
        assert not leaks(json.dumps(results[1:], ensure_ascii=False).encode())
        assert all(not e["data"].get("reporter") for e in events)
        assert logs.lines and not leaks(logs.text())
        # stored documents hold phones only encrypted and hashed
        doc = await reports.find_one({})
        assert not leaks(json.dumps(doc, default=str, ensure_ascii=False).encode())
        assert len(doc["phone_hashes"]) == 2


async def test_same_command_envelope_answers_as_the_first_time(settings, nc) -> None:
    async with running("intake", settings):
        env_id = new_id()
        first = await submit(nc, report(1), id=env_id)
        again = await submit(nc, report(1), id=env_id)
        other = await submit(nc, report(1))
        assert first["status"] == "accepted" and again == first
        assert other == {**first, "status": "duplicate"}
        bad_id = new_id()
        bad = await submit(nc, invalid_report(2), id=bad_id)
        assert await submit(nc, invalid_report(2), id=bad_id) == bad
        garbage = await nc.request(s.INTAKE_SUBMIT, b"\xff{", timeout=5)
        assert json.loads(garbage.data)["error"]["details"] == [{"path": "(body)", "message": "not a JSON document"}]


async def test_two_instances_make_no_duplicate_case(settings, nc) -> None:
    """Two replicas share the durable and the submit queue group; every report arrives four
    times (twice on JetStream, twice by submit), all at once: still one case per report."""
    js = nc.jetstream()
    second = settings.model_copy(update={"http_port": settings.http_port + 1})
    async with running("intake", settings) as a, running("intake", second) as b:
        items = [report(i) for i in range(300)]
        replies = await asyncio.gather(
            publish_all(js, items), publish_all(js, items),
            *(submit(nc, r) for r in items), *(submit(nc, r) for r in items),
        )
        await eventually(lambda: _eq(count(a.db.reports), 300), timeout=60, what="300 cases")
        await eventually(
            lambda: sum(_metric(rt, "gridcase_intake_reports_received_total") for rt in (a, b)) >= 1200,
            timeout=60, what="every message taken",
        )
        await eventually(lambda: _no_pending(js), timeout=60, what="consumer caught up")
        await asyncio.sleep(1.0)
        events = await received_events(js)
        assert len(events) == 300 and len({e["data"]["external_id"] for e in events}) == 300
        assert len(await a.db.reports.distinct("case_id")) == 300
        case_of = {e["data"]["external_id"]: e["data"]["case_id"] for e in events}
        for data, reply in zip(items + items, replies[2:], strict=True):
            assert reply["ok"] and reply["case_id"] == case_of[data["external_id"]], reply
        assert Counter(r["status"] for r in replies[2:])["duplicate"] >= 300
        # both replicas did real work, and only 300 reports opened a case between them
        assert all(_metric(rt, "gridcase_intake_reports_received_total") > 0 for rt in (a, b))
        assert sum(_metric(rt, "gridcase_intake_reports_accepted_total") for rt in (a, b)) == 300


async def test_duplicate_linking_to_open_cases(settings, nc) -> None:
    js = nc.jetstream()
    async with running("intake", settings) as rt:
        a = await submit(nc, report(1, building="jl-b7", category="facility.parking"))
        b = await submit(nc, report(2, building="JL-B7", category="facility.parking"))
        c = await submit(nc, report(3, building="jl-b7", category="environment.sanitation"))
        addr = {"community": "jl", "address": "胜利路３号 ２单元"}
        e = await submit(nc, report(4, location=addr))
        f = await submit(nc, report(5, location={"address": "胜利路3号2单元"}))
        g = await submit(nc, report(6, location={"grid": "jl-g1"}))
        h = await submit(nc, report(7, location={"grid": "jl-g1"}))
        # several in one batch: the later ones link to the first of the batch
        batch = await asyncio.gather(*(submit(nc, report(100 + i, building="jl-b9")) for i in range(20)))
        events = {ev["data"]["case_id"]: ev["data"] for ev in await eventually(
            lambda: _at_least(received_events(js), 27), what="events")}
        dup = lambda reply: events[reply["case_id"]]["duplicate_of"]  # noqa: E731
        assert dup(a) is None and dup(b) == a["case_id"]
        assert dup(c) is None
        assert dup(e) is None and dup(f) == e["case_id"]
        assert dup(g) is None and dup(h) is None  # a grid alone is no place to link on
        firsts = [r for r in batch if dup(r) is None]
        assert len(firsts) == 1 and all(dup(r) == firsts[0]["case_id"] for r in batch if r is not firsts[0])
        # once closed (both), a new report opens an unlinked case
        for reply, version in ((a, 5), (b, 3)):
            await publish(js, s.case_event("closed"), case_closed(reply["case_id"], version))
        await eventually(lambda: _closed(rt, a["case_id"], b["case_id"]), what="closures learnt")
        d = await submit(nc, report(8, building="jl-b7", category="facility.parking"))
        events = {ev["data"]["case_id"]: ev["data"] for ev in await received_events(js)}
        assert events[d["case_id"]]["duplicate_of"] is None
        assert rt.registry.get_sample_value("gridcase_intake_reports_linked_total", {"channel": "wechat"}) == 21


async def test_scope_uses_the_directory(settings, nc) -> None:
    js = nc.jetstream()
    async with running("intake", settings) as rt:
        await publish(js, s.DIRECTORY_CHANGED, directory_changed(1, {"jl": ["dir-1"]}))
        await eventually(lambda: rt.intake.directory.version == 1, what="directory learnt")
        r = await submit(nc, report(1, location={"grid": "jl-g1"}))
        events = await eventually(lambda: _at_least(received_events(js), 1), what="event")
        assert events[0]["data"]["case_id"] == r["case_id"]
        assert events[0]["data"]["scope"] == {"district": "linhe", "community": "jl", "grid": "jl-g1"}
        assert events[0]["data"]["located"] is False


async def test_contact_lookup_only_for_assignee_or_director_and_audited(settings, nc, logs) -> None:
    js = nc.jetstream()
    contact = s.INTAKE_CONTACT
    async with running("intake", settings) as rt:
        case_id = (await submit(nc, report(42, location={"address": "somewhere"})))["case_id"]
        await publish(js, s.DIRECTORY_CHANGED, directory_changed(2, {"jl": ["dir-jl"], "xh": ["dir-xh"]}))
        await publish(js, s.DIRECTORY_CHANGED, directory_changed(1, {"jl": ["dir-old"]}))  # stale: ignored
        await publish(js, s.case_event("assigned"), case_assigned(case_id, 2, "gw-1"))
        await eventually(lambda: _assigned(rt, case_id, "gw-1"), what="assignment learnt")
        await eventually(lambda: _dir_version(rt, 2), what="directory learnt")
        await asyncio.sleep(0.3)

        ask = lambda who, purpose="回访": command(nc, contact, {"case_id": case_id, "requested_by": who, "purpose": purpose})  # noqa: E731
        granted = await ask("gw-1")
        assert granted["ok"] is True and granted["case_id"] == case_id
        assert granted["reporter"] == {"anonymous": False, "name": "测试姓名甲", "phone": "13987650042"}
        assert granted["parties"][0]["ref"] == "p1" and granted["parties"][0]["phone"] == "13987655042"
        assert (await ask("dir-jl"))["ok"] is True
        for who in ("gw-2", "dir-xh", "dir-old"):
            refused = await ask(who)
            assert refused == {"ok": False, "error": {"code": "not_allowed", "message": refused["error"]["message"]}}
        unknown = await command(nc, contact, {"case_id": "C-0000000000", "requested_by": "dir-jl", "purpose": "x"})
        assert unknown["error"]["code"] == "not_allowed"

        # reassigned: the new assignee may, the old one may not; a stale assignment changes nothing
        await publish(js, s.case_event("assigned"), case_assigned(case_id, 4, "gw-9"))
        await eventually(lambda: _assigned(rt, case_id, "gw-9"), what="reassignment learnt")
        await publish(js, s.case_event("assigned"), case_assigned(case_id, 3, "gw-1"))
        await asyncio.sleep(0.5)
        assert (await ask("gw-1"))["ok"] is False
        assert (await ask("gw-9"))["ok"] is True

        # a repeated command (same envelope id) is audited once
        cmd_id = new_id()
        await command(nc, contact, {"case_id": case_id, "requested_by": "gw-2", "purpose": "x"}, id=cmd_id)
        await command(nc, contact, {"case_id": case_id, "requested_by": "gw-2", "purpose": "x"}, id=cmd_id)

        audit = await rt.db.contact_audit.find({}).sort("audit_id", 1).to_list()
        assert [(a["requested_by"], a["granted"]) for a in audit] == [
            ("gw-1", True), ("dir-jl", True), ("gw-2", False), ("dir-xh", False), ("dir-old", False),
            ("dir-jl", False), ("gw-1", False), ("gw-9", True), ("gw-2", False),
        ]
        assert all(a["at"] and a["purpose"] for a in audit)
        assert _metric(rt, "gridcase_intake_contact_lookups_total", outcome="granted") == 3
        assert _metric(rt, "gridcase_intake_contact_lookups_total", outcome="refused") == 6
        assert any("contact look-up" in line for line in logs.lines)
        assert not leaks(logs.text())


# ---- helpers ----------------------------------------------------------------------------


async def _eq(value_coro, expected):
    return (await value_coro) == expected


async def _at_least(coro, n: int):
    items = await coro
    return items if len(items) >= n else None


async def _msgs(js, stream: str, subject: str):
    return await stream_messages(js, stream, subject)


def _metric(rt, name: str, **labels) -> float:
    total = 0.0
    for family in rt.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def _no_pending(js) -> bool:
    info = await js.consumer_info("GRIDCASE_INTAKE", "intake-intake-report")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _assigned(rt, case_id: str, who: str) -> bool:
    doc = await IntakeStore(rt.db).by_case(case_id)
    return bool(doc and doc.get("assignee") == who)


async def _closed(rt, *case_ids: str) -> bool:
    views = [await IntakeStore(rt.db).by_case(c) for c in case_ids]
    return all(v is not None and v["open"] is False for v in views)


async def _dir_version(rt, version: int) -> bool:
    doc = await rt.db.directory.find_one({"_id": "current"})
    return bool(doc and doc["version"] == version)


async def test_a_report_whose_key_is_locked_holds_up_only_itself(settings, nc, mongodb_url, db_prefix) -> None:
    """A key held by someone else's open transaction (what a killed process leaves until the
    database reaps it) makes only that report wait: the rest of its batch become cases."""
    from pymongo import AsyncMongoClient

    from services.intake.domain import report_key

    js = nc.jetstream()
    async with running("intake", settings), AsyncMongoClient(mongodb_url) as client:
        reports = client[f"{db_prefix}_intake"]["reports"]
        session = client.start_session()
        await session.start_transaction()
        await reports.insert_one({"_id": report_key("wechat", "ext-7"), "case_id": "C-LOCK"}, session=session)
        try:
            for i in range(40):
                await publish(js, s.INTAKE_REPORT, report(i))
            await eventually(lambda: _eq(count(reports), 39), timeout=30, what="the 39 others stored")
            assert await reports.find_one({"_id": report_key("wechat", "ext-7")}) is None
        finally:
            await session.abort_transaction()
            await session.end_session()
        await eventually(lambda: _eq(count(reports), 40), timeout=30, what="the held report once freed")
        events = await eventually(lambda: _at_least(received_events(js), 40), what="40 received events")
        assert Counter(e["data"]["external_id"] for e in events) == Counter(f"ext-{i}" for i in range(40))


async def test_a_store_from_before_the_case_view_is_migrated_once(mongodb_url, db_prefix) -> None:
    """Reports written when they carried the case's state themselves get a `cases` view at start."""
    from pymongo import AsyncMongoClient

    from services.intake.store import IntakeStore

    async with AsyncMongoClient(mongodb_url) as client:
        db = client[f"{db_prefix}_intake"]
        await db.reports.insert_many([
            {"_id": "wechat:old-1", "case_id": "C-OLD1", "open": False, "assignee": "gw-1", "assigned_version": 3,
             "closed_version": 5, "community": "jl", "grid": "jl-g1", "district": "linhe"},
            {"_id": "wechat:old-2", "case_id": "C-OLD2", "open": True, "assignee": None, "assigned_version": 0,
             "community": "jl", "grid": None, "district": "linhe"},
        ])
        store = IntakeStore(db)
        await store.migrate()
        await store.migrate()  # a second start (or a replica) changes nothing
        one = await db.cases.find_one({"_id": "C-OLD1"})
        assert one is not None and one["report"] == "wechat:old-1" and one["open"] is False
        assert one["assignee"] == "gw-1" and one["assigned_version"] == 3 and one["closed_version"] == 5
        assert await db.cases.count_documents({}) == 2
        contact = await store.by_case("C-OLD2")
        assert contact is not None and contact["_id"] == "C-OLD2" and contact["report"] == "wechat:old-2"
