"""Synthetic projections for the benchmark (`make bench`, scenario 4): n cases folded through
the same `StatsEngine.apply` as live events, then the rollup cells persisted, so a stats
service started afterwards answers `/api/kpis` over them.

Payloads are built with `model_construct` (already valid by construction): validating ~8
million events would take the whole benchmark budget and is not what is being measured.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.app import Runtime
from shared.contract import case as c
from shared.contract.common import Category, Channel, Level, Scope

from .app import engine_of
from .engine import Item

COMMUNITIES = {"jianglin": "linhe", "zhongshan": "hanghou", "fuyuan": "wuyuan", "nankai": "dengkou"}
GRIDS = 11
DAYS = 365


def _case_items(i: int, rng: random.Random, now: datetime) -> list[Item]:
    community = rng.choice(list(COMMUNITIES))
    scope = Scope.model_construct(district=COMMUNITIES[community], community=community, grid=f"{community}-g{rng.randint(1, GRIDS):02d}")
    category = rng.choice(list(Category))
    at = now - timedelta(days=rng.random() * DAYS)
    case_id = f"C-B{i:010d}"
    base = {"case_id": case_id, "category": category, "scope": scope}
    items: list[Item] = []

    def add(name: str, model: Any, version: int, when: datetime, **extra: Any) -> None:
        data = model.model_construct(**base, version=version, at=when, **extra)
        items.append(Item("case", case_id, name, data, f"E-{i}-{version}", f"gridcase.case.{name}.v1"))

    add("received", c.CaseReceived, 1, at, channel=rng.choice(list(Channel)), external_id=f"b-{i}", priority="normal",
        title="t", description="", reported_at=at, location=None, located=True, duplicate_of=None, parties=[], needs=None)
    level = rng.choice([Level.building, Level.grid, Level.grid, Level.community])
    respond_by, resolve_by = at + timedelta(hours=2), at + timedelta(hours=24)
    add("assigned", c.CaseAssigned, 2, at, level=level, unit="u", assignee="s", handling="direct",
        respond_by=respond_by, resolve_by=resolve_by, reason=c.AssignReason.new)
    v = 3
    if rng.random() < 0.9:
        add("accepted", c.CaseAccepted, v, at + timedelta(hours=rng.random() * 3), by="s")
        v += 1
    if rng.random() < 0.15:
        nxt = {Level.building: Level.grid, Level.grid: Level.community}.get(level, Level.street)
        add("escalated", c.CaseEscalated, v, at + timedelta(hours=3), from_level=level, to_level=nxt, reason=c.EscalationReason.resolve_overdue)
        level, v = nxt, v + 1
    if rng.random() < 0.8:
        done = at + timedelta(hours=rng.random() * 30)
        add("resolved", c.CaseResolved, v, done, level=level, by="s", summary="s", on_time=done <= resolve_by)
        v += 1
        if rng.random() < 0.7:
            add("feedback_recorded", c.CaseFeedbackRecorded, v, done + timedelta(hours=5), satisfaction=rng.choice(["satisfied", "satisfied", "basically_satisfied", "dissatisfied"]))
    return items


async def load_synthetic(rt: Runtime, n: int, *, seed: int = 7, batch_cases: int = 5000) -> dict[str, int]:
    engine = engine_of(rt)
    rng = random.Random(seed)
    now = datetime.now(UTC)
    engine.persist = False
    try:
        chunk: list[Item] = []
        for i in range(n):
            chunk.extend(_case_items(i, rng, now))
            if (i + 1) % batch_cases == 0:
                await engine.apply(chunk)
                chunk = []
        if chunk:
            await engine.apply(chunk)
    finally:
        engine.persist = True
    cells = [(day, dims, list(v)) for (day, dims), v in engine.rollup.cells.items()]
    for i in range(0, len(cells), 5000):
        await engine.store.commit([], cells[i : i + 5000], [])
    return {"cases": n, "cells": len(cells)}
