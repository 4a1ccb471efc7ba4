"""Dispatch and routing together (events only): completion resolves the case, unfilled escalates it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.contract import subjects as s
from shared.contract.case import CaseReceived
from shared.contract.catalogue import is_newer_copy
from shared.contract.envelope import new_id

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

DIRECTORY = {
    "districts": [{"code": "linhe", "name": "临河区"}],
    "streets": [{"code": "s1", "name": "一街道", "district": "linhe"}],
    "communities": [{"code": "c1", "name": "金川社区", "district": "linhe", "street": "s1"}],
    "grids": [{"code": "c1-g01", "name": "第1网格", "community": "c1"}],
    "buildings": [{"code": "c1-g01-b01", "grid": "c1-g01", "address": "金川社区第1片区1号楼", "aliases": []}],
    "staff": [
        {"id": "so-1", "name": "街道干部", "role": "street_officer", "unit": "s1"},
        {"id": "dir-c1", "name": "主任", "role": "community_director", "unit": "c1"},
        {"id": "gw-c1-g01", "name": "网格员", "role": "grid_worker", "unit": "c1-g01"},
    ],
}


def received(case_id: str) -> CaseReceived:
    now = datetime.now(UTC)
    return CaseReceived(
        case_id=case_id,
        version=1,
        category="help.home_service",
        scope={},
        at=now,
        channel="wechat",
        external_id="x-" + case_id,
        priority="normal",
        title="高龄独居老人需要上门帮代办",
        description="",
        reported_at=now,
        location={"building": "c1-g01-b01"},
        located=False,
        parties=[],
        needs={"skills": ["elderly_care"], "people": 1},
    )


async def case_events(js, case_id: str) -> list[tuple[str, dict]]:
    out = []
    for m in await stream_messages(js, "GRIDCASE_CASES"):
        body = json.loads(m.data)
        if body["data"]["case_id"] == case_id:
            out.append((body["type"].split(".")[2], body["data"]))
    return out


async def dispatch_events(js, case_id: str) -> list[tuple[str, dict]]:
    out = []
    for m in await stream_messages(js, "GRIDCASE_DISPATCH"):
        body = json.loads(m.data)
        if is_newer_copy(body["type"]):  # `unfilled.v2` beside each `unfilled` (routing reads v2)
            continue
        if body["data"].get("case_id") == case_id:
            out.append((body["type"].split(".")[2], body["data"]))
    return out


@pytest.fixture
async def both(nats_url, mongodb_url, db_prefix):
    nc = await connect(nats_url)
    async with (
        running("routing", service_settings("routing", nats_url, mongodb_url, db_prefix)) as routing,
        running("dispatch", service_settings("dispatch", nats_url, mongodb_url, db_prefix)) as dispatch,
    ):
        await routing.messaging.nc.flush()
        await dispatch.messaging.nc.flush()
        assert (await command(nc, s.DIRECTORY_LOAD, DIRECTORY))["ok"]
        yield nc
    await nc.close()


async def test_completion_resolves_the_case(both) -> None:
    nc = both
    js = nc.jetstream()
    reply = await command(
        nc,
        s.command("dispatch", "register_volunteer"),
        {"volunteer": {"id": "v-1", "name": "志愿者", "community": "c1", "grid": "c1-g01", "skills": ["elderly_care"], "languages": ["zh"]}},
    )
    assert reply["ok"]
    cid = f"C-{new_id()}"
    await publish(js, s.case_event("received"), received(cid).model_dump(mode="json"), subject_id=cid)

    async def offered():
        evs = await dispatch_events(js, cid)
        return evs if [n for n, _ in evs] == ["task_opened", "offered"] else None

    evs = await eventually(offered, timeout=15, interval=0.1, what="task offered")
    task_id = evs[0][1]["task_id"]
    assert evs[0][1]["community"] == "c1" and evs[1][1]["volunteer"] == "v-1"
    assert (await command(nc, s.command("dispatch", "respond"), {"task_id": task_id, "volunteer": "v-1", "answer": "accept"}))["ok"]
    assert (await command(nc, s.command("dispatch", "complete"), {"task_id": task_id, "volunteer": "v-1", "hours": 1.5}))["ok"]

    async def resolved():
        evs = await case_events(js, cid)
        return [d for n, d in evs if n == "resolved"]

    done = await eventually(resolved, timeout=15, interval=0.1, what="case resolved by routing")
    assert done[0]["by"] == "v-1" and done[0]["level"] == "grid"


async def test_unfilled_task_escalates_the_case(both) -> None:
    nc = both
    js = nc.jetstream()
    cid = f"C-{new_id()}"
    await publish(js, s.case_event("received"), received(cid).model_dump(mode="json"), subject_id=cid)

    async def escalated():
        evs = await case_events(js, cid)
        return [d for n, d in evs if n == "escalated"]

    esc = await eventually(escalated, timeout=15, interval=0.1, what="case escalated by routing")
    assert esc[0]["reason"] == "dispatch_unfilled" and esc[0]["from_level"] == "grid"
    assert [n for n, _ in await dispatch_events(js, cid)] == ["task_opened", "unfilled"]
