"""A real 3-node NATS JetStream cluster (R3 streams) on loopback; one node dies mid-stream (issue 9)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import nats
import pytest

from shared.contract import subjects as s
from shared.contract.envelope import Envelope
from shared.messaging import declare_streams

from ..support import (
    command,
    eventually,
    report,
    running,
    service_settings,
    small_directory,
    start_nats_cluster,
    stream_messages,
)

pytestmark = pytest.mark.integration

N = 2000


async def publish_with_retry(js, env: Envelope) -> None:
    """A platform's publisher: retry the same envelope (same Nats-Msg-Id) until stored."""
    for attempt in range(40):
        try:
            await js.publish(env.type, env.to_json(), headers={"Nats-Msg-Id": env.id}, timeout=2)
            return
        except (nats.errors.TimeoutError, nats.js.errors.APIError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("report could not be stored")


@pytest.mark.timeout(300)
async def test_system_survives_losing_a_nats_node(tmp_path: Path, mongodb_url: str, db_prefix: str) -> None:
    cluster = start_nats_cluster(tmp_path / "cluster")
    try:
        nc = await nats.connect(cluster.url.split(","), max_reconnect_attempts=-1)
        js = nc.jetstream()
        await eventually(lambda: _declare(js), timeout=30, what="R3 streams declared")
        async with AsyncExitStack() as stack:
            for service in ("routing", "intake"):
                settings = service_settings(service, cluster.url, mongodb_url, db_prefix, stream_replicas=3, data_dir=tmp_path)
                await stack.enter_async_context(running(service, settings))
            assert (await command(nc, s.DIRECTORY_LOAD, small_directory(1, 2, 3)))["ok"]
            grids = [g["code"] for g in small_directory(1, 2, 3)["grids"]]
            envs = [
                Envelope.new(s.INTAKE_REPORT, report(f"cl-{i}", grid=grids[i % len(grids)]), source="/platform/wechat")
                for i in range(N)
            ]
            victim = cluster.nodes[1]
            for i, env in enumerate(envs):
                if i == N // 3:
                    victim.child.kill()  # a node dies mid-stream
                await publish_with_retry(js, env)

            progress: dict[str, int] = {}

            async def assigned_all():
                msgs = await stream_messages(js, "GRIDCASE_CASES", s.case_event("assigned"))
                progress["assigned"] = len(msgs)
                progress["received"] = len(await stream_messages(js, "GRIDCASE_CASES", s.case_event("received")))
                return msgs if len(msgs) >= N else None

            try:
                assigned = await eventually(assigned_all, timeout=180, interval=1, what="every report assigned on two nodes")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {progress}") from None
            received = await stream_messages(js, "GRIDCASE_CASES", s.case_event("received"))
            by_external = Counter(json.loads(m.data)["data"]["external_id"] for m in received)
            assert len(by_external) == N and set(by_external.values()) == {1}, "lost or doubled"
            assert len({json.loads(m.data)["data"]["case_id"] for m in assigned}) == N

            # the node comes back and catches up
            victim.restart()

            async def all_current():
                info = await js.stream_info("GRIDCASE_CASES")
                peers = info.cluster.replicas or []
                return len(peers) == 2 and all(p.current and not p.offline for p in peers)

            await eventually(all_current, timeout=60, interval=0.5, what="rejoined node current")
        await nc.close()
    finally:
        for node in cluster.nodes:
            node.child.stop()


async def _declare(js) -> bool:
    try:
        await declare_streams(js, replicas=3)
        return True
    except Exception:
        return False
