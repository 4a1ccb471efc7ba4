"""Pure folding and KPI math of the stats service (no I/O)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from services.stats import engine, kpis, projection
from services.stats.projection import IDX, N
from shared.contract import subjects as s
from shared.contract.catalogue import model_for
from shared.contract.envelope import RawEvent

from .history import build_history

pytestmark = pytest.mark.unit

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def fold(envelopes, order=None):
    facts: dict[str, dict] = {}
    for env in order or envelopes:
        data = model_for(env.type).model_validate(env.data)
        fact = facts.setdefault(data.case_id, projection.new_fact(data.case_id))
        projection.apply(fact, projection.short_type(env.type), data, TZ)
    return facts


def case_envelopes(history):
    return [e for e in history.envelopes if e.type.startswith("gridcase.case.")]


def test_folding_is_order_tolerant_and_idempotent() -> None:
    history = build_history(120, seed=3, now=NOW)
    events = case_envelopes(history)
    in_order = fold(events)
    shuffled = list(events) * 2  # every event twice
    random.Random(5).shuffle(shuffled)
    again = fold(events, shuffled)
    now = NOW.timestamp()
    assert {k: projection.contribution(f, now) for k, f in in_order.items()} == {
        k: projection.contribution(f, now) for k, f in again.items()
    }


def test_contributions_match_the_script() -> None:
    history = build_history(300, seed=11, now=NOW)
    facts = fold(case_envelopes(history))
    now = NOW.timestamp()
    for ex in history.expected:
        c = projection.contribution(facts[ex.case_id], now)
        if ex.excluded:
            assert c is None
            continue
        day, dims, counts = c
        assert day == ex.day and dims == tuple(ex.dims[d] for d in projection.DIMS)
        assert counts[IDX["open"]] == ex.open and counts[IDX["overdue"]] == ex.overdue, ex.case_id
        assert counts[IDX["resolved"]] == ex.resolved and counts[IDX["responded_on_time"]] == ex.responded_on_time
        assert counts[IDX["escalated"]] == bool(ex.escalations)


def test_repeated_event_changes_nothing() -> None:
    history = build_history(5, seed=1, now=NOW)
    env = case_envelopes(history)[0]
    data = model_for(env.type).model_validate(env.data)
    fact = projection.new_fact(data.case_id)
    assert projection.apply(fact, "received", data, TZ) is True
    snapshot = dict(fact)
    assert projection.apply(fact, "received", data, TZ) is False
    assert fact == snapshot


def counts(**kw) -> list[int]:
    c = [0] * N
    for k, v in kw.items():
        c[IDX[k]] = v
    return c


def test_rates_score_suppression_and_null_rates() -> None:
    c = counts(received=10, assigned=8, responded_on_time=6, resolved=5, resolved_on_time=4,
               resolved_in_grid=3, resolved_in_community=5, feedback=4, satisfied=3, open=5, overdue=1)
    row = kpis.kpi_row({"community": "jl"}, c)
    assert row["response_rate"] == 0.75 and row["resolution_rate"] == 0.5 and row["satisfaction_rate"] == 0.75
    assert row["in_grid_rate"] == 0.6 and row["in_community_rate"] == 1.0 and row["on_time_rate"] == 0.8
    assert row["score"] == pytest.approx(0.30 * 0.75 + 0.35 * 0.5 + 0.35 * 0.75)
    assert row["suppressed"] is False
    # no feedback yet: satisfaction and so the score are null, not zero
    row = kpis.kpi_row({}, counts(received=6, assigned=6, responded_on_time=6, resolved=2))
    assert row["satisfaction_rate"] is None and row["score"] is None and row["in_grid_rate"] == 0.0
    # fewer than 5 received: every count and rate null
    row = kpis.kpi_row({"grid": "g"}, counts(received=4, assigned=4, resolved=4))
    assert row["suppressed"] is True
    assert all(row[f] is None for f in (*projection.COUNT_FIELDS, "response_rate", "score"))
    # totals are never suppressed
    assert kpis.kpi_row({}, counts(received=1), suppress=False)["received"] == 1


def test_plan_window_splits_whole_local_days_and_partials() -> None:
    start = datetime(2026, 11, 1, 0, 0, tzinfo=TZ)
    end = datetime(2026, 12, 1, 0, 0, tzinfo=TZ)
    assert kpis.plan_window(start, end, TZ) == ("2026-11-01", "2026-12-01", [])
    first, last, partial = kpis.plan_window(start + timedelta(hours=5), end - timedelta(hours=1), TZ)
    assert (first, last) == ("2026-11-02", "2026-11-30")
    assert [p[0] for p in partial] == ["2026-11-01", "2026-11-30"]
    assert kpis.plan_window(start + timedelta(hours=1), start + timedelta(hours=2), TZ)[2][0][0] == "2026-11-01"


def test_rollup_months_and_days_agree() -> None:
    roll = kpis.Rollup()
    rng = random.Random(2)
    for _ in range(400):
        day = f"2026-{rng.randint(9, 11):02d}-{rng.randint(1, 28):02d}"
        dims = ("d", rng.choice("ab"), rng.choice("xyz"), "other", "wechat", rng.choice(["grid", None]))
        roll.apply(day, dims, counts(received=1, open=rng.randint(0, 1)))
    for gb in ([], ["community"], ["grid", "level"]):
        by_month: dict = {}
        roll.sum_window("2026-09-03", "2026-11-20", {}, gb, by_month)
        by_day: dict = {}
        roll.sum_window("2026-09-03", "2026-11-20", {}, [*gb, "day"], by_day)
        folded: dict = {}
        for k, v in by_day.items():
            acc = folded.setdefault(k[:-1], [0] * N)
            kpis.add_into(acc, v)
        assert by_month == folded
    # subtracting a contribution removes it again
    before = dict(roll.backlog)
    roll.move(None, ["2026-10-01", ["d", "a", "x", "other", "wechat", "grid"], counts(received=1, open=1)])
    roll.move(["2026-10-01", ["d", "a", "x", "other", "wechat", "grid"], counts(received=1, open=1)], None)
    assert roll.backlog == before


def test_an_unfilled_task_counts_once_though_it_comes_as_v1_and_v2() -> None:
    task = {"task_id": "T-01JABC", "case_id": "C-01JABCDEF", "version": 3, "at": "2026-11-30T02:00:00Z", "reason": "no_volunteer"}
    v1 = RawEvent.new(s.dispatch_event("unfilled"), task, source="/gridcase/dispatch")
    v2 = RawEvent.new(s.DISPATCH_UNFILLED_V2, {**task, "level": "grid"}, source="/gridcase/dispatch")
    assert engine.item_for(v2) is None
    doc = {"_id": "t:T-01JABC"}
    for env in (v2, v1):
        item = engine.item_for(env)
        if item is not None:
            engine.apply_aux(doc, item)
    assert engine.aux_contribution(doc)["dispatch_unfilled"] == 1
    # a v2 copy is still checked: a bad one is refused (→ dead-letter queue), not dropped unseen
    with pytest.raises(ValidationError):
        engine.item_for(RawEvent.new(s.DISPATCH_UNFILLED_V2, {**task, "level": "city"}, source="/gridcase/dispatch"))
