"""The dispatch service against a real nats-server and SecantusDB (DESIGN §3, issue 6)."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.contract import subjects as s
from shared.contract.case import CaseAssigned, CaseClosed, CaseReceived
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

COMMUNITY = "jinchuan-c1"
GRID = "jinchuan-c1-g1"


# ---- helpers ---------------------------------------------------------------------------


def settings(nats_url: str, mongodb_url: str, db_prefix: str, tmp_path: Path, offer_ttl: str = "PT30M", max_offers: int = 5):
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"dispatch: {{offer_ttl: {offer_ttl}, max_offers: {max_offers}}}\n", encoding="utf-8")
    return service_settings("dispatch", nats_url, mongodb_url, db_prefix, policy_file=policy)


@asynccontextmanager
async def dispatch(conf):
    """`running("dispatch")`, then a flush so the server has the command subscriptions."""
    async with running("dispatch", conf) as rt:
        await rt.messaging.nc.flush()
        yield rt


def case_id() -> str:
    return f"C-{new_id()}"


def scope(grid: str | None = GRID) -> dict[str, Any]:
    return {"district": "linhe", "community": COMMUNITY, "grid": grid}


def received(cid: str, category: str = "help.home_service", needs: dict | None = None, languages: tuple = ()) -> CaseReceived:
    now = datetime.now(UTC)
    return CaseReceived(
        case_id=cid,
        version=1,
        category=category,
        scope=scope(),
        at=now,
        channel="micro_wish" if category == "help.micro_wish" else "wechat",
        external_id=f"x-{cid}",
        priority="normal",
        title="上门帮代办",
        description="",
        reported_at=now,
        location={"grid": GRID},
        located=True,
        parties=[{"ref": f"p{i + 1}", "role": "applicant", "language": lang} for i, lang in enumerate(languages)],
        needs=needs,
    )


def assigned(cid: str, category: str = "help.home_service", version: int = 2, level: str = "grid") -> CaseAssigned:
    now = datetime.now(UTC)
    return CaseAssigned(
        case_id=cid,
        version=version,
        category=category,
        scope=scope(),
        at=now,
        level=level,
        unit=GRID,
        assignee="gw-1",
        handling="dispatch",
        respond_by=now + timedelta(hours=2),
        resolve_by=now + timedelta(hours=24),
        reason="new",
    )


async def send(js, event: str, model) -> None:
    await publish(js, s.case_event(event), model.model_dump(mode="json"), subject_id=model.case_id)


async def open_case(js, cid: str, category: str = "help.home_service", needs: dict | None = None, languages: tuple = ()) -> None:
    await send(js, "received", received(cid, category, needs, languages))
    await send(js, "assigned", assigned(cid, category))


async def register(nc, vid: str, *, grid: str | None = GRID, skills=("elderly_care",), languages=("zh",), max_tasks: int = 2, active: bool = True, community: str = COMMUNITY) -> dict:
    reply = await command(
        nc,
        s.command("dispatch", "register_volunteer"),
        {
            "volunteer": {
                "id": vid,
                "name": f"志愿者{vid}",
                "community": community,
                "grid": grid,
                "skills": list(skills),
                "languages": list(languages),
                "kind": "volunteer",
                "max_tasks": max_tasks,
                "active": active,
            }
        },
    )
    assert reply["ok"], reply
    return reply


async def dispatch_events(js, cid: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for m in await stream_messages(js, "GRIDCASE_DISPATCH"):
        body = json.loads(m.data)
        if is_newer_copy(body["type"]):  # `unfilled.v2` beside each `unfilled`: see test_nobody_eligible_is_unfilled
            continue
        if cid is None or body["data"].get("case_id") == cid:
            out.append((body["type"].split(".")[2], body["data"]))
    return out


async def wait_events(js, cid: str, names: list[str], timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
    """Wait until the case's dispatch events (in stream order) are exactly `names`."""

    async def check():
        evs = await dispatch_events(js, cid)
        return evs if [n for n, _ in evs] == names else None

    try:
        return await eventually(check, timeout=timeout, interval=0.1, what=f"events {names}")
    except AssertionError:
        raise AssertionError(f"wanted {names}, got {[n for n, _ in await dispatch_events(js, cid)]}") from None


async def respond(nc, task_id: str, vid: str, answer: str) -> dict:
    return await command(nc, s.command("dispatch", "respond"), {"task_id": task_id, "volunteer": vid, "answer": answer})


async def metric(registry, name: str, labels: dict[str, str], value: float) -> None:
    """Metrics move just after the events are published: wait for them."""
    await eventually(lambda: registry.get_sample_value(name, labels) == value, timeout=5, what=f"{name}={value}")


@pytest.fixture
async def nc(nats_url: str):
    conn = await connect(nats_url)
    yield conn
    await conn.close()


# ---- tests -----------------------------------------------------------------------------


async def test_accept_path_to_completed(nats_url, mongodb_url, db_prefix, tmp_path, nc) -> None:
    js = nc.jetstream()
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path)) as rt:
        await register(nc, "v-near", grid=GRID)
        await register(nc, "v-far", grid="other-grid")
        await register(nc, "v-noskill", skills=("haircut",))
        cid = case_id()
        await open_case(js, cid)
        evs = await wait_events(js, cid, ["task_opened", "offered"])
        opened, offered = evs[0][1], evs[1][1]
        task_id = opened["task_id"]
        assert task_id.startswith("T-") and opened["skills"] == ["elderly_care"] and opened["people"] == 1
        assert opened["open_claim"] is False and opened["community"] == COMMUNITY
        assert offered["volunteer"] == "v-near" and offered["version"] == 2

        # redelivered / repeated case events open no second task
        await send(js, "assigned", assigned(cid))
        await publish(js, s.case_event("assigned"), assigned(cid).model_dump(mode="json"))
        await asyncio.sleep(0.5)
        assert len(await dispatch_events(js, cid)) == 2

        wrong = await respond(nc, task_id, "v-far", "accept")
        assert wrong["ok"] is False and wrong["error"]["code"] == "no_offer"
        cmd_id = new_id()
        reply = await command(nc, s.command("dispatch", "respond"), {"task_id": task_id, "volunteer": "v-near", "answer": "accept"}, id=cmd_id)
        assert reply["ok"] and reply["state"] == "filled"
        again = await command(nc, s.command("dispatch", "respond"), {"task_id": task_id, "volunteer": "v-near", "answer": "accept"}, id=cmd_id)
        assert again == reply  # same envelope id: same answer, nothing more
        done = await command(nc, s.command("dispatch", "complete"), {"task_id": task_id, "volunteer": "v-near", "hours": 2.5})
        assert done["ok"] and done["state"] == "completed"
        evs = await wait_events(js, cid, ["task_opened", "offered", "accepted", "completed"])
        assert evs[3][1]["volunteer"] == "v-near" and evs[3][1]["hours"] == 2.5
        assert [e["version"] for _, e in evs] == [1, 2, 3, 4]

        vol = await rt.db.volunteers.find_one({"_id": "v-near"})
        assert vol["tasks"] == 0 and vol["offers"] == 0 and vol["hours_total"] == 2.5
        reg = rt.registry
        await metric(reg, "gridcase_dispatch_tasks_opened_total", {"community": COMMUNITY}, 1)
        await metric(reg, "gridcase_dispatch_offers_total", {"community": COMMUNITY, "outcome": "accepted"}, 1)
        await metric(reg, "gridcase_dispatch_volunteer_hours_total", {"community": COMMUNITY}, 2.5)
        await metric(reg, "gridcase_dispatch_time_to_accept_seconds_count", {"community": COMMUNITY}, 1)

    # volunteer_registered carries no name
    regs = [d for n, d in await dispatch_events(js) if n == "volunteer_registered"]
    assert {d["volunteer"] for d in regs} == {"v-near", "v-far", "v-noskill"}
    assert all("name" not in d for d in regs)


async def test_decline_decline_accept(nats_url, mongodb_url, db_prefix, tmp_path, nc) -> None:
    js = nc.jetstream()
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path)) as rt:
        await register(nc, "v-a", languages=("zh",))
        await register(nc, "v-b", languages=("mn",))
        await register(nc, "v-c", languages=("mn", "zh"), grid="other-grid")
        cid = case_id()
        await open_case(js, cid, languages=("mn",))  # a Mongolian-speaking resident
        evs = await wait_events(js, cid, ["task_opened", "offered"])
        task_id = evs[0][1]["task_id"]
        assert evs[1][1]["volunteer"] == "v-b"  # same grid and shares the language
        assert (await respond(nc, task_id, "v-b", "decline"))["state"] == "open"
        evs = await wait_events(js, cid, ["task_opened", "offered", "declined", "offered"])
        assert evs[3][1]["volunteer"] == "v-a"  # same grid beats language
        await respond(nc, task_id, "v-a", "decline")
        evs = await wait_events(js, cid, ["task_opened", "offered", "declined", "offered", "declined", "offered"])
        assert evs[5][1]["volunteer"] == "v-c"
        late = await respond(nc, task_id, "v-a", "accept")
        assert late["ok"] is False and late["error"]["code"] == "offer_declined"
        assert (await respond(nc, task_id, "v-c", "accept"))["state"] == "filled"
        await wait_events(js, cid, ["task_opened", "offered", "declined", "offered", "declined", "offered", "accepted"])
        reg = rt.registry
        await metric(reg, "gridcase_dispatch_offers_total", {"community": COMMUNITY, "outcome": "declined"}, 2)
        counts = {d["_id"]: (d["offers"], d["tasks"]) async for d in rt.db.volunteers.find({})}
        assert counts == {"v-a": (0, 0), "v-b": (0, 0), "v-c": (0, 1)}


async def test_expiry_offers_next_and_survives_a_restart(nats_url, mongodb_url, db_prefix, tmp_path, nc) -> None:
    js = nc.jetstream()
    conf = settings(nats_url, mongodb_url, db_prefix, tmp_path, offer_ttl="PT2S")
    cid = case_id()
    async with dispatch(conf):
        await register(nc, "v-1")
        await register(nc, "v-2")
        await open_case(js, cid)
        evs = await wait_events(js, cid, ["task_opened", "offered"])
        offered = evs[1][1]
        assert offered["volunteer"] == "v-1"
        ttl = datetime.fromisoformat(offered["expires_at"]) - datetime.fromisoformat(offered["at"])
        assert ttl == timedelta(seconds=2)
    # dispatch is down while the offer falls due
    await asyncio.sleep(2.5)
    assert [n for n, _ in await dispatch_events(js, cid)] == ["task_opened", "offered"]
    async with dispatch(conf) as rt:
        evs = await wait_events(js, cid, ["task_opened", "offered", "expired", "offered"], timeout=5)
        assert evs[2][1]["volunteer"] == "v-1" and evs[3][1]["volunteer"] == "v-2"
        # the second offer expires too: nobody is left
        evs = await wait_events(js, cid, ["task_opened", "offered", "expired", "offered", "expired", "unfilled"], timeout=8)
        assert evs[5][1]["reason"] == "no_volunteer"
        await metric(rt.registry, "gridcase_dispatch_offers_total", {"community": COMMUNITY, "outcome": "expired"}, 2)
        task = await rt.db.tasks.find_one({"_id": evs[0][1]["task_id"]})
        assert task["state"] == "unfilled" and task["wake_at"] is None


async def test_an_accept_racing_its_offers_expiry_fills_the_place_exactly_once(nats_url, mongodb_url, db_prefix, tmp_path, nc) -> None:
    """The last place, wanted at the same moment by the volunteer whose offer is running out and
    by the expiry that passes it on: one of them wins, never both (version-guarded writes)."""
    js = nc.jetstream()
    # v-2's offers run 2 s too: long enough to answer them all on a slow machine
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path, offer_ttl="PT2S")) as rt:
        await register(nc, "v-1", max_tasks=10)
        await register(nc, "v-2", grid="other-grid", max_tasks=10)
        cases = {case_id(): offset for offset in (-0.15, -0.05, -0.01, 0.0, 0.01, 0.03, 0.08, 0.2)}
        for cid in cases:
            await open_case(js, cid)
        offers = {cid: (await wait_events(js, cid, ["task_opened", "offered"]))[1][1] for cid in cases}

        async def accept_near_expiry(cid: str) -> dict:
            offer = offers[cid]
            assert offer["volunteer"] == "v-1"
            due = datetime.fromisoformat(offer["expires_at"]).timestamp() + cases[cid]
            await asyncio.sleep(max(0.0, due - datetime.now(UTC).timestamp()))
            return await respond(nc, offer["task_id"], "v-1", "accept")

        replies = dict(zip(cases, await asyncio.gather(*(accept_near_expiry(c) for c in cases)), strict=True))
        lost = [cid for cid, reply in replies.items() if not reply["ok"]]
        for cid in lost:  # the expiry won: v-1 is told so ...
            assert replies[cid]["error"]["code"] in ("offer_expired", "not_offered"), replies[cid]
        # ... and the place goes to the next volunteer, who takes it (all at once: their offers run)
        passed_on = ["task_opened", "offered", "expired", "offered"]

        async def all_passed_on():
            evs = await dispatch_events(js)
            by_case = {cid: [(n, d) for n, d in evs if d.get("case_id") == cid] for cid in lost}
            return by_case if all([n for n, _ in e] == passed_on for e in by_case.values()) else None

        by_case = await eventually(all_passed_on, timeout=10, interval=0.1, what=f"{len(lost)} places passed on to v-2")
        for cid in lost:
            assert by_case[cid][3][1]["volunteer"] == "v-2"
        taken = await asyncio.gather(*(respond(nc, offers[cid]["task_id"], "v-2", "accept") for cid in lost))
        assert all(r["ok"] for r in taken), taken
        for cid in lost:
            await wait_events(js, cid, [*passed_on, "accepted"])
        for cid in set(cases) - set(lost):  # v-1 won: the place is v-1's and nobody else is asked
            assert [n for n, _ in await dispatch_events(js, cid)] == ["task_opened", "offered", "accepted"], cid
        for cid in cases:
            task = await rt.db.tasks.find_one({"_id": offers[cid]["task_id"]})
            assert task["state"] == "filled" and sum(o["state"] == "accepted" for o in task["offers"]) == 1, task
        counts = {d["_id"]: (d["offers"], d["tasks"]) async for d in rt.db.volunteers.find({})}
        won = sum(r["ok"] for r in replies.values())
        assert counts == {"v-1": (0, won), "v-2": (0, len(cases) - won)}


async def test_nobody_eligible_is_unfilled(nats_url, mongodb_url, db_prefix, tmp_path, nc) -> None:
    js = nc.jetstream()
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path)) as rt:
        await register(nc, "v-elsewhere", community="other-community")
        await register(nc, "v-noskill", skills=("haircut",))
        await register(nc, "v-full", max_tasks=0)
        await register(nc, "v-gone")
        await register(nc, "v-gone", active=False)  # registering an existing id updates it
        cid = case_id()
        await open_case(js, cid, needs={"skills": ["elderly_care"], "people": 1})
        evs = await wait_events(js, cid, ["task_opened", "unfilled"])
        assert evs[1][1]["reason"] == "no_volunteer" and evs[1][1]["version"] == 2
        # the same fact as `unfilled.v2` first, with the level of the assignment the task served
        copies = [json.loads(m.data) for m in await stream_messages(js, "GRIDCASE_DISPATCH")]
        copies = [b for b in copies if b["data"].get("case_id") == cid and ".unfilled." in b["type"]]
        assert [b["type"] for b in copies] == [s.DISPATCH_UNFILLED_V2, s.dispatch_event("unfilled")]
        assert copies[0]["data"] == {**evs[1][1], "level": "grid"} and copies[0]["id"] != copies[1]["id"]
        await metric(rt.registry, "gridcase_dispatch_unfilled_total", {"community": COMMUNITY}, 1)
        gone = [d for n, d in await dispatch_events(js) if n == "volunteer_registered" and d["volunteer"] == "v-gone"]
        assert [d["active"] for d in gone] == [True, False]


async def test_three_person_task_offers_until_three_accepted(nats_url, mongodb_url, db_prefix, tmp_path, nc) -> None:
    js = nc.jetstream()
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path)) as rt:
        for i in range(5):
            await register(nc, f"v-{i}", skills=("repair", "elderly_care"))
        cid = case_id()
        await open_case(js, cid, needs={"skills": ["repair"], "people": 3})
        evs = await wait_events(js, cid, ["task_opened", "offered", "offered", "offered"])
        task_id = evs[0][1]["task_id"]
        assert evs[0][1]["people"] == 3 and evs[0][1]["skills"] == ["repair"]
        assert [d["volunteer"] for _, d in evs[1:]] == ["v-0", "v-1", "v-2"]
        assert (await respond(nc, task_id, "v-0", "accept"))["places_left"] == 2
        await respond(nc, task_id, "v-1", "decline")
        evs = await wait_events(js, cid, ["task_opened", "offered", "offered", "offered", "accepted", "declined", "offered"])
        assert evs[6][1]["volunteer"] == "v-3"
        assert (await respond(nc, task_id, "v-2", "accept"))["state"] == "open"
        early = await command(nc, s.command("dispatch", "complete"), {"task_id": task_id, "volunteer": "v-0", "hours": 1})
        assert early["error"]["code"] == "not_filled"
        assert (await respond(nc, task_id, "v-3", "accept"))["state"] == "filled"
        for vid, hours in (("v-0", 1.0), ("v-2", 2.0), ("v-3", 3.0)):
            reply = await command(nc, s.command("dispatch", "complete"), {"task_id": task_id, "volunteer": vid, "hours": hours})
            assert reply["ok"], reply
        assert reply["state"] == "completed"
        evs = await wait_events(js, cid, ["task_opened", "offered", "offered", "offered", "accepted", "declined", "offered", "accepted", "accepted", "completed", "completed", "completed"])
        await metric(rt.registry, "gridcase_dispatch_volunteer_hours_total", {"community": COMMUNITY}, 6.0)


async def test_open_claim_race_has_exactly_one_winner(nats_url, mongodb_url, db_prefix, tmp_path, nc) -> None:
    js = nc.jetstream()
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path)) as rt:
        await register(nc, "pm-1", skills=())
        await register(nc, "pm-2", skills=())
        await register(nc, "pm-far", skills=(), community="other-community")
        for _ in range(3):
            cid = case_id()
            await open_case(js, cid, category="help.micro_wish")
            evs = await wait_events(js, cid, ["task_opened"])
            opened = evs[0][1]
            assert opened["open_claim"] is True and opened["skills"] == []
            task_id = opened["task_id"]
            far = await command(nc, s.command("dispatch", "claim"), {"task_id": task_id, "volunteer": "pm-far"})
            assert far["error"]["code"] == "other_community"
            replies = await asyncio.gather(
                *(command(nc, s.command("dispatch", "claim"), {"task_id": task_id, "volunteer": v}) for v in ("pm-1", "pm-2"))
            )
            winners = [r for r in replies if r["ok"]]
            losers = [r for r in replies if not r["ok"]]
            assert len(winners) == 1 and len(losers) == 1, replies
            assert losers[0]["error"]["code"] == "taken" and "claimed" in losers[0]["error"]["message"]
            evs = await wait_events(js, cid, ["task_opened", "accepted"])
            task = await rt.db.tasks.find_one({"_id": task_id})
            assert task["state"] == "filled" and len(task["offers"]) == 1
            winner = evs[1][1]["volunteer"]
            done = await command(nc, s.command("dispatch", "complete"), {"task_id": task_id, "volunteer": winner, "hours": 1})
            assert done["state"] == "completed"
        counts = {d["_id"]: d["tasks"] async for d in rt.db.volunteers.find({})}
        assert counts == {"pm-1": 0, "pm-2": 0, "pm-far": 0}


async def test_case_closed_cancels_task_and_withdraws_offers(nats_url, mongodb_url, db_prefix, tmp_path, nc) -> None:
    js = nc.jetstream()
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path)) as rt:
        for i in range(3):
            await register(nc, f"v-{i}")
        cid = case_id()
        await open_case(js, cid, needs={"people": 2})
        evs = await wait_events(js, cid, ["task_opened", "offered", "offered"])
        task_id = evs[0][1]["task_id"]
        await respond(nc, task_id, "v-0", "accept")
        closed = CaseClosed(case_id=cid, version=5, category="help.home_service", scope=scope(), at=datetime.now(UTC), reason="withdrawn")
        await send(js, "closed", closed)
        await send(js, "closed", closed)  # repeated: no second cancel
        evs = await wait_events(js, cid, ["task_opened", "offered", "offered", "accepted", "cancelled"])
        assert evs[4][1]["reason"] == "case_closed"
        late = await respond(nc, task_id, "v-1", "accept")
        assert late["error"]["code"] == "task_cancelled"
        task = await rt.db.tasks.find_one({"_id": task_id})
        assert [o["state"] for o in task["offers"]] == ["released", "withdrawn"] and task["wake_at"] is None
        counts = {d["_id"]: (d["offers"], d["tasks"]) async for d in rt.db.volunteers.find({})}
        assert counts == {"v-0": (0, 0), "v-1": (0, 0), "v-2": (0, 0)}
        # an `assigned` older than the close opens nothing
        await send(js, "assigned", assigned(cid, version=3, level="community"))
        await asyncio.sleep(0.5)
        assert len(await dispatch_events(js, cid)) == 5


async def test_assigned_before_received_waits_for_the_needs(nats_url, mongodb_url, db_prefix, tmp_path, nc) -> None:
    js = nc.jetstream()
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path)):
        await register(nc, "v-med", skills=("medical",))
        cid = case_id()
        await send(js, "assigned", assigned(cid))
        await asyncio.sleep(0.3)
        await send(js, "received", received(cid, needs={"skills": ["medical"], "people": 1}))
        evs = await wait_events(js, cid, ["task_opened", "offered"], timeout=10)
        assert evs[0][1]["skills"] == ["medical"] and evs[1][1]["volunteer"] == "v-med"
        # with no `received` at all, the category's defaults are used after a few deliveries
        other = case_id()
        await send(js, "assigned", assigned(other))
        evs = await wait_events(js, other, ["task_opened", "unfilled"], timeout=15)
        assert evs[0][1]["skills"] == ["elderly_care"]
