"""Kill -9 of the intake process in the middle of a burst, then restart: every report becomes
exactly one case and one `received` event — none lost, none doubled."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from shared.embedded import Child, free_port
from shared.messaging import BACKOFF_S
from shared.settings import Settings

from ..support import connect, eventually
from .helpers import RECEIVED, leaks, report, stream_messages
from .test_intake import publish_all

pytestmark = pytest.mark.integration

BURST = 2000
# The killed process's open transaction keeps its documents until the database reaps it, 60 s
# after its last statement (mongod's `transactionLifetimeLimitSeconds`); the reports it held
# are retried with back-off meanwhile and go in on the first retry after that.
TRANSACTION_LIFETIME_S = 60
RECOVERY_S = TRANSACTION_LIFETIME_S + max(BACKOFF_S[: Settings.model_fields["max_deliver"].default - 1]) + 30


async def _publish_over(js, items: list, seconds: float, chunks: int = 20) -> None:
    size = -(-len(items) // chunks)
    for start in range(0, len(items), size):
        await publish_all(js, items[start : start + size])
        await asyncio.sleep(seconds / chunks)


def intake_process(env: dict[str, str], log: Path) -> Child:
    return Child("intake", [sys.executable, "-m", "shared.cli", "run", "intake"], log, env=env).start()


def ready(port: int, child: Child) -> bool:
    assert child.alive(), f"intake exited; see {child.log_path}"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


async def wait_ready(port: int, child: Child) -> None:
    await eventually(lambda: asyncio.to_thread(ready, port, child), timeout=60, interval=0.2, what="intake ready")


@pytest.mark.timeout(RECOVERY_S + 150)
async def test_kill_9_in_a_burst_loses_and_doubles_nothing(nats_url, mongodb_url, db_prefix, tmp_path) -> None:
    from pymongo import AsyncMongoClient

    port = free_port()
    env = {  # as `Stack.service_env` does it
        "GRIDCASE_SERVICE": "intake",
        "GRIDCASE_NATS_URL": nats_url,
        "GRIDCASE_MONGODB_URL": mongodb_url,
        "GRIDCASE_HTTP_PORT": str(port),
        "GRIDCASE_DATA_DIR": str(tmp_path / "data"),
        "GRIDCASE_DATABASE_PREFIX": db_prefix,
        "GRIDCASE_ACK_WAIT_S": "3",
        "GRIDCASE_OUTBOX_RELAY_S": "0.5",
        "GRIDCASE_LOG_LEVEL": "DEBUG",
    }
    log = tmp_path / "intake.log"
    nc = await connect(nats_url)
    mongo = AsyncMongoClient(mongodb_url, tz_aware=True)
    reports = mongo[f"{db_prefix}_intake"]["reports"]
    js = nc.jetstream()
    child = intake_process(env, log)
    try:
        await wait_ready(port, child)
        # the burst arrives over ~2 s (intake would take a burst published at once in well under
        # a second, before the kill), so the kill lands in its middle
        burst = asyncio.create_task(_publish_over(js, [report(i, channel="grid_patrol") for i in range(BURST)], 2.0))
        await eventually(lambda: _at_least(reports, 300), timeout=60, interval=0.02, what="burst under way")
        child.kill()  # SIGKILL mid-burst
        done_before = await reports.count_documents({})
        await burst
        assert done_before < BURST, "the burst finished before the kill; nothing was tested"

        child = intake_process(env, log)
        await wait_ready(port, child)
        try:
            await eventually(lambda: _at_least(reports, BURST), timeout=RECOVERY_S, what="every report a case")
        except AssertionError as exc:  # say where the rest are
            dead = len(await stream_messages(js, "GRIDCASE_DLQ"))
            retries = [line for line in log.read_text(encoding="utf-8").splitlines() if '"warning"' in line][-5:]
            raise AssertionError(f"{exc}; {await reports.count_documents({})} cases, {dead} dead letters, last warnings: {retries}") from None
        events = await eventually(lambda: _events(js, BURST), timeout=30, what="every received event")
        await eventually(lambda: _drained(js, mongo[f"{db_prefix}_intake"]), timeout=30, what="consumer and outbox drained")
        await asyncio.sleep(1.5)  # a doubled event would have been published by now

        events = [json.loads(m.data)["data"] for m in await stream_messages(js, "GRIDCASE_CASES", RECEIVED)]
        per_report = Counter(e["external_id"] for e in events)
        assert len(per_report) == BURST and set(per_report.values()) == {1}
        assert len({e["case_id"] for e in events}) == BURST
        assert await reports.count_documents({}) == BURST
        assert len(await reports.distinct("case_id")) == BURST
        stored = {d["external_id"]: d["case_id"] async for d in reports.find({}, {"external_id": 1, "case_id": 1})}
        assert stored == {e["external_id"]: e["case_id"] for e in events}
        assert await stream_messages(js, "GRIDCASE_DLQ") == []
    finally:
        child.stop()
        await mongo.close()
        await nc.close()
    text = log.read_bytes()
    assert b"service started" in text
    assert not leaks(text), "personal data in the intake log"
    for m in await _all_published(nats_url):
        assert not leaks(m.data), m.subject


async def _at_least(coll, n: int) -> bool:
    return await coll.count_documents({}) >= n


async def _events(js, n: int):
    msgs = await stream_messages(js, "GRIDCASE_CASES", RECEIVED)
    return msgs if len(msgs) >= n else None


async def _drained(js, db) -> bool:
    info = await js.consumer_info("GRIDCASE_INTAKE", "intake-intake-report")
    return info.num_pending == 0 and info.num_ack_pending == 0 and await db.outbox.count_documents({}) == 0


async def _all_published(nats_url: str):
    """Everything intake publishes: case events, rejections, dead letters."""
    nc = await connect(nats_url)
    try:
        js = nc.jetstream()
        return (
            await stream_messages(js, "GRIDCASE_CASES")
            + await stream_messages(js, "GRIDCASE_INTAKE", "gridcase.intake.rejected.v1")
            + await stream_messages(js, "GRIDCASE_DLQ")
        )
    finally:
        await nc.close()
