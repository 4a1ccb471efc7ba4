"""The benchmark's bulk path holds exactly what the live fold holds.

3,000 synthetic cases (`bench_support.synthetic_cases`, the benchmark's generator) go three
ways and must end in the same state:

- live: every event as an envelope (JSON round trip) → `item_for` (validation) →
  `StatsEngine.apply` in shuffled batches, as the consumers feed it;
- bulk: `engine.bulk_load` with the untyped-payload shortcut (`bench_support.typed`);
- loader: `bench_support.synthetic_cells` (what `load_synthetic` writes), read back by a
  fresh engine through `StatsEngine.load`, as the benchmarked service does at start.

Also: the packed counters and day blocks of `kpis` against plain sums.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.stats import bench_support, kpis
from services.stats.engine import StatsEngine, bulk_load, item_for
from services.stats.projection import COUNTERS, DIMS, N
from shared.contract import subjects as s
from shared.contract.catalogue import model_for
from shared.contract.envelope import Envelope, RawEvent
from shared.contract.stats import KpiQuery

pytestmark = pytest.mark.unit

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 30, 4, 17, 23, tzinfo=UTC)
N_CASES = 3000
SEED = 11


class MemoryStore:
    """What `StatsEngine` needs of `StatsStore`, in memory."""

    def __init__(self, cells: list[dict[str, Any]] | None = None) -> None:
        self.cells = {c["_id"]: c for c in cells or []}
        self.facts: dict[str, dict[str, Any]] = {}
        self.meta_docs: dict[str, dict[str, Any]] = {}

    async def commit(self, facts, cells, aux) -> None:
        from services.stats.store import cell_id

        for f in facts:
            self.facts[f["_id"]] = f
        for day, dims, counts in cells:
            _id = cell_id(day, dims)
            if any(counts):
                self.cells[_id] = {"_id": _id, "day": day, "dims": list(dims), "c": list(counts)}
            else:
                self.cells.pop(_id, None)

    async def get_facts(self, ids):
        return {i: self.facts[i] for i in ids if i in self.facts}

    async def facts_of_day(self, day, start, end):
        return [f for f in self.facts.values() if f.get("day") == day and start <= f.get("received_at", -1) < end]

    async def all_cells(self):
        return list(self.cells.values())

    async def all_aux(self):
        return []

    async def count_facts(self):
        return len(self.facts)

    async def all_facts(self):
        return list(self.facts.values())

    async def meta(self, key):
        return self.meta_docs.get(key)

    async def put_meta(self, key, doc):
        self.meta_docs[key] = {"_id": key, **doc}

    async def generation(self):
        return 0


def cases() -> list[tuple[str, list[bench_support.Event]]]:
    return list(bench_support.synthetic_cases(N_CASES, seed=SEED, now=NOW))


def envelopes_of(case_id: str, events: list[bench_support.Event]) -> list[RawEvent]:
    out = []
    for name, fields in events:
        type_ = s.case_event(name)
        data = model_for(type_).model_validate(fields)
        env = Envelope.new(type_, data.model_dump(mode="json"), source="/tests/bulk", subject=case_id, time=fields["at"])
        out.append(RawEvent.model_validate_json(env.to_json()))
    return out


async def live_engine(all_cases) -> StatsEngine:
    engine = StatsEngine(MemoryStore(), TZ)
    await engine.load()
    items = [item_for(env) for cid, evs in all_cases for env in envelopes_of(cid, evs)]
    random.Random(3).shuffle(items)  # events of a case arrive interleaved and out of order
    for i in range(0, len(items), 1000):
        await engine.apply(items[i : i + 1000], now=NOW.timestamp())
    return engine


async def bulk_engine(all_cases) -> StatsEngine:
    engine = StatsEngine(MemoryStore(), TZ)
    await engine.load()
    n = await bulk_load(engine, ((cid, bench_support.typed(evs)) for cid, evs in all_cases), now=NOW.timestamp())
    assert n == len(all_cases)
    return engine


async def loaded_engine() -> StatsEngine:
    docs = [d for day, cells in bench_support.synthetic_cells(N_CASES, TZ, seed=SEED, now=NOW)
            for d in bench_support.cell_docs(day, cells)]
    engine = StatsEngine(MemoryStore(docs), TZ)
    await engine.load()
    return engine


def state(engine: StatsEngine) -> dict[str, Any]:
    return {
        "cells": {k: list(v) for k, v in engine.rollup.cells.items()},
        "views": {v.dims: v.blocks for v in engine.rollup.views},
        "backlog": {k: v for k, v in engine.rollup.backlog.items() if any(v)},
    }


GROUP_BYS = [
    [], ["community"], ["grid"], ["category"], ["channel"], ["level"], ["day"], ["district"],
    ["community", "category"], ["community", "day"], ["grid", "category"], ["district", "channel", "level"],
    ["grid", "channel", "level", "category", "day"],
]
SCOPES = [{}, {"community": "jianglin"}, {"district": "wuyuan", "grid": "fuyuan-g03"}]


def windows(*, whole_days_only: bool) -> list[tuple[datetime, datetime]]:
    midnight = datetime.combine(NOW.astimezone(TZ).date(), datetime.min.time(), TZ)
    whole = [(midnight - timedelta(days=90), midnight + timedelta(days=1)),
             (midnight - timedelta(days=400), midnight - timedelta(days=10)),
             (midnight - timedelta(days=33), midnight - timedelta(days=32))]
    if whole_days_only:
        return whole
    return whole + [(NOW - timedelta(days=400), NOW + timedelta(days=1)),
                    (NOW - timedelta(days=30, hours=5), NOW + timedelta(days=1)),
                    (NOW - timedelta(days=7, minutes=3), NOW - timedelta(hours=30)),
                    (NOW - timedelta(days=3, hours=9), NOW - timedelta(days=3, hours=2))]


def queries(*, whole_days_only: bool) -> list[KpiQuery]:
    return [
        KpiQuery.model_validate({"from": a, "to": b, "scope": scope, "group_by": gb})
        for a, b in windows(whole_days_only=whole_days_only) for gb in GROUP_BYS for scope in SCOPES
    ]


async def test_bulk_paths_hold_what_the_live_fold_holds() -> None:
    all_cases = cases()
    live = await live_engine(all_cases)
    bulk = await bulk_engine(all_cases)
    loaded = await loaded_engine()

    want = state(live)
    assert len(want["cells"]) > 2000 and sum(c[0] for c in want["cells"].values()) == N_CASES
    assert state(bulk) == want
    assert state(loaded) == want
    # the per-case index of partial days: the live engine's and the bulk one's agree
    assert bulk.day_index == live.day_index and bulk.indexed and live.indexed
    assert sum(len(rows) for rows in live.day_index.values()) == N_CASES

    answered = 0
    for q in queries(whole_days_only=False):
        reply = await live.query(q)
        assert await bulk.query(q) == reply, q
        answered += bool(reply["rows"])
    assert answered > 100
    # the loaded engine has no facts, so it agrees on whole local days only
    for q in queries(whole_days_only=True):
        assert await loaded.query(q) == await live.query(q), q


async def test_partial_days_from_memory_match_the_stored_facts() -> None:
    all_cases = cases()[:600]
    live = await live_engine(all_cases)
    assert live.indexed
    from_db = StatsEngine(live.store, TZ)
    await from_db.load()  # facts in the store, loaded into the cache and the day index
    assert from_db.indexed
    from_db.indexed = False  # now partial days come from `facts_of_day`
    for q in queries(whole_days_only=False):
        assert await from_db.query(q) == await live.query(q), q


def test_packed_counters_add_like_lists() -> None:
    rng = random.Random(5)
    vecs = [[rng.randint(0, 50) for _ in range(N)] for _ in range(50)]
    total = sum(kpis.pack(v) for v in vecs)
    assert list(kpis.unpack(total)) == [sum(col) for col in zip(*vecs, strict=True)]
    # a counter that goes negative (never at rest, but mid-move) still decodes
    a, b = [0] * N, [0] * N
    a[0], b[0], b[3] = 1, 2, 1
    diff = kpis.pack(a) - kpis.pack(b)
    assert kpis.unpack(diff)[0] == -1 and kpis.unpack(diff)[3] == -1 and kpis.received_of(diff) == -1
    assert kpis.unpack(diff + kpis.pack(b)) == tuple(a)
    assert kpis.unpack(kpis.pack([2**31 - 1] * N)) == (2**31 - 1,) * N
    assert len(COUNTERS) == N


def test_day_blocks_cover_a_window_exactly() -> None:
    rng = random.Random(9)
    for levels in (kpis.VIEW_LEVELS, kpis.CELL_LEVELS, (0,)):
        for _ in range(300):
            lo = rng.randint(738_000, 740_000)
            hi = lo + rng.randint(0, 700)
            days: list[int] = []
            for lv, b in kpis.blocks(lo, hi, levels):
                assert lv in levels
                days += range(b << lv, (b + 1) << lv)
            assert days == list(range(lo, hi))


def test_window_sums_equal_plain_day_by_day_sums() -> None:
    rng = random.Random(4)
    roll = kpis.Rollup()
    plain: dict[tuple[str, tuple[Any, ...]], list[int]] = {}
    start = datetime(2025, 1, 1).date()
    for _ in range(3000):
        day = (start + timedelta(days=rng.randint(0, 700))).isoformat()
        dims = ("d" + rng.choice("12"), rng.choice("ab"), rng.choice("xyz"), rng.choice(["c1", "c2"]),
                rng.choice(["wechat", "hotline_12345"]), rng.choice(["grid", None]))
        counts = [rng.randint(0, 3) for _ in range(N)]
        sign = 1 if rng.random() < 0.8 or (day, dims) not in plain else -1
        if sign < 0:
            counts = [min(c, have) for c, have in zip(counts, plain[(day, dims)], strict=True)]
        roll.apply(day, dims, counts, sign)
        acc = plain.setdefault((day, dims), [0] * N)
        kpis.add_into(acc, counts, sign)
    for _ in range(200):
        a = start + timedelta(days=rng.randint(-10, 700))
        b = a + timedelta(days=rng.randint(1, 400))
        gb = rng.choice([[], ["community"], ["grid", "level"], ["channel", "day"], list(DIMS)])
        scope = rng.choice([{}, {"community": "a"}, {"district": "d2", "grid": "y"}])
        got: dict[tuple[Any, ...], list[int]] = {}
        roll.sum_window(a.isoformat(), b.isoformat(), scope, gb, got)
        want: dict[tuple[Any, ...], list[int]] = {}
        for (day, dims), counts in plain.items():
            if not a.isoformat() <= day < b.isoformat() or any(dims[DIMS.index(k)] != v for k, v in scope.items()):
                continue
            gk = tuple(day if g == "day" else dims[DIMS.index(g)] for g in gb)
            kpis.add_into(want.setdefault(gk, [0] * N), counts)
        assert {k: v for k, v in got.items() if any(v)} == {k: v for k, v in want.items() if any(v)}
