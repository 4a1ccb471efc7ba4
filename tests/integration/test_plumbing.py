"""DESIGN §4 against a real nats-server and SecantusDB: DLQ, back-off, dedupe, max_deliver, outbox."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
import pytest
from prometheus_client import CollectorRegistry
from pymongo import InsertOne, UpdateOne
from pymongo.errors import PyMongoError

from shared.app import Runtime, build_app
from shared.contract import subjects as s
from shared.contract.case import AcceptCase
from shared.contract.envelope import Envelope, new_id
from shared.contract.intake import Report
from shared.contract.subjects import dlq_subject
from shared.errors import Conflict, DomainError, lost_race, only_duplicates
from shared.messaging import ConsumerSpec, DeadLetters, declare_streams, ensure_consumer
from shared.outbox import ONE_STATEMENT_MAX, SimulatedCrash, UnitOfWork

from ..support import (
    command,
    connect,
    eventually,
    publish,
    running,
    service_settings,
    stream_messages,
)

pytestmark = pytest.mark.integration

REPORT = {
    "channel": "wechat",
    "external_id": "x-1",
    "reported_at": "2026-11-30T08:00:00+08:00",
    "title": "楼道灯坏了",
    "location": {"building": "jl-b1"},
}


def probe_service(attempts: dict[str, list[float]], how: str = "consume", deliveries: dict[str, list[int]] | None = None):
    """A tiny service: fails per the report's title, records each attempt, emits one event.
    `how`: its report consumer is `consume` (FastStream, message by message) or `consume_each`
    (whole fetched batches): both must treat failures alike."""

    def register(rt: Runtime) -> None:
        async def on_report(body: Envelope[Report], delivered: int = 0) -> None:
            key = body.data.external_id
            attempts.setdefault(key, []).append(time.monotonic())
            if deliveries is not None:
                deliveries.setdefault(key, []).append(delivered)
            if body.data.title == "always-fails":
                raise RuntimeError("database unreachable")
            if body.data.title == "fails-twice" and len(attempts[key]) <= 2:
                raise ConnectionError("transient")
            async with rt.outbox.unit_of_work() as uow:
                await rt.db.seen.insert_one({"_id": key}, session=uow.session)
                uow.emit(rt.event(s.INTAKE_REJECTED, {"errors": [], "quarantine_id": key, "at": "2026-11-30T00:00:00Z"}))

        if how == "consume_each":
            rt.messaging.consume_each(s.INTAKE_REPORT, Report)(on_report)
        else:

            @rt.messaging.consume(s.INTAKE_REPORT)
            async def on_report_message(body: Envelope[Report]) -> None:
                await on_report(body)

        @rt.messaging.serve(s.command("case", "accept"))
        async def accept(body: Envelope[AcceptCase]) -> dict[str, Any]:
            if body.data.by == "nobody":
                raise DomainError("not_assignee", "only the assignee may accept")
            return {"ok": True, "case_id": body.data.case_id}

    return register


@pytest.fixture(params=["consume", "consume_each"])
async def probe(request, nats_url: str, mongodb_url: str, db_prefix: str):
    attempts: dict[str, list[float]] = {}
    settings = service_settings("probe", nats_url, mongodb_url, db_prefix, max_deliver=3)
    nc = await connect(nats_url)
    async with running("probe", settings, probe_service(attempts, request.param)) as rt:
        yield rt, nc, attempts
    await nc.close()


async def test_consume_each_hands_the_delivery_count_to_a_handler_that_asks(nats_url, mongodb_url, db_prefix) -> None:
    attempts: dict[str, list[float]] = {}
    deliveries: dict[str, list[int]] = {}
    settings = service_settings("probe", nats_url, mongodb_url, db_prefix, max_deliver=3)
    nc = await connect(nats_url)
    async with running("probe", settings, probe_service(attempts, "consume_each", deliveries)):
        await publish(nc.jetstream(), s.INTAKE_REPORT, {**REPORT, "external_id": "n-1", "title": "fails-twice"})
        await eventually(lambda: len(deliveries.get("n-1", [])) == 3, timeout=15, what="third delivery")
        assert deliveries["n-1"] == [1, 2, 3]
    await nc.close()


async def test_invalid_payload_goes_to_dlq_and_consumer_keeps_going(probe) -> None:
    rt, nc, attempts = probe
    js = nc.jetstream()
    await js.publish(s.INTAKE_REPORT, b"{not json", headers={"Nats-Msg-Id": "bad-1"})
    await publish(js, s.INTAKE_REPORT, {**REPORT, "channel": "fax"})  # unknown enum value
    await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": "good-1"})

    await eventually(lambda: "good-1" in attempts, what="valid report after bad ones")
    dlq = await eventually(lambda: _dlq(js, 2), what="two DLQ entries")
    reasons = {m.headers["Gridcase-Dlq-Reason"] for m in dlq}
    assert reasons == {"invalid"}
    details = " ".join(m.headers["Gridcase-Dlq-Detail"] for m in dlq)
    assert "data.channel" in details  # the field path of the bad enum
    assert all(m.subject == "gridcase.dlq.GRIDCASE_INTAKE.probe-intake-report" for m in dlq)
    assert {m.data for m in dlq} >= {b"{not json"}  # the raw bytes are kept for inspection


async def test_transient_failure_is_retried_with_backoff(probe) -> None:
    rt, nc, attempts = probe
    await publish(nc.jetstream(), s.INTAKE_REPORT, {**REPORT, "external_id": "t-1", "title": "fails-twice"})
    await eventually(lambda: len(attempts.get("t-1", [])) == 3, timeout=15, what="third attempt")
    a = attempts["t-1"]
    assert a[1] - a[0] >= 0.4  # back-off 0.5 s after the first failure
    assert a[2] - a[1] >= 1.8  # back-off 2 s after the second
    assert await eventually(lambda: rt.db.seen.find_one({"_id": "t-1"}), what="state saved")
    events = await eventually(lambda: _stream(nc.jetstream(), s.INTAKE_REJECTED, 1), what="event published")
    assert len(events) == 1


async def test_always_failing_handler_stops_at_max_deliver_and_is_dead_lettered(probe) -> None:
    rt, nc, attempts = probe
    js = nc.jetstream()
    await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": "f-1", "title": "always-fails"})
    dlq = await eventually(lambda: _dlq(js, 1), timeout=20, what="DLQ entry")
    assert dlq[0].headers["Gridcase-Dlq-Reason"] == "exhausted"
    assert "RuntimeError" in dlq[0].headers["Gridcase-Dlq-Detail"]
    await asyncio.sleep(3)  # no redelivery after termination
    assert len(attempts["f-1"]) == 3
    metrics = rt.registry.get_sample_value(
        "gridcase_dlq_messages_total",
        {"stream": "GRIDCASE_INTAKE", "consumer": "probe-intake-report", "reason": "exhausted"},
    )
    assert metrics == 1.0


async def test_same_event_id_is_dropped_by_jetstream(probe) -> None:
    rt, nc, attempts = probe
    js = nc.jetstream()
    event_id = new_id()
    first = await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": "d-1"}, id=event_id)
    second = await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": "d-1"}, id=event_id)
    assert not first.duplicate and second.duplicate
    await eventually(lambda: "d-1" in attempts, what="processed once")
    await asyncio.sleep(0.5)
    assert len(attempts["d-1"]) == 1


async def test_crash_between_commit_and_publish_loses_no_event(probe) -> None:
    rt, nc, attempts = probe
    js = nc.jetstream()
    # the crash: state committed, the process "dies" before publishing
    rt.outbox.crash_after_commit = True
    with pytest.raises(SimulatedCrash):
        async with rt.outbox.unit_of_work() as uow:
            await rt.db.seen.insert_one({"_id": "crash-1"}, session=uow.session)
            uow.emit(rt.event(s.INTAKE_REJECTED, {"errors": [], "quarantine_id": "crash-1", "at": "2026-11-30T00:00:00Z"}))
    rt.outbox.crash_after_commit = False
    assert await _stream(js, s.INTAKE_REJECTED, 0) == []
    assert await rt.db.outbox.count_documents({}) == 1
    # the relay (running in the service) publishes what was left behind
    events = await eventually(lambda: _stream(js, s.INTAKE_REJECTED, 1), timeout=10, what="relayed event")
    assert b"crash-1" in events[0].data
    assert await eventually(lambda: _count_zero(rt), what="outbox emptied")


async def test_publishing_does_not_add_a_subscription_per_unit_of_work(probe) -> None:
    """Every publish goes through one JetStream context: nats-py subscribes a context to its
    own inbox for `publish_async`'s acks and never lets go, so a context per publish leaked a
    subscription — with its task and the batch it was made for — per unit of work."""
    rt, nc, _ = probe
    js = nc.jetstream()
    await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": "subs-0"})
    await eventually(lambda: _stream(js, s.INTAKE_REJECTED, 1), timeout=10, what="first event")
    subscriptions = len(rt.messaging.nc._subs)
    for i in range(1, 21):
        await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": f"subs-{i}"})
        await eventually(lambda i=i: _stream(js, s.INTAKE_REJECTED, i + 1), timeout=10, what=f"event {i + 1}")
    assert len(rt.messaging.nc._subs) == subscriptions


@pytest.mark.parametrize("size", ["one statement", "per collection"])
async def test_queued_writes_commit_with_the_events_and_a_stale_guard_writes_nothing(
    nats_url: str, mongodb_url: str, db_prefix: str, size: str
) -> None:
    """`uow.write(...)`: the writes go with the outbox document at commit — in one statement, or
    (a large unit of work) one per run of a collection. Only the writes declared guarded count
    against `matched` (an upsert that matches does not); a guard that does not match fails the
    unit of work with `Conflict` and nothing of it is stored or published; a duplicate key is
    recognised as one."""
    settings = service_settings("probe", nats_url, mongodb_url, db_prefix)
    nc = await connect(nats_url)
    js = nc.jetstream()

    def notice(qid: str) -> Envelope:
        return rt.event(s.INTAKE_REJECTED, {"errors": [], "quarantine_id": qid, "at": "2026-11-30T00:00:00Z"})

    def pad(uow: UnitOfWork, tag: str) -> None:
        """Enough other writes (first, in a collection of their own) to make the unit large."""
        if size == "per collection":
            uow.write(InsertOne({"_id": f"{tag}-{i}"}, namespace=rt.db.pad.full_name) for i in range(ONE_STATEMENT_MAX))

    async with running("probe", settings, probe_service({})) as rt:
        docs = rt.db.docs
        ns = docs.full_name
        await docs.insert_many([{"_id": "a", "rev": 1}, {"_id": "b", "rev": 1}])
        async with rt.outbox.unit_of_work() as uow:
            pad(uow, "ok")
            uow.write([UpdateOne({"_id": "a", "rev": 1}, {"$inc": {"rev": 1}}, namespace=ns)], matched=1)
            uow.write([UpdateOne({"_id": "b"}, {"$set": {"seen": True}}, upsert=True, namespace=ns)])
            uow.emit(notice("queued-1"))
        assert await docs.find_one({"_id": "a"}) == {"_id": "a", "rev": 2}
        assert await docs.find_one({"_id": "b"}) == {"_id": "b", "rev": 1, "seen": True}

        with pytest.raises(Conflict):
            async with rt.outbox.unit_of_work() as uow:
                pad(uow, "stale")
                uow.write([InsertOne({"_id": "c"}, namespace=ns)])
                uow.write([UpdateOne({"_id": "a", "rev": 1}, {"$inc": {"rev": 1}}, namespace=ns)], matched=1)
                uow.emit(notice("stale-1"))
        assert await docs.find_one({"_id": "c"}) is None
        assert await docs.find_one({"_id": "a"}) == {"_id": "a", "rev": 2}

        with pytest.raises(PyMongoError) as raised:
            async with rt.outbox.unit_of_work() as uow:
                pad(uow, "dup")
                uow.write([InsertOne({"_id": "d"}, namespace=ns), InsertOne({"_id": "a"}, namespace=ns)])
        assert only_duplicates(raised.value) and not lost_race(raised.value)
        assert await docs.find_one({"_id": "d"}) is None
        padded = ONE_STATEMENT_MAX if size == "per collection" else 0
        assert await rt.db.pad.count_documents({}) == padded  # only the committed unit's
        assert await rt.db.pad.count_documents({"_id": {"$regex": "^ok-"}}) == padded

        events = await eventually(lambda: _stream(js, s.INTAKE_REJECTED, 1), what="the committed unit's event")
        await asyncio.sleep(0.5)
        published = [m.data for m in await stream_messages(js, "GRIDCASE_INTAKE", s.INTAKE_REJECTED)]
        assert len(published) == 1 and b"queued-1" in events[0].data
        assert await eventually(lambda: _count_zero(rt), what="outbox emptied")
    await nc.close()


async def test_ready_only_once_every_subscription_is_registered(nats_url, mongodb_url, db_prefix) -> None:
    settings = service_settings("probe", nats_url, mongodb_url, db_prefix)
    app, rt = build_app("probe", settings, probe_service({}))
    assert (await rt.ready())["subscribed"] is False
    nc = await connect(nats_url)
    await app.start()
    try:
        assert await rt.ready() == {"broker": True, "subscribed": True, "database": True}
        # another connection's first command finds its responder at once (no retry, no wait)
        reply = await command(nc, s.command("case", "accept"), {"case_id": "C-01ABC", "by": "s-1"}, timeout=2)
        assert reply["ok"] is True
    finally:
        await app.stop()
        await nc.close()


async def test_commands_answer_errors_and_never_crash(probe) -> None:
    rt, nc, attempts = probe
    subject = s.command("case", "accept")
    ok = await command(nc, subject, {"case_id": "C-01ABC", "by": "s-1"})
    assert ok == {"ok": True, "case_id": "C-01ABC"}
    refused = await command(nc, subject, {"case_id": "C-01ABC", "by": "nobody"})
    assert refused["ok"] is False and refused["error"]["code"] == "not_assignee"
    invalid = await command(nc, subject, {"case_id": "not a case id", "by": "s-1"})
    assert invalid["ok"] is False and invalid["error"]["code"] == "invalid"
    assert any(d["path"] == "data.case_id" for d in invalid["error"]["details"])
    garbage = await nc.request(subject, b"\xff\xfe", timeout=5)
    assert b'"ok":false' in garbage.data.replace(b" ", b"")


async def _count_zero(rt: Runtime) -> bool:
    return await rt.db.outbox.count_documents({}) == 0


async def _dlq(js, n: int):
    msgs = await stream_messages(js, "GRIDCASE_DLQ")
    return msgs if len(msgs) >= n else None


async def _stream(js, subject: str, n: int):
    msgs = await stream_messages(js, "GRIDCASE_INTAKE", subject)
    return msgs if len(msgs) >= n else ([] if n == 0 else None)


# ---- whole-batch consumers (`Messaging.consume_batches`) ------------------------------------


def batch_probe_service(calls: list[list[str]], fail: dict[str, int]):
    """Takes fetched batches whole; a batch holding a report titled `fails-N` raises while that
    report has been seen fewer than N+1 times (`always-fails`: always)."""

    def register(rt: Runtime) -> None:
        seen: dict[str, int] = {}

        @rt.messaging.consume_batches(s.INTAKE_REPORT, batch=50, overlap=2)
        async def on_reports(bodies: list[bytes]) -> list[Exception | None]:
            reports = [Envelope[Report].model_validate_json(b).data for b in bodies]
            calls.append([r.external_id for r in reports])
            if any(r.title == "slow" for r in reports):
                await asyncio.sleep(2.5)  # longer than the ack wait of the test that sends it
            results: list[Exception | None] = []
            for r in reports:
                seen[r.external_id] = seen.get(r.external_id, 0) + 1
                if r.title == "always-fails" or seen[r.external_id] <= fail.get(r.title, 0):
                    raise ConnectionError(f"transient on {r.external_id}")
                alone = r.title == "alone-fails-twice" and seen[r.external_id] <= 2
                results.append(ConnectionError("this one only") if alone else None)
            ok = [r for r, res in zip(reports, results, strict=True) if res is None]
            if ok:
                await rt.db.seen.insert_many([{"_id": r.external_id} for r in ok], ordered=False)
            return results

    return register


@pytest.fixture
async def batch_probe(nats_url: str, mongodb_url: str, db_prefix: str):
    calls: list[list[str]] = []
    # max_deliver 5, not 3: a pull request expiring just as the server sends a message counts a
    # delivery the handler never sees (redelivered after ack_wait); the budget must allow for it
    settings = service_settings("probe", nats_url, mongodb_url, db_prefix, max_deliver=5)
    nc = await connect(nats_url)
    async with running("probe", settings, batch_probe_service(calls, {"fails-twice": 2})) as rt:
        yield rt, nc, calls
    await nc.close()


async def test_a_batch_handled_for_longer_than_the_ack_wait_is_not_redelivered_meanwhile(
    nats_url: str, mongodb_url: str, db_prefix: str
) -> None:
    """Working acks keep a slow batch in hand: it is handled once, not redelivered every ack
    wait (each redelivery counts towards `max_deliver`)."""
    calls: list[list[str]] = []
    settings = service_settings("probe", nats_url, mongodb_url, db_prefix, ack_wait_s=1.0, max_deliver=2)
    nc = await connect(nats_url)
    async with running("probe", settings, batch_probe_service(calls, {})) as rt:
        await publish(nc.jetstream(), s.INTAKE_REPORT, {**REPORT, "external_id": "slow-1", "title": "slow"})
        await eventually(lambda: _count(rt, 1), timeout=10, what="the slow report stored")

        async def acked():
            # the ack follows the store, so wait for it rather than race it
            info = await nc.jetstream().consumer_info("GRIDCASE_INTAKE", "probe-intake-report")
            return info if info.num_ack_pending == 0 else None

        info = await eventually(acked, timeout=5, what="the slow batch acked")
        assert info.num_redelivered == 0
        assert calls == [["slow-1"]]
        assert await stream_messages(nc.jetstream(), "GRIDCASE_DLQ") == []
    await nc.close()


async def test_whole_batches_are_acked_once_handled(batch_probe) -> None:
    rt, nc, calls = batch_probe
    js = nc.jetstream()
    for i in range(120):
        await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": f"b-{i}"})
    await eventually(lambda: _count(rt, 120), timeout=20, what="all 120 stored")
    await asyncio.sleep(1.5)
    handled = [x for c in calls for x in c]
    assert sorted(handled) == sorted(f"b-{i}" for i in range(120))  # each once: acked, not redelivered
    assert max(len(c) for c in calls) > 1  # batches, not single messages
    info = await js.consumer_info("GRIDCASE_INTAKE", "probe-intake-report")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_trickle_is_handled_promptly_with_no_delivery_lost(batch_probe) -> None:
    """Messages arriving one by one, while the consumer keeps asking for a batch, are all
    handled at once: none is left for redelivery after `ack_wait` (a partly collected batch
    must survive a fetch that times out)."""
    rt, nc, calls = batch_probe
    js = nc.jetstream()
    for i in range(60):
        await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": f"tr-{i}"})
        await asyncio.sleep(0.03)
    await eventually(lambda: _count(rt, 60), timeout=3, what="all 60 stored well within ack_wait (5 s)")
    info = await js.consumer_info("GRIDCASE_INTAKE", "probe-intake-report")
    assert info.num_redelivered == 0


async def test_a_lone_message_is_handed_over_without_waiting_for_a_full_batch(
    nats_url: str, mongodb_url: str, db_prefix: str
) -> None:
    """A whole-batch consumer hands over what has arrived instead of fetching again until the
    batch is full or the fetch wait has passed (FastStream's own loop): with a 4 s wait, one
    message is handled long before 4 s."""
    calls: list[list[str]] = []
    settings = service_settings("probe", nats_url, mongodb_url, db_prefix, fetch_wait_background_s=4.0)
    nc = await connect(nats_url)
    async with running("probe", settings, batch_probe_service(calls, {})) as rt:
        await asyncio.sleep(0.5)  # the consumer is waiting in a fetch
        await publish(nc.jetstream(), s.INTAKE_REPORT, {**REPORT, "external_id": "lone-1"})
        t0 = time.monotonic()
        await eventually(lambda: _count(rt, 1), timeout=10, what="the lone message stored")
        assert time.monotonic() - t0 < 2.0  # not held for the 4 s wait
        assert calls == [["lone-1"]]
    await nc.close()


async def test_a_failing_batch_is_retried_whole_then_succeeds(batch_probe) -> None:
    rt, nc, calls = batch_probe
    js = nc.jetstream()
    await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": "t-1", "title": "fails-twice"})
    await eventually(lambda: _count(rt, 1), timeout=30, what="stored after two failures")
    assert sum(c.count("t-1") for c in calls) == 3  # two failed deliveries, then success
    assert await _dlq(js, 1) is None


async def test_only_the_messages_a_batch_handler_failed_are_retried(batch_probe) -> None:
    rt, nc, calls = batch_probe
    js = nc.jetstream()
    for i in range(10):
        title = "alone-fails-twice" if i == 4 else "楼道灯坏了"
        await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": f"p-{i}", "title": title})
    await eventually(lambda: _count(rt, 10), timeout=30, what="all ten stored")
    handled = [x for c in calls for x in c]
    assert handled.count("p-4") == 3  # two failures of its own, then success
    assert all(handled.count(f"p-{i}") == 1 for i in range(10) if i != 4)  # the rest acked at once
    assert await _dlq(js, 1) is None


async def test_a_batch_that_always_fails_is_dead_lettered_per_message(batch_probe) -> None:
    rt, nc, calls = batch_probe
    js = nc.jetstream()
    await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": "f-1", "title": "always-fails"})
    dlq = await eventually(lambda: _dlq(js, 1), timeout=40, what="DLQ entry")
    assert dlq[0].headers["Gridcase-Dlq-Reason"] == "exhausted"
    assert "ConnectionError" in dlq[0].headers["Gridcase-Dlq-Detail"]
    assert b"f-1" in dlq[0].data  # the message itself, kept for inspection
    tries = sum(c.count("f-1") for c in calls)
    assert 2 <= tries <= 5
    await asyncio.sleep(3)  # terminated: not redelivered forever
    assert sum(c.count("f-1") for c in calls) == tries
    # and the consumer goes on with the next batches
    await publish(js, s.INTAKE_REPORT, {**REPORT, "external_id": "after"})
    await eventually(lambda: _count(rt, 1), timeout=10, what="next report stored")


async def _count(rt: Runtime, n: int) -> bool:
    return await rt.db.seen.count_documents({}) >= n


async def test_due_poller_counts_each_due_document_once(mongodb_url, db_prefix) -> None:
    """The poller looks again at once only while new documents fall due: one that stays due
    (held by a lock, left for a retry) does not keep it polling hot."""
    from datetime import UTC, datetime, timedelta

    from pymongo import AsyncMongoClient

    from shared.timers import DuePoller

    seen: list[list[str]] = []

    async def on_due(docs, now) -> None:
        seen.append([d["_id"] for d in docs])

    async with AsyncMongoClient(mongodb_url) as client:
        col = client[f"{db_prefix}_timers"]["things"]
        past = datetime.now(UTC) - timedelta(seconds=1)
        await col.insert_many([{"_id": "a", "wake_at": past}, {"_id": "b", "wake_at": past + timedelta(milliseconds=1)},
                               {"_id": "later", "wake_at": past + timedelta(hours=1)}])
        poller = DuePoller(col, on_due)
        assert await poller.poll_once() == 2  # both new
        assert await poller.poll_once() == 0  # still due (on_due left them), nothing new
        await col.insert_one({"_id": "c", "wake_at": past})
        assert await poller.poll_once() == 1
        assert [sorted(ids) for ids in seen] == [["a", "b"], ["a", "b"], ["a", "b", "c"]]


async def test_due_poller_works_off_a_backlog_in_slices_and_leaves_nothing_behind(mongodb_url, db_prefix) -> None:
    """2,000 documents already due, a batch of 150: each is handed over once, in due order,
    by slices once the first batch comes back full; one whose handling fails the first time
    (left due, below the slices) is handed over again once the poller has caught up."""
    from datetime import UTC, datetime, timedelta

    from pymongo import AsyncMongoClient, UpdateOne

    from shared.timers import WAKE_INDEX, DuePoller

    handed: list[str] = []
    sliced: list[bool] = []
    failed_once: set[str] = set()

    async with AsyncMongoClient(mongodb_url) as client:
        col = client[f"{db_prefix}_timers"]["backlog"]
        await col.create_indexes([WAKE_INDEX])
        start = datetime.now(UTC) - timedelta(minutes=10)
        await col.insert_many([{"_id": f"d{i:05d}", "wake_at": start + timedelta(milliseconds=250 * i)} for i in range(2000)])

        async def on_due(docs, now) -> None:
            moved = []
            for d in docs:
                handed.append(d["_id"])
                if d["_id"] == "d00400" and d["_id"] not in failed_once:
                    failed_once.add(d["_id"])  # this one's write "fails": it stays due
                    continue
                moved.append(UpdateOne({"_id": d["_id"]}, {"$set": {"wake_at": now + timedelta(hours=1)}}))
            await col.bulk_write(moved)

        poller = DuePoller(col, on_due, batch=150)
        for _ in range(200):
            await poller.poll_once()
            sliced.append(poller.slice.low is not None)
            if await col.count_documents({"wake_at": {"$lte": datetime.now(UTC)}}) == 0:
                break
        assert await col.count_documents({"wake_at": {"$lte": datetime.now(UTC)}}) == 0
    assert any(sliced), "the backlog was never read in slices"
    assert sorted(set(handed)) == [f"d{i:05d}" for i in range(2000)]
    assert [i for i in handed if handed.count(i) > 1] == ["d00400", "d00400"]
    first_pass = [i for i in handed if i != "d00400"]
    assert first_pass == sorted(first_pass), "handed over out of due order"


async def test_due_poller_with_overlap_writes_one_batch_while_it_reads_the_next(mongodb_url, db_prefix) -> None:
    """overlap=2 (routing): two batches are in hand at once, never more, no document is handed
    over while it is in hand, and a batch whose handling fails is picked up again."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from pymongo import AsyncMongoClient, UpdateOne

    from shared.timers import WAKE_INDEX, DuePoller

    handed: list[str] = []
    in_hand: set[str] = set()
    rehanded: set[str] = set()
    batches = [0]  # in hand now
    at_once: list[int] = []  # batches in hand, seen by each new one
    failed = False

    async with AsyncMongoClient(mongodb_url) as client:
        col = client[f"{db_prefix}_timers"]["overlap"]
        await col.create_indexes([WAKE_INDEX])
        start = datetime.now(UTC) - timedelta(minutes=5)
        await col.insert_many([{"_id": f"d{i:04d}", "wake_at": start + timedelta(milliseconds=100 * i)} for i in range(1200)])

        async def on_due(docs, now) -> None:
            nonlocal failed
            ids = {d["_id"] for d in docs}
            rehanded.update(ids & in_hand)  # (an assert here would only fail the batch)
            in_hand.update(ids)
            batches[0] += 1
            at_once.append(batches[0])
            try:
                await asyncio.sleep(0.05)  # the write of a batch takes a while
                if not failed and "d0300" in ids:
                    failed = True
                    raise RuntimeError("write failed")  # this batch stays due
                handed.extend(ids)
                await col.bulk_write([UpdateOne({"_id": i}, {"$set": {"wake_at": now + timedelta(hours=1)}}) for i in ids])
            finally:
                in_hand.difference_update(ids)
                batches[0] -= 1

        poller = DuePoller(col, on_due, batch=100, overlap=2, interval=0.05)
        task = asyncio.create_task(poller.run_forever())
        try:
            for _ in range(300):
                await asyncio.sleep(0.1)
                if await col.count_documents({"wake_at": {"$lte": datetime.now(UTC)}}) == 0:
                    break
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert await col.count_documents({"wake_at": {"$lte": datetime.now(UTC)}}) == 0
    assert failed
    assert sorted(handed) == [f"d{i:04d}" for i in range(1200)], "each handled exactly once"
    assert not rehanded, "documents in hand were handed over again"
    assert max(at_once) == 2, "two batches in hand at once, never more"
    assert not poller._handing and not poller._in_hand


@pytest.mark.parametrize("ending", ["nak_until_max_deliver", "terminated"])
async def test_a_message_given_up_outside_our_handlers_is_copied_to_the_dlq_from_the_advisory(nats_url, ending) -> None:
    """The other dead-letter path (DESIGN §4): whatever ends a message's deliveries — a process
    that naks it until `max_deliver`, or anything that terminates it — raises a JetStream
    advisory, and the watcher copies the message to the DLQ with the reason, once."""
    nc = await connect(nats_url)
    js = nc.jetstream()
    await declare_streams(js)
    tag = new_id()[:12].lower()
    spec = ConsumerSpec("GRIDCASE_INTAKE", f"adv-{tag}", f"gridcase.intake.advisory.{tag}", 2, 30.0, 10)
    await ensure_consumer(js, spec)
    dead = DeadLetters(CollectorRegistry())
    dead.bind(nc)
    subs = await dead.watch_advisories([spec])
    try:
        sent = await js.publish(spec.subject, b'{"kept": "for inspection"}')
        pull = await js.pull_subscribe_bind(spec.durable, spec.stream)
        for _ in range(spec.max_deliver if ending == "nak_until_max_deliver" else 1):
            (msg,) = await pull.fetch(1, timeout=5)
            await (msg.nak() if ending == "nak_until_max_deliver" else msg.term())
        # not delivered again (and the server notices the exhausted message on this next pull)
        with pytest.raises(nats.errors.TimeoutError):
            await pull.fetch(1, timeout=1.5)
        dlq = await eventually(lambda: stream_messages(js, "GRIDCASE_DLQ", dlq_subject(spec.stream, spec.durable)),
                               timeout=10, what="advisory copy in the DLQ")
        reason = "max_deliveries" if ending == "nak_until_max_deliver" else "terminated"
        assert dlq[0].headers["Gridcase-Dlq-Reason"] == reason
        assert dlq[0].headers["Gridcase-Dlq-Stream-Seq"] == str(sent.seq)
        assert dlq[0].headers["Gridcase-Dlq-Subject"] == spec.subject
        assert dlq[0].data == b'{"kept": "for inspection"}'
        # the handler path may dead-letter the same message too: still one entry, counted once
        await dead.put(stream=spec.stream, consumer=spec.durable, stream_seq=sent.seq, subject=spec.subject,
                       data=dlq[0].data, reason="exhausted", detail="handler gave up", deliveries=2)
        await asyncio.sleep(0.3)
        assert len(await stream_messages(js, "GRIDCASE_DLQ", dlq_subject(spec.stream, spec.durable))) == 1
        counted = {r: dead.count.labels(spec.stream, spec.durable, r)._value.get() for r in (reason, "exhausted")}
        assert counted == {reason: 1.0, "exhausted": 0.0}
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await js.delete_consumer(spec.stream, spec.durable)
        await nc.close()
