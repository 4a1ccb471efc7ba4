"""Issue 8: the launched system, the demo directory and the simulator at a fast pace for 60 s."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from pathlib import Path

import nats
import pytest

from demo.simulator import load_directory, simulate
from shared.contract import subjects as s
from shared.launcher import Stack, StackConfig, free_port_offset

from ..support import stream_messages

pytestmark = pytest.mark.e2e

# seconds-scale clocks so that every path happens within a minute
POLICY = """
clocks:
  building:  {normal: {respond: PT4S, resolve: PT10S}, urgent: {respond: PT3S, resolve: PT8S}}
  grid:      {normal: {respond: PT4S, resolve: PT10S}, urgent: {respond: PT3S, resolve: PT8S}}
  community: {normal: {respond: PT5S, resolve: PT14S}, urgent: {respond: PT4S, resolve: PT10S}}
  street:    {normal: {respond: PT6S, resolve: PT20S}, urgent: {respond: PT5S, resolve: PT14S}}
feedback_window: PT40S
mediation_norm: PT15S
dispatch: {offer_ttl: PT3S, max_offers: 3}
triage_unit: jinchuan
"""


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.timeout(300)
async def test_demo_for_a_minute_exercises_every_path(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    stack = Stack(StackConfig(data=tmp_path / "data", policy=policy, port_offset=free_port_offset()))
    try:
        await asyncio.to_thread(stack.start, 60)
        stats = await simulate(stack.nats_url, rate=8, duration=60, seed=11, directory=load_directory(), speed=4.0, load_directory=True)
        assert stats.reports_unique > 300
        await asyncio.sleep(15)  # let clocks, offers and follow-ups settle

        kpis = await asyncio.to_thread(get_json, stack.url("stats", "/api/kpis?group_by=community"))
        communities = {row["key"]["community"] for row in kpis["rows"]}
        assert {"jianglin", "zhongshan", "fuyuan", "nankai"} <= communities, communities
        totals = kpis["totals"]
        assert totals["received"] > 300 and totals["escalated"] > 0 and totals["resolved"] > 0
        assert totals["feedback"] > 0 and totals["satisfied"] > 0

        by_level = {row["key"]["level"]: row for row in (await asyncio.to_thread(get_json, stack.url("stats", "/api/kpis?group_by=level")))["rows"]}
        assert (by_level.get("grid") or {}).get("resolved") and (by_level.get("community") or {}).get("resolved")

        overview = await asyncio.to_thread(get_json, stack.url("stats", "/api/overview"))
        assert overview["mediation"]["agreed"] > 0 and overview["mediation"]["failed"] > 0, overview["mediation"]
        assert overview["volunteer_hours"] > 0  # completed volunteer tasks, hours credited

        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(stack.url("stats", "/metrics"), timeout=5).read().decode())  # noqa: S310
        assert metric(metrics, "gridcase_mediation_outcomes_total", outcome="agreed") > 0
        assert sum(
            metric(metrics, "gridcase_mediation_outcomes_total", outcome=f"failed_{reason}")
            for reason in ("party_declined", "no_agreement", "overdue")
        ) > 0
        assert metric(metrics, "gridcase_dispatch_outcomes_total", outcome="completed") > 0

        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        feedback = await stream_messages(js, "GRIDCASE_CASES", s.case_event("feedback_recorded"))
        kinds = Counter(json.loads(m.data)["data"]["satisfaction"] for m in feedback)
        assert set(kinds) == {"satisfied", "basically_satisfied", "dissatisfied"}, kinds
        dlq = await js.stream_info("GRIDCASE_DLQ")
        assert dlq.state.messages == 0, "the DLQ must stay empty"
        await nc.close()
    finally:
        await asyncio.to_thread(stack.stop)
