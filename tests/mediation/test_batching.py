"""Case events in batches: one unit of work per burst, the per-event path as the fallback
(real nats-server and SecantusDB)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from services.mediation import domain
from services.mediation.domain import CloseReason, MediatorChoice
from services.mediation.store import to_doc
from shared.contract import subjects as s
from shared.errors import Conflict

from ..support import eventually
from .conftest import Harness
from .support import assigned, closed, feed, mediation_events, new_case_id, received

pytestmark = pytest.mark.integration

RECEIVED, ASSIGNED, CLOSED = s.case_event("received"), s.case_event("assigned"), s.case_event("closed")


def commits(h: Harness) -> float:
    """Transactions this runtime has committed so far (the driver's command metrics)."""
    return sum(
        sample.value
        for metric in h.rt.registry.collect()
        if metric.name == "gridcase_db_command_seconds"
        for sample in metric.samples
        if sample.name.endswith("_count") and sample.labels.get("command") == "commitTransaction"
    )


async def opened_events(h: Harness, cases: list[str]) -> Counter[str]:
    wanted = set(cases)
    return Counter(d["case_id"] for n, d in await mediation_events(h.js) if n == "opened" and d["case_id"] in wanted)


async def all_open_with_parties(h: Harness, cases: list[str]) -> list[dict]:
    async def check():
        docs = await h.rt.db.dossiers.find({"case_id": {"$in": cases}}).to_list()
        return docs if len(docs) == len(cases) and all(d["parties_known"] for d in docs) else None

    return await eventually(check, timeout=30, what="every dossier opened with its parties")


async def test_a_burst_opens_one_dossier_per_case_in_few_transactions(med: Harness) -> None:
    cases = [new_case_id() for _ in range(60)]
    before = commits(med)
    sends = [feed(med.js, RECEIVED, received(c)) for c in cases] + [feed(med.js, ASSIGNED, assigned(c)) for c in cases]
    await asyncio.gather(*sends)

    docs = await all_open_with_parties(med, cases)
    assert sorted(d["case_id"] for d in docs) == sorted(cases)
    assert all(d["state"] == "open" and [p["ref"] for p in d["parties"]] == ["p1", "p2"] for d in docs)
    await eventually(lambda: _count_is(med, cases, 60), what="60 opened events")
    assert set((await opened_events(med, cases)).values()) == {1}
    assert await med.rt.db.cases.count_documents({"_id": {"$in": cases}, "assigned_version": 2}) == 60

    used = commits(med) - before
    assert 1 <= used < 120 / 3, f"{used} transactions for 120 events"
    # openings within one batch see each other: both zh mediators share the load evenly
    per_mediator = Counter(d["mediator"] for d in docs)
    assert set(per_mediator) == {"med-a", "med-b"} and abs(per_mediator["med-a"] - per_mediator["med-b"]) <= 1
    assert med.rt.mediation.load.of(["med-a", "med-b"]) == dict(per_mediator)


async def _count_is(h: Harness, cases: list[str], n: int) -> bool:
    return sum((await opened_events(h, cases)).values()) == n


async def test_a_conflicting_batch_falls_back_to_one_event_at_a_time(med: Harness) -> None:
    """A dossier with the id the batch would open exists already (closed): the batch's insert
    fails, the unit of work aborts, and each event goes the per-event way."""
    svc = med.rt.mediation
    one_by_one: list[str] = []
    per_event = svc.on_assigned

    async def counting(a):
        one_by_one.append(a.case_id)
        await per_event(a)

    svc.on_assigned = counting
    cases = [new_case_id() for _ in range(10)]
    taken = cases[3]
    events = {c: assigned(c) for c in cases}
    a = events[taken]
    existing, _ = domain.open_dossier(
        case_id=taken, level=a.level, case_version=a.version, community="jl", category=str(a.category),
        parties=[], choice=MediatorChoice(None, "none"), now=a.at, norm=med.rt.policy.mediation_norm, assigned_at=a.at,
    )
    existing, _ = domain.close_quietly(existing, a.at, CloseReason.superseded)
    await med.rt.db.dossiers.insert_one(to_doc(existing))

    await asyncio.gather(*[feed(med.js, RECEIVED, received(c)) for c in cases])
    await asyncio.gather(*[feed(med.js, ASSIGNED, events[c]) for c in cases])

    others = [c for c in cases if c != taken]
    await all_open_with_parties(med, others)
    await eventually(lambda: _assigned_everywhere(med, cases), timeout=15, what="every case file at its assignment")
    assert taken in one_by_one  # the per-event path took the batch
    assert await med.rt.db.dossiers.count_documents({"case_id": taken}) == 1  # only the one that was there
    assert (await med.dossier(taken))["state"] == "closed"
    await asyncio.sleep(0.5)  # nothing more arrives
    opened = await opened_events(med, cases)
    assert taken not in opened and set(opened) == set(others) and set(opened.values()) == {1}


async def _assigned_everywhere(h: Harness, cases: list[str]) -> bool:
    return await h.rt.db.cases.count_documents({"_id": {"$in": cases}, "assigned_version": 2}) == len(cases)


async def test_a_guard_mismatch_falls_back_without_losing_or_doubling_events(med: Harness, monkeypatch) -> None:
    cases = [new_case_id() for _ in range(8)]
    await asyncio.gather(*[feed(med.js, RECEIVED, received(c)) for c in cases])
    await asyncio.gather(*[feed(med.js, ASSIGNED, assigned(c)) for c in cases])
    await all_open_with_parties(med, cases)

    store = med.rt.mediation.store
    real = store.save_many
    mismatches: list[int] = []

    async def once_changed_meanwhile(changes, session):
        await real(changes, session)
        if not mismatches:  # as if another writer had moved one dossier on: the guard misses
            mismatches.append(len(changes))
            raise Conflict("1 of n dossiers changed meanwhile")

    monkeypatch.setattr(store, "save_many", once_changed_meanwhile)
    await asyncio.gather(*[feed(med.js, CLOSED, closed(c, version=5)) for c in cases])

    async def all_closed():
        return await med.rt.db.dossiers.count_documents({"case_id": {"$in": cases}, "state": "closed"}) == len(cases)

    await eventually(all_closed, timeout=15, what="every dossier closed")
    assert mismatches  # the batch met the mismatch and was rolled back
    await asyncio.sleep(0.5)
    evs = [(n, d) for n, d in await mediation_events(med.js) if d["case_id"] in set(cases)]
    for c in cases:
        assert [n for n, d in evs if d["case_id"] == c] == ["opened", "closed"]
    docs = await med.rt.db.dossiers.find({"case_id": {"$in": cases}}).to_list()
    assert all(d["version"] == 2 for d in docs)
    assert med.rt.registry.get_sample_value("gridcase_mediation_closed_total", {"level": "grid"}) == len(cases)
    assert sum(med.rt.mediation.load.of(["med-a", "med-b"]).values()) == 0


async def test_one_batch_applies_events_in_order_like_one_at_a_time(med: Harness) -> None:
    """The same sequence for two cases: one case's events flushed as one batch, the other's
    through the per-event handlers; the dossiers end alike, and a redelivered batch is a no-op."""
    svc = med.rt.mediation

    def sequence(c: str) -> list:
        return [
            assigned(c),  # before the parties are known
            received(c, ("mn", "mn")),  # parties known: handed to the Mongolian-speaking mediator
            assigned(c, version=3, level="community", reason="escalated"),  # supersedes the grid one
            closed(c, version=4),
        ]

    batched, single = new_case_id(), new_case_id()
    batch = sequence(batched)
    assert await svc._flush_case_events(batch) == [None] * 4
    for e in sequence(single):
        await svc._one(e)

    def shape(docs: list[dict]) -> list[tuple]:
        return sorted((d["level"], d["state"], d["version"], d["mediator"], d["parties_known"], d["closed"]["reason"]) for d in docs)

    got = await med.rt.db.dossiers.find({"case_id": batched}).to_list()
    want = await med.rt.db.dossiers.find({"case_id": single}).to_list()
    assert shape(got) == shape(want) == [
        ("community", "closed", 2, "med-b", True, "case_closed"),
        ("grid", "closed", 3, "med-b", True, "superseded"),
    ]
    evs = await eventually(lambda: _events_of(med, [batched, single], 10), what="both cases' events")
    names = {c: [n for n, d in evs if d["case_id"] == c] for c in (batched, single)}
    assert names[batched] == names[single] == ["opened", "mediator_assigned", "closed", "opened", "closed"]

    assert await svc._flush_case_events(batch) == [None] * 4  # redelivered: nothing changes
    await asyncio.sleep(0.3)
    assert len(await _events_of(med, [batched], 0)) == 5
    assert shape(await med.rt.db.dossiers.find({"case_id": batched}).to_list()) == shape(got)


async def _events_of(h: Harness, cases: list[str], at_least: int) -> list | None:
    evs = [(n, d) for n, d in await mediation_events(h.js) if d["case_id"] in set(cases)]
    return evs if len(evs) >= at_least else None
