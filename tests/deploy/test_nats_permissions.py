"""The rendered NATS permissions on a real nats-server (single-node variant of the config).

Each service user must be able to do exactly what the contract says it does, and no more.
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from natsperm import NATS_SERVER, connect, password_env, start_server

from deploy.nats.render import ADVISORIES
from shared.contract.subjects import (
    INTAKE_REPORT,
    INTAKE_SUBMIT,
    SERVICE_ACCESS,
    STREAMS,
    case_event,
    dlq_subject,
    stream_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def durable_filters(service: str, stream: str, durable: str) -> list[str]:
    """The consumed subjects a durable reads (one per durable when the contract pairs them)."""
    access = SERVICE_ACCESS[service]
    if len(access.durables) == len(access.consumes):
        pairs = [zip(access.durables_of(i), access.consumes, strict=True) for i in ("", *access.instances)]
        return [s for pair in pairs for (st, d), s in pair if d == durable]
    return [s for s in access.consumes if stream_for(s).name == stream]


def concrete(subject: str) -> str:
    """A subject a message can be published on, for a possibly wildcard filter."""
    return subject.replace(">", "probe.v1").replace("*", "probe")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("nats"))
    try:
        yield srv
    finally:
        srv.stop()
        assert srv.proc.poll() is not None, "nats-server left running"


@pytest.fixture(scope="module")
async def admin(server):
    conn = await connect(server.url, "admin")
    js = conn.js
    for stream in STREAMS:
        await js.add_stream(
            StreamConfig(
                name=stream.name,
                subjects=list(stream.subjects),
                storage=StorageType.FILE,
                num_replicas=1,
                duplicate_window=120.0,
            )
        )
    yield conn
    await conn.close()


async def last_msg_data(admin, stream: str, subject: str) -> bytes | None:
    try:
        msg = await admin.js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    return msg.data


# ---- the headline case: routing may publish assigned, not received --------------------


async def test_routing_publishes_assigned_but_not_received(server, admin):
    routing = await connect(server.url, "routing")
    try:
        ack = await routing.js.publish(
            case_event("assigned"),
            b'{"probe": "assigned"}',
            headers={"Nats-Msg-Id": "probe-assigned-1"},
        )
        assert ack.stream == "GRIDCASE_CASES"
        assert (
            await last_msg_data(admin, "GRIDCASE_CASES", case_event("assigned"))
            == b'{"probe": "assigned"}'
        )

        await routing.nc.publish(case_event("received"), b'{"probe": "forged"}')
        err = await routing.wait_violation("publish", case_event("received"))
        assert "gridcase.case.received.v1" in err
        # the forged event never reached the stream, and the connection is still usable
        assert await last_msg_data(admin, "GRIDCASE_CASES", case_event("received")) is None
        assert routing.nc.is_connected
        await routing.js.publish(
            case_event("accepted"), b"{}", headers={"Nats-Msg-Id": "probe-accepted-1"}
        )
        assert len(routing.violations()) == 1
    finally:
        await routing.close()


# ---- every service user can do what it needs ------------------------------------------


@pytest.mark.parametrize("service", list(SERVICE_ACCESS))
async def test_service_publishes_its_events_and_dlq(server, admin, service):
    access = SERVICE_ACCESS[service]
    conn = await connect(server.url, service)
    try:
        for i, subject in enumerate(access.publishes):
            body = json.dumps({"probe": service, "subject": subject}).encode()
            ack = await conn.js.publish(
                subject, body, headers={"Nats-Msg-Id": f"{service}-pub-{i}"}
            )
            assert ack.stream == stream_for(subject).name
            assert await last_msg_data(admin, ack.stream, subject) == body
        for stream, durable in access.durables:
            subject = dlq_subject(stream, durable)
            ack = await conn.js.publish(
                subject, b'{"reason": "probe"}', headers={"Nats-Msg-Id": f"dlq-{durable}"}
            )
            assert ack.stream == "GRIDCASE_DLQ"
        assert conn.violations() == []
    finally:
        await conn.close()


@pytest.mark.parametrize("service", list(SERVICE_ACCESS))
async def test_service_serves_its_commands(server, admin, service):
    access = SERVICE_ACCESS[service]
    conn = await connect(server.url, service)
    requester = await connect(server.url, "admin")
    try:

        async def reply(msg):
            await msg.respond(
                json.dumps({"ok": True, "served_by": service, "subject": msg.subject}).encode()
            )

        for subject in access.serves:
            await conn.nc.subscribe(subject, queue=f"{service}-commands", cb=reply)
        await conn.nc.flush()
        for subject in access.serves:
            msg = await requester.request(subject, b'{"type": "probe"}')
            assert json.loads(msg.data) == {"ok": True, "served_by": service, "subject": subject}
        for advisory in ADVISORIES:
            await conn.nc.subscribe(advisory)
        await conn.nc.flush()
        assert conn.violations() == []
    finally:
        await requester.close()
        await conn.close()


@pytest.mark.parametrize(
    ("service", "stream", "durable"),
    # a replicated read model (stats) also has each declared instance's durables
    [(s, st, d) for s, a in SERVICE_ACCESS.items() for st, d in (*a.durables, *a.instance_durables)],
)
async def test_service_consumes_through_its_durables(server, admin, service, stream, durable):
    filters = durable_filters(service, stream, durable)
    assert filters, f"{service}/{durable}: no consumed subject lives in {stream}"
    conn = await connect(server.url, service)
    try:
        js = conn.js
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW,
                max_deliver=6,
                ack_wait=30,
                filter_subjects=filters,
            ),
        )
        subject = concrete(filters[0])
        pub = await admin.js.publish(
            subject, b'{"probe": 1}', headers={"Nats-Msg-Id": f"in-{durable}"}
        )
        sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
        msgs = await sub.fetch(1, timeout=3)
        assert [m.subject for m in msgs] == [subject]
        await msgs[0].ack_sync(timeout=3)
        info = await js.consumer_info(stream, durable)
        assert info.num_ack_pending == 0
        assert info.ack_floor.stream_seq >= pub.seq
        # copy-to-DLQ path: read a message by sequence
        raw = await js.get_msg(stream, pub.seq)
        assert raw.data == b'{"probe": 1}'
        await sub.unsubscribe()
        assert conn.violations() == []
    finally:
        await conn.close()


async def test_max_deliveries_advisory_reaches_the_service(server, admin):
    """The dead-letter trigger: a message nak'ed max_deliver times raises the advisory."""
    conn = await connect(server.url, "dispatch")
    try:
        stream, durable = SERVICE_ACCESS["dispatch"].durables[0]
        subject = concrete(durable_filters("dispatch", stream, durable)[0])
        advisories: asyncio.Queue = asyncio.Queue()

        async def on_advisory(msg):
            await advisories.put(json.loads(msg.data))

        await conn.nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>", cb=on_advisory)
        await admin.js.delete_consumer(stream, durable)  # left by the durable test, if any
        await conn.js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW,
                max_deliver=2,
                filter_subject=subject,
            ),
        )
        sub = await conn.js.pull_subscribe_bind(durable=durable, stream=stream)
        pub = await admin.js.publish(
            subject, b'{"poison": true}', headers={"Nats-Msg-Id": "poison-1"}
        )
        for _ in range(2):
            msgs = await sub.fetch(1, timeout=3)
            assert msgs[0].metadata.sequence.stream == pub.seq
            await msgs[0].nak()
        # the server notices the exhausted message on its next delivery attempt
        with pytest.raises(asyncio.TimeoutError):
            await sub.fetch(1, timeout=1)
        advisory = await asyncio.wait_for(advisories.get(), timeout=5)
        assert advisory["stream"] == stream
        assert advisory["consumer"] == durable
        assert advisory["stream_seq"] == pub.seq
        assert conn.violations() == []
    finally:
        await conn.close()


# ---- and no more --------------------------------------------------------------------------


async def test_services_cannot_cross_their_boundaries(server, admin):
    intake = await connect(server.url, "intake")
    stats = await connect(server.url, "stats")
    try:
        # intake cannot serve routing's commands
        await intake.nc.subscribe("gridcase.cmd.case.accept.v1")
        await intake.wait_violation("subscription", "gridcase.cmd.case.accept.v1")
        # stats publishes nothing but DLQ entries
        await stats.nc.publish(case_event("resolved"), b"{}")
        await stats.wait_violation("publish", case_event("resolved"))
        # no service may delete a stream or use another service's durable
        await stats.nc.publish("$JS.API.STREAM.DELETE.GRIDCASE_CASES", b"")
        await stats.wait_violation("publish", "$JS.API.STREAM.DELETE.GRIDCASE_CASES")
        await stats.nc.publish("$JS.API.CONSUMER.MSG.NEXT.GRIDCASE_CASES.routing-cases", b"{}")
        await stats.wait_violation(
            "publish", "$JS.API.CONSUMER.MSG.NEXT.GRIDCASE_CASES.routing-cases"
        )
        # replies only to requests actually received (allow_responses), not to any inbox
        await intake.nc.publish("_INBOX.someone-else.1", b"{}")
        await intake.wait_violation("publish", "_INBOX.someone-else.1")
        assert (await admin.js.stream_info("GRIDCASE_CASES")).config.name == "GRIDCASE_CASES"
    finally:
        await intake.close()
        await stats.close()


async def test_platform_user_can_only_submit_reports(server, admin):
    platform = await connect(server.url, "platform")
    intake = await connect(server.url, "intake")
    try:
        ack = await platform.js.publish(
            INTAKE_REPORT, b'{"report": 1}', headers={"Nats-Msg-Id": "platform-1"}
        )
        assert ack.stream == "GRIDCASE_INTAKE"

        async def submit(msg):
            await msg.respond(b'{"ok": true, "status": "accepted", "case_id": "C-probe"}')

        await intake.nc.subscribe(INTAKE_SUBMIT, queue="intake", cb=submit)
        await intake.nc.flush()
        reply = await platform.request(INTAKE_SUBMIT, b"{}")
        assert json.loads(reply.data)["case_id"] == "C-probe"
        assert platform.violations() == []

        for forbidden in (
            case_event("assigned"),
            "gridcase.cmd.case.accept.v1",
            "gridcase.intake.rejected.v1",
        ):
            await platform.nc.publish(forbidden, b"{}")
            await platform.wait_violation("publish", forbidden)
        await platform.nc.subscribe("gridcase.case.>")
        await platform.wait_violation("subscription", "gridcase.case.>")
    finally:
        await platform.close()
        await intake.close()


async def test_monitor_user_is_read_only(server, admin):
    monitor = await connect(server.url, "monitor")
    try:
        info = await monitor.js.stream_info("GRIDCASE_CASES")
        assert info.config.name == "GRIDCASE_CASES"
        names = await monitor.js.streams_info()
        assert {s.config.name for s in names} >= {s.name for s in STREAMS}
        await monitor.nc.publish("$JS.API.STREAM.DELETE.GRIDCASE_CASES", b"")
        await monitor.wait_violation("publish", "$JS.API.STREAM.DELETE.GRIDCASE_CASES")
        await monitor.nc.publish(case_event("received"), b"{}")
        await monitor.wait_violation("publish", case_event("received"))
        await monitor.nc.subscribe("gridcase.case.>")
        await monitor.wait_violation("subscription", "gridcase.case.>")
        assert (await admin.js.stream_info("GRIDCASE_CASES")).config.name == "GRIDCASE_CASES"
    finally:
        await monitor.close()


async def test_wrong_password_is_refused(server):
    with pytest.raises(Exception) as exc:
        await connect(server.url, "routing", password="not-the-password")
    assert "authorization" in str(exc.value).lower()


def test_committed_cluster_config_parses(tmp_path):
    """`nats-server -t` accepts the committed 3-node config (passwords from the environment)."""
    from deploy.nats.render import CONF_PATH

    env = {**password_env(), "NATS_SERVER_NAME": "nats-1"}
    done = subprocess.run(
        [str(NATS_SERVER), "-t", "-c", str(CONF_PATH)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    missing = subprocess.run(
        [str(NATS_SERVER), "-t", "-c", str(CONF_PATH)],
        env={"NATS_SERVER_NAME": "nats-1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode != 0
    assert "GRIDCASE_NATS_INTAKE_PASSWORD" in missing.stdout + missing.stderr
