"""Synthetic projections for the benchmark (`make bench`, scenario 4): n cases folded by the
live fold (`engine.fold_case` → `projection.apply` / `projection.contribution`), their
contributions summed into rollup cells, and the cells written to the stats database, so a
stats service started afterwards loads them and answers `/api/kpis` over them.

What is skipped, because it is not what is measured and would not fit the time budget
(a million cases, ~5.4 million events, in a few minutes):

- envelopes and payload validation: payloads are plain attribute objects with the values a
  validated payload has (`typed`); `tests/stats/test_bulk_load.py` proves the cells equal
  those of the live path (envelope → `item_for` → `StatsEngine.apply`);
- the fact documents: only the cells are written, with `insert_many` while later days are
  still being folded (cases are generated in received order, so a day's cells are final
  once the next day starts). A service started over them has the rollups of every case but
  no per-case facts, so the partial days at the ends of a query window count none of them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from types import SimpleNamespace
from typing import Any

from shared.app import Runtime
from shared.contract.case import EscalationReason
from shared.contract.common import Category, Channel

from .app import engine_of
from .engine import fold_case
from .kpis import pack, unpack
from .store import CELLS, cell_id

COMMUNITIES = {"jianglin": "linhe", "zhongshan": "hanghou", "fuyuan": "wuyuan", "nankai": "dengkou"}
GRIDS = 11
DAYS = 365
WRITERS = 2  # inserts in flight, so the database never waits for the folding loop

Event = tuple[str, dict[str, Any]]  # (short name, payload fields)

_CATEGORIES = [c.value for c in Category]
_CHANNELS = [c.value for c in Channel]
_LEVELS = ["building", "grid", "grid", "community"]
_UP = {"building": "grid", "grid": "community"}
_SATISFACTION = ["satisfied", "satisfied", "basically_satisfied", "dissatisfied"]
_RESOLVE_OVERDUE = EscalationReason.resolve_overdue.value


def synthetic_cases(n: int, *, seed: int = 7, now: datetime | None = None) -> Iterator[tuple[str, list[Event]]]:
    """n cases received over the `DAYS` days before `now`, in received order: each is
    `(case id, [(short event name, payload fields), …])`, fields as the contract's payload
    models take them (times are whole seconds)."""
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    span = DAYS * 86400
    offsets = sorted((int(rng.random() * span) for _ in range(n)), reverse=True)  # oldest first
    for i, offset in enumerate(offsets):
        case_id = f"C-B{i:010d}"
        yield case_id, _case_events(i, case_id, now - timedelta(seconds=offset), rng)


_HOUR = timedelta(hours=1)
_COMMUNITIES = list(COMMUNITIES)


def _case_events(i: int, case_id: str, at: datetime, rng: random.Random) -> list[Event]:
    community = rng.choice(_COMMUNITIES)
    grid = f"{community}-g{rng.randint(1, GRIDS):02d}"
    common = {"case_id": case_id, "category": rng.choice(_CATEGORIES),
              "scope": {"district": COMMUNITIES[community], "community": community, "grid": grid}}
    events: list[Event] = []

    def add(name: str, when: datetime, **fields: Any) -> None:
        events.append((name, {**common, "version": len(events) + 1, "at": when, **fields}))

    add("received", at, channel=rng.choice(_CHANNELS), external_id=f"b-{i}", priority="normal", title="t",
        description="", reported_at=at, location={"grid": grid}, located=True)
    level = rng.choice(_LEVELS)
    respond_by, resolve_by = at + 2 * _HOUR, at + 24 * _HOUR
    add("assigned", at, level=level, unit="u", assignee="s", handling="direct", respond_by=respond_by,
        resolve_by=resolve_by, reason="new")
    if rng.random() < 0.9:
        add("accepted", at + timedelta(seconds=int(rng.random() * 3 * 3600)), by="s")
    if rng.random() < 0.15:
        up = _UP.get(level, "street")
        add("escalated", at + 3 * _HOUR, from_level=level, to_level=up, reason=_RESOLVE_OVERDUE)
        level = up
    if rng.random() < 0.8:
        done = at + timedelta(seconds=int(rng.random() * 30 * 3600))
        add("resolved", done, level=level, by="s", summary="s", on_time=done <= resolve_by)
        if rng.random() < 0.7:
            add("feedback_recorded", done + 5 * _HOUR, satisfaction=rng.choice(_SATISFACTION))
    return events


def typed(events: list[Event]) -> list[tuple[str, Any]]:
    """The events with attribute payloads (what `projection.apply` reads of a validated one)."""
    out = []
    scope = None
    for name, fields in events:
        data = SimpleNamespace(**fields)
        scope = scope or SimpleNamespace(**fields["scope"])
        data.scope = scope
        out.append((name, data))
    return out


def synthetic_cells(
    n: int, tz: tzinfo, *, seed: int = 7, now: datetime | None = None
) -> Iterator[tuple[str, dict[tuple[Any, ...], int]]]:
    """Fold `synthetic_cases` one by one and yield each local day's finished cells,
    `(day, {dims: packed counters})`, days ascending."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    now_ts = now.timestamp()
    day: str | None = None
    cells: dict[tuple[Any, ...], int] = {}
    shared: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for case_id, events in synthetic_cases(n, seed=seed, now=now):
        _, contrib = fold_case(case_id, typed(events), tz, now_ts)
        if contrib is None:
            continue
        cday, dims, counts = contrib
        if cday != day:
            if day is not None:
                assert cday > day, "cases come in received order"
                yield day, cells
            day, cells = cday, {}
        dims = shared.setdefault(dims, dims)
        cells[dims] = cells.get(dims, 0) + pack(counts)
    if day is not None:
        yield day, cells


def cell_docs(day: str, cells: dict[tuple[Any, ...], int]) -> list[dict[str, Any]]:
    """One day's cells as the documents `StatsStore.commit` writes."""
    return [{"_id": cell_id(day, dims), "day": day, "dims": list(dims), "c": list(unpack(v))} for dims, v in cells.items()]


async def load_synthetic(rt: Runtime, n: int, *, seed: int = 7) -> dict[str, Any]:
    """Fold n synthetic cases and write their rollup cells (documents as `StatsStore.commit`
    writes them) into the stats database of `rt`, which must hold no projections yet."""
    engine = engine_of(rt)
    coll = engine.store.db[CELLS]
    t0 = time.monotonic()
    queue: asyncio.Queue[list[dict[str, Any]] | None] = asyncio.Queue(maxsize=4)
    errors: list[BaseException] = []
    written = 0

    async def writer() -> None:
        nonlocal written
        while (docs := await queue.get()) is not None:
            if errors:
                continue
            try:
                await coll.insert_many(docs, ordered=False)
                written += len(docs)
            except Exception as exc:
                errors.append(exc)

    tasks = [asyncio.create_task(writer()) for _ in range(WRITERS)]
    try:
        for day, cells in synthetic_cells(n, engine.tz, seed=seed):
            await queue.put(cell_docs(day, cells))  # waits while WRITERS + 4 days are pending
            await asyncio.sleep(0)  # let the writers send while the next day is folded
            if errors:
                break
        fold_s = time.monotonic() - t0
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    if errors:
        raise errors[0]
    return {"cases": n, "cells": written, "fold_s": round(fold_s, 1), "total_s": round(time.monotonic() - t0, 1)}
