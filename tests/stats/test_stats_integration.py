"""Issue 7 against a real nats-server and SecantusDB: a scripted history of 500 cases in two
communities; every field of /api/kpis and of the NATS query equals an independent
computation; redelivering everything changes nothing; `gridcase stats rebuild` gives the same."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.stats import cli
from services.stats.app import engine_of
from shared.contract import subjects as s

from ..support import command, eventually
from .conftest import StatsService, publish_all, wait_settled
from .history import TZ, History, build_history, escalations_in, expected_reply

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def windows() -> list[tuple[datetime, datetime]]:
    today = datetime.combine(NOW.astimezone(TZ).date(), datetime.min.time(), TZ)
    return [
        (today - timedelta(days=7), today + timedelta(days=1)),  # whole local days
        (today - timedelta(days=3), today + timedelta(days=1)),
        (NOW - timedelta(days=4, hours=5, minutes=17), NOW - timedelta(hours=9)),  # partial days at both ends
    ]


CASES = [
    ({}, []),
    ({}, ["community"]),
    ({}, ["community", "day"]),
    ({}, ["grid", "level"]),
    ({}, ["channel", "category"]),
    ({"community": "jl"}, ["grid"]),
    ({"community": "hs", "grid": "hs-g1"}, ["day"]),
    ({}, ["district", "community", "grid", "category", "channel", "level", "day"]),
]


def approx_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert [r["key"] for r in got["rows"]] == [r["key"] for r in want["rows"]]
    for g, w in [*zip(got["rows"], want["rows"], strict=True), (got["totals"], want["totals"])]:
        for field, value in w.items():
            if isinstance(value, float):
                assert g[field] == pytest.approx(value), (w["key"], field)
            else:
                assert g[field] == value, (w["key"], field)
        assert set(g) == set(w)


async def check_all(svc: StatsService, history: History) -> None:
    async with httpx.AsyncClient(base_url=svc.url, timeout=30) as http:
        for start, end in windows():
            for scope, group_by in CASES:
                want = expected_reply(history.expected, start, end, {"community": None, **scope}, group_by)
                params = {"from": start.isoformat(), "to": end.isoformat(), "group_by": ",".join(group_by), **scope}
                got = (await http.get("/api/kpis", params=params)).json()
                approx_equal(got, want)
                reply = await command(
                    svc.nc, s.STATS_QUERY, {"from": start.isoformat(), "to": end.isoformat(), "scope": scope, "group_by": group_by}
                )
                approx_equal(reply, want)


async def test_kpis_match_an_independent_computation_redelivery_and_rebuild(stats_service: StatsService) -> None:
    svc = stats_service
    history = build_history(500, seed=7, now=NOW)
    assert {c.dims["community"] for c in history.expected} == {"jl", "hs"}
    await publish_all(svc.js, history.envelopes, seed=1)
    await wait_settled(svc.js)
    await check_all(svc, history)

    # the history covers what the issue asks for
    ex = history.expected
    assert any(c.excluded for c in ex) and any(c.overdue for c in ex) and any(c.escalations for c in ex)
    assert {c.resolved_level for c in ex if c.resolved} >= {"building", "grid", "community", "street"}
    assert {c.feedback for c in ex} >= {"satisfied", "basically_satisfied", "dissatisfied", None}
    assert any(c.responded_on_time for c in ex) and any(c.assigned and not c.responded_on_time for c in ex)

    # side projections: mediation outcomes and volunteer hours; metrics
    async with httpx.AsyncClient(base_url=svc.url, timeout=30) as http:
        overview = (await http.get("/api/overview")).json()
        assert overview["mediation"] == history.mediation
        assert overview["volunteer_hours"] == pytest.approx(history.hours)
        week = [datetime.fromisoformat(t) for t in overview["periods"]["week"]]
        assert overview["escalations"]["week"] == escalations_in(ex, *week)
        metrics = (await http.get("/metrics")).text
        recent = (await http.get("/api/recent")).json()["events"]
    assert len(recent) == 50 and all(set(e) == {"at", "type", "case_id", "version", "category", "community", "grid", "level"} for e in recent)
    rt = svc.rt
    received = sum(1 for e in history.envelopes if e.type == s.case_event("received"))
    assert sum(
        rt.registry.get_sample_value("gridcase_cases_received_total", {"channel": ch, "community": cm}) or 0
        for ch in ("hotline_12345", "wechat", "service_window", "grid_patrol", "mini_program")
        for cm in ("jl", "hs")
    ) == received
    open_now = sum(c.open for c in ex if not c.excluded)
    overdue_now = sum(c.overdue for c in ex if not c.excluded)
    gauges = [ln for ln in metrics.splitlines() if ln.startswith(("gridcase_cases_open{", "gridcase_cases_overdue{"))]
    assert sum(float(ln.split()[-1]) for ln in gauges if ln.startswith("gridcase_cases_open{")) == open_now
    assert sum(float(ln.split()[-1]) for ln in gauges if ln.startswith("gridcase_cases_overdue{")) == overdue_now
    for name in ("gridcase_cases_assigned_total", "gridcase_cases_escalated_total", "gridcase_cases_resolved_total",
                 "gridcase_time_to_accept_seconds_bucket", "gridcase_time_to_resolve_seconds_bucket",
                 "gridcase_mediation_outcomes_total", "gridcase_dispatch_outcomes_total", "gridcase_volunteer_hours_total"):
        assert name in metrics, name

    # redeliver the whole history (new stream messages, same envelopes): nothing changes
    resolved_before = rt.registry.get_sample_value("gridcase_cases_resolved_total", {"level": "grid", "on_time": "true"})
    await publish_all(svc.js, history.envelopes, seed=2, msg_id_suffix=":again")
    await wait_settled(svc.js)
    await check_all(svc, history)
    assert rt.registry.get_sample_value("gridcase_cases_resolved_total", {"level": "grid", "on_time": "true"}) == resolved_before

    # rebuild from the streams (which now hold everything twice): the same numbers
    engine = engine_of(rt)
    cells_before = {k: list(v) for k, v in engine.rollup.cells.items() if any(v)}
    generation = engine.generation
    argv = ["rebuild", "--nats-url", svc.settings.nats_url, "--mongodb-url", svc.settings.mongodb_url,
            "--database-prefix", svc.settings.database_prefix]
    assert await asyncio.to_thread(cli.main, argv) == 0
    await eventually(lambda: engine.generation > generation, timeout=15, what="service reloaded the rebuilt projections")
    assert {k: list(v) for k, v in engine.rollup.cells.items() if any(v)} == cells_before
    await check_all(svc, history)


async def test_invalid_queries_get_clear_errors(stats_service: StatsService) -> None:
    svc = stats_service
    async with httpx.AsyncClient(base_url=svc.url, timeout=30) as http:
        bad = await http.get("/api/kpis", params={"from": "2026-11-30", "to": "2026-11-01"})
        assert bad.status_code == 400 and bad.json()["ok"] is False
        bad = await http.get("/api/kpis", params={"from": "2026-11-01", "to": "2026-11-30", "group_by": "ethnicity"})
        assert bad.status_code == 400 and any("group_by" in d["path"] for d in bad.json()["error"]["details"])
        empty = (await http.get("/api/kpis", params={"from": "2026-11-01", "to": "2026-11-30"})).json()
        assert empty["rows"] == [] and empty["totals"]["received"] == 0 and empty["totals"]["response_rate"] is None
        page = await http.get("/dashboard")
        assert page.status_code == 200 and "网格化治理" in page.text and "响应率" in (await http.get("/dashboard/app.js")).text
        for asset in ("/dashboard", "/dashboard/app.js", "/dashboard/style.css"):
            assert "://" not in (await http.get(asset)).text  # no CDN, nothing external
    reply = await command(svc.nc, s.STATS_QUERY, {"from": "2026-11-30T00:00:00+08:00", "to": "2026-11-01T00:00:00+08:00"})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid"
