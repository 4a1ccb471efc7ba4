"""Kill -9 routing while 1,000 cases have clocks running; after a restart every due escalation happens once."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from shared.contract import subjects as s
from shared.embedded import Child, free_port, wait_until

from ..support import command, connect, eventually
from .conftest import Env
from .helpers import build_directory, publish_received, received, write_policy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def start_routing(tmp_path: Path, nats_url: str, mongodb_url: str, prefix: str, policy: Path, port: int) -> Child:
    env = {
        "GRIDCASE_SERVICE": "routing",
        "GRIDCASE_NATS_URL": nats_url,
        "GRIDCASE_MONGODB_URL": mongodb_url,
        "GRIDCASE_HTTP_PORT": str(port),
        "GRIDCASE_DATA_DIR": str(tmp_path / "data"),
        "GRIDCASE_DATABASE_PREFIX": prefix,
        "GRIDCASE_POLICY_FILE": str(policy),
        "GRIDCASE_TIMER_POLL_S": "0.1",
        "GRIDCASE_OUTBOX_RELAY_S": "0.5",
        "GRIDCASE_ACK_WAIT_S": "5",
    }
    child = Child("routing", [sys.executable, "-m", "shared.cli", "run", "routing"], tmp_path / "routing.log", env=env).start()

    def ready() -> bool:
        if not child.alive():
            raise RuntimeError(f"routing exited; see {child.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:  # noqa: S310
                return r.status == 200
        except OSError:
            return False

    wait_until(ready, 60, "routing ready")
    return child


async def test_kill_9_during_escalations_loses_and_doubles_nothing(
    tmp_path: Path, nats_url: str, mongodb_url: str, db_prefix: str
) -> None:
    # grid: respond in 10 s; community: long clocks, so each case escalates exactly once
    policy = write_policy(tmp_path, grid=(10, 3600), community=(3600, 7200), street=(3600, 7200))
    port = free_port()
    nc = await connect(nats_url)
    env = Env(None, nc)  # type: ignore[arg-type]
    child = start_routing(tmp_path, nats_url, mongodb_url, db_prefix, policy, port)
    try:
        assert (await command(nc, s.DIRECTORY_LOAD, build_directory(2, 4, 5)))["ok"]
        ids = []
        for i in range(1000):
            data = received(building=f"c{i % 2 + 1}-g{i % 4 + 1:02d}-b{i % 5 + 1:02d}")
            ids.append(data.case_id)
            await publish_received(env.js, data)

        async def count(name: str) -> Counter:
            return Counter(d["case_id"] for n, d, _ in await env.events() if n == name)

        async def total(name: str, n: int) -> bool:
            info = await env.js.stream_info("GRIDCASE_CASES", subjects_filter=s.case_event(name))
            return sum((info.state.subjects or {}).values()) >= n

        # every case is open with its clocks running; kill while the escalations are under way
        async def all_assigned() -> bool:  # each case's first assignment (escalations assign too)
            return len(await count("assigned")) >= 1000

        await eventually(all_assigned, timeout=60, interval=0.5, what="1,000 assigned")
        await eventually(lambda: total("escalated", 50), timeout=30, interval=0.1, what="escalations started")
        child.kill()
        assert not await total("escalated", 1000), "all escalations happened before the kill; nothing was tested"
        await asyncio.sleep(1.0)
        child = start_routing(tmp_path, nats_url, mongodb_url, db_prefix, policy, port)
        # a batch a killed process had in flight stays locked until the database reaps its
        # transaction (60 s, as in MongoDB); those escalations come late, but exactly once
        await eventually(lambda: total("escalated", 1000), timeout=90, interval=0.5, what="all escalations")
        await asyncio.sleep(2.0)  # anything doubled would show up by now
        escalated, assigned = await count("escalated"), await count("assigned")
        assert set(escalated) == set(ids)
        assert set(escalated.values()) == {1}, {k: v for k, v in escalated.items() if v != 1}
        assert set(assigned.values()) == {2}  # new + escalated, each once
    finally:
        child.stop()
        await nc.close()
