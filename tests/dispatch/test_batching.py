"""Case events in batches: one unit of work per burst, and the event-by-event fallback."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import pytest

from services.dispatch.domain import CaseInfo
from shared.contract.case import CaseClosed
from shared.errors import Conflict

from ..support import connect, eventually
from .test_service import (
    assigned,
    case_id,
    dispatch,
    dispatch_events,
    received,
    register,
    scope,
    send,
    settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def nc(nats_url: str):
    conn = await connect(nats_url)
    yield conn
    await conn.close()


def commits(registry) -> float:
    """Committed transactions of this runtime, as the database client counted them."""
    return sum(
        s.value
        for metric in registry.collect()
        if metric.name == "gridcase_db_command_seconds"
        for s in metric.samples
        if s.name.endswith("_count") and s.labels.get("command") == "commitTransaction"
    )


async def burst(js, events: list[tuple[str, object]]) -> None:
    """Publish every event at once (in this order into the stream)."""
    await asyncio.gather(*(send(js, name, model) for name, model in events))


async def events_by_case(js, cids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {cid: [] for cid in cids}
    for name, data in await dispatch_events(js):
        if data.get("case_id") in out:
            out[data["case_id"]].append(name)
    return out


async def wait_for(js, wanted: dict[str, list[str]], timeout: float = 20.0) -> None:
    async def check():
        return await events_by_case(js, list(wanted)) == wanted

    try:
        await eventually(check, timeout=timeout, interval=0.2, what="dispatch events")
    except AssertionError:
        got = Counter(tuple(v) for v in (await events_by_case(js, list(wanted))).values())
        raise AssertionError(f"wanted {Counter(tuple(v) for v in wanted.values())}, got {got}") from None


async def counters(rt) -> dict[str, tuple[int, int]]:
    """(offers, tasks) per volunteer, stored; the in-memory registry must agree."""
    stored = {d["_id"]: (d["offers"], d["tasks"]) async for d in rt.db.volunteers.find({})}
    memory = {vid: (v.offers, v.tasks) for vid, v in rt.dispatch.registry.by_id.items()}
    assert memory == stored
    return stored


async def test_a_burst_is_a_few_transactions_and_respects_capacity(nats_url, mongodb_url, db_prefix, tmp_path, nc) -> None:
    js = nc.jetstream()
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path)) as rt:
        # room for 59 offers: 29 volunteers with two places and one with a single place
        for i in range(30):
            await register(nc, f"v-{i:02d}", max_tasks=1 if i == 0 else 2)
        cids = [case_id() for _ in range(60)]
        before = commits(rt.registry)
        await burst(js, [("received", received(cid)) for cid in cids])
        await burst(js, [("assigned", assigned(cid)) for cid in cids])

        async def settled():
            evs = await events_by_case(js, cids)
            return all(len(names) == 2 for names in evs.values()) and evs

        evs = await eventually(settled, timeout=20, interval=0.2, what="every case has a task and an answer")
        outcomes = Counter(names[1] for names in evs.values())
        assert all(names[0] == "task_opened" for names in evs.values())
        # offers made within one batch count against capacity: 59 places, 60 tasks
        assert outcomes == {"offered": 59, "unfilled": 1}, outcomes
        assert await counters(rt) == {f"v-{i:02d}": (1 if i == 0 else 2, 0) for i in range(30)}
        tasks = Counter([d["case_id"] async for d in rt.db.tasks.find({})])
        assert tasks == {cid: 1 for cid in cids}  # exactly one task per case

        used = commits(rt.registry) - before
        assert used < 120 / 3, f"{used} transactions for 120 events"

        # repeats of the whole burst change nothing (idempotent as event by event)
        again = commits(rt.registry)
        await burst(js, [("assigned", assigned(cid)) for cid in cids[:20]] + [("received", received(cid)) for cid in cids[:20]])
        await asyncio.sleep(1.0)
        assert await events_by_case(js, cids) == evs
        assert commits(rt.registry) - again < 40 / 3


async def test_a_batch_that_meets_a_conflict_falls_back_event_by_event(
    nats_url, mongodb_url, db_prefix, tmp_path, nc, monkeypatch
) -> None:
    js = nc.jetstream()
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path)) as rt:
        svc = rt.dispatch
        for i in range(6):
            await register(nc, f"v-{i}")
        old = [case_id() for _ in range(4)]
        await burst(js, [("received", received(cid)) for cid in old])
        await burst(js, [("assigned", assigned(cid)) for cid in old])
        await wait_for(js, {cid: ["task_opened", "offered"] for cid in old})

        # the next batch's guarded task write reports a mismatch once (after writing: the
        # transaction must undo those writes too)
        real_save_tasks, real_one = svc.store.save_tasks, svc._one
        conflicts, singles = [], []

        async def save_tasks(tasks, session):
            await real_save_tasks(tasks, session)
            if not conflicts:
                conflicts.append(True)
                raise Conflict("test: a guarded write matched fewer documents than expected")

        async def one(item):
            singles.append(item.data.case_id)
            await real_one(item)

        monkeypatch.setattr(svc.store, "save_tasks", save_tasks)
        monkeypatch.setattr(svc, "_one", one)

        new = [case_id() for _ in range(4)]
        now = datetime.now(UTC)
        closed = [CaseClosed(case_id=cid, version=5, category="help.home_service", scope=scope(), at=now, reason="withdrawn") for cid in old]
        await burst(js, [("closed", c) for c in closed] + [("received", received(cid)) for cid in new])
        await burst(js, [("assigned", assigned(cid)) for cid in new])
        wanted = {cid: ["task_opened", "offered", "cancelled"] for cid in old} | {cid: ["task_opened", "offered"] for cid in new}
        await wait_for(js, wanted)
        assert conflicts and singles, "the batch fell back to the event-by-event path"

        # nothing doubled, nothing late; repeats of the closes change nothing
        await burst(js, [("closed", c) for c in closed])
        await asyncio.sleep(1.0)
        assert await events_by_case(js, old + new) == wanted
        tasks = Counter([d["case_id"] async for d in rt.db.tasks.find({})])
        assert tasks == {cid: 1 for cid in old + new}
        stored = await counters(rt)  # the aborted batch's offers were undone in memory
        assert sum(o for o, _ in stored.values()) == 4 and all(t == 0 for _, t in stored.values())
        cases = {d["_id"]: d async for d in rt.db.cases.find({})}
        assert all(cases[cid]["closed_version"] == 5 for cid in old)
        assert all(cases[cid]["received"] and cases[cid]["assigned_version"] == 2 for cid in new)


async def test_guarded_batch_writes_refuse_existing_and_stale_documents(nats_url, mongodb_url, db_prefix, tmp_path) -> None:
    async with dispatch(settings(nats_url, mongodb_url, db_prefix, tmp_path)) as rt:
        store, cases = rt.dispatch.store, rt.db.cases
        a, b = CaseInfo(case_id="C-a"), CaseInfo(case_id="C-b")
        async with rt.outbox.unit_of_work() as uow:
            await store.save_cases([a, b], uow.session)
        assert (a.version, b.version) == (1, 1)

        # a document inserted by someone else meanwhile: the whole transaction is undone
        with pytest.raises(Conflict):
            async with rt.outbox.unit_of_work() as uow:
                await store.save_cases([CaseInfo(case_id="C-new"), CaseInfo(case_id="C-a")], uow.session)
        assert await cases.count_documents({"_id": "C-new"}) == 0

        # a document changed by someone else since it was loaded
        stale_b = (await store.get_cases(["C-b"]))["C-b"]
        async with rt.outbox.unit_of_work() as uow:
            await store.save_cases([b], uow.session)
        a.closed_version = 3
        with pytest.raises(Conflict):
            async with rt.outbox.unit_of_work() as uow:
                await store.save_cases([a, stale_b], uow.session)
        assert (await cases.find_one({"_id": "C-a"}))["closed_version"] == 0
        assert (await cases.find_one({"_id": "C-b"}))["version"] == 2
