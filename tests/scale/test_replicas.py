"""Horizontal scale (issue 9): two replicas of intake and routing against one stack.

Every report becomes one case, every due escalation happens once, stats count each case once.
Stats runs as one active instance: its KPI rollups live in memory for fast queries (see
services/stats), so it scales by being a single consumer, not by replicas.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from shared.contract import subjects as s

from ..support import (
    command,
    connect,
    eventually,
    publish,
    report,
    running,
    service_settings,
    small_directory,
    stream_messages,
)

pytestmark = pytest.mark.integration

POLICY = """
clocks:
  grid: {normal: {respond: PT3S, resolve: PT1H}}
  community: {normal: {respond: PT1H, resolve: PT2H}}
"""


@pytest.mark.timeout(240)
async def test_two_replicas_of_each_service(nats_url: str, mongodb_url: str, db_prefix: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    nc = await connect(nats_url)
    js = nc.jetstream()
    async with AsyncExitStack() as stack:
        for service, replicas in (("routing", 2), ("intake", 2), ("stats", 1)):
            for _ in range(replicas):
                settings = service_settings(service, nats_url, mongodb_url, db_prefix, policy_file=policy, data_dir=tmp_path)
                await stack.enter_async_context(running(service, settings))
        loaded = await command(nc, s.DIRECTORY_LOAD, small_directory(communities=2, grids=2, buildings=3))
        assert loaded["ok"], loaded
        grids = [g["code"] for g in small_directory(2, 2, 3)["grids"]]
        n = 300
        for i in range(n):
            await publish(js, s.INTAKE_REPORT, report(f"scale-{i}", grid=grids[i % len(grids)]))
        for i in range(0, n, 6):  # platform retries with new envelopes: same (channel, external_id)
            await publish(js, s.INTAKE_REPORT, report(f"scale-{i}", grid=grids[i % len(grids)]))

        progress: dict[str, int] = {}

        async def escalations():
            msgs = await stream_messages(js, "GRIDCASE_CASES", s.case_event("escalated"))
            progress["escalated"] = len(msgs)
            return msgs if len(msgs) >= n else None

        try:
            escalated = await eventually(escalations, timeout=90, interval=0.5, what="every case escalated")
        except AssertionError as exc:
            counts = {e: len(await stream_messages(js, "GRIDCASE_CASES", s.case_event(e))) for e in ("received", "assigned", "escalated", "closed")}
            raise AssertionError(f"{exc}: {counts}") from None
        received = await stream_messages(js, "GRIDCASE_CASES", s.case_event("received"))
        by_external = Counter(json.loads(m.data)["data"]["external_id"] for m in received)
        assert len(by_external) == n and set(by_external.values()) == {1}
        per_case = Counter(json.loads(m.data)["data"]["case_id"] for m in escalated)
        assert len(per_case) == n and set(per_case.values()) == {1}, "an escalation was doubled or missed"

        async def stats_totals():
            reply = await command(nc, s.STATS_QUERY, {"from": "2026-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})
            t = reply.get("totals", {})
            return t if t.get("received") == n and t.get("escalated") == n else None

        totals = await eventually(stats_totals, timeout=60, interval=0.5, what="stats caught up")
        assert totals["received"] == n and totals["assigned"] == n
    await nc.close()
