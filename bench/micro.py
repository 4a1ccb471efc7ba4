"""Scenarios 4 (stats query p99 over N cases in the projections) and 5 (dispatch matching p99).

Both go through the adapter points of `bench/adapters.py` (hooks the service engineers add);
without them the rows say "not available" and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats

from shared.contract.subjects import STATS_QUERY
from shared.launcher import Stack, StackConfig, free_port_offset

from .adapters import dispatch_matcher, load_stats, stats_loader
from .common import (
    Options,
    Row,
    command,
    drop_databases,
    error_row,
    iso,
    log,
    not_available,
    percentile,
    reset_streams,
    utcnow,
)

S4, S5 = "4 stats query", "5 dispatch matching"
DB_PREFIX = "benchstats"

GROUP_BYS: list[list[str]] = [
    [],
    ["community"],
    ["grid"],
    ["category"],
    ["channel"],
    ["level"],
    ["day"],
    ["district"],
    ["community", "category"],
    ["community", "day"],
    ["grid", "category"],
    ["district", "channel", "level"],
]
WINDOWS_DAYS = [400, 30, 7, 90]


def _queries(count: int, communities: list[str]) -> list[dict[str, Any]]:
    now = utcnow()
    out = []
    for i in range(count):
        # every query distinct (group_by × window × shift), so a reply cache cannot answer it
        days = WINDOWS_DAYS[(i // len(GROUP_BYS)) % len(WINDOWS_DAYS)] + i // (len(GROUP_BYS) * len(WINDOWS_DAYS))
        q: dict[str, Any] = {
            "from": iso(now - timedelta(days=days)),
            "to": iso(now + timedelta(days=1)),
            "scope": {},
            "group_by": GROUP_BYS[i % len(GROUP_BYS)],
        }
        if communities and i % 5 == 4:
            q["scope"] = {"community": communities[i % len(communities)]}
        out.append(q)
    return out


def _http_params(q: dict[str, Any]) -> dict[str, str]:
    p = {"from": q["from"], "to": q["to"]}
    if q["group_by"]:
        p["group_by"] = ",".join(q["group_by"])
    p.update({k: v for k, v in q["scope"].items() if v})
    return p


async def run_stats_query(nats_url: str, mongodb_url: str, opts: Options, workdir: Path) -> list[Row]:
    n = int(opts.stats_n or opts.d(1_000_000, 20_000))
    m_http, m_nats = f"query p99 GET /api/kpis ({n:,} cases)", f"query p99 {STATS_QUERY} ({n:,} cases)"
    fn, how = stats_loader()
    if fn is None:
        return [not_available(S4, m_http, how, target=50, op="<=", unit="ms"),
                not_available(S4, m_nats, how, target=50, op="<=", unit="ms")]
    await reset_streams(nats_url)
    await drop_databases(mongodb_url, DB_PREFIX)
    stack = Stack(StackConfig(data=workdir / "stack-stats", nats_url=nats_url, mongodb_url=mongodb_url,
                              port_offset=free_port_offset(), database_prefix=DB_PREFIX, services=("stats",),
                              extra_env={"GRIDCASE_LOG_LEVEL": "WARNING"}))
    nc = None
    try:
        await asyncio.to_thread(stack.start_infrastructure)
        log(f"stats: loading {n:,} synthetic cases with {how}")
        t0 = time.monotonic()
        try:
            loaded = await asyncio.wait_for(load_stats(fn, nats_url, mongodb_url, DB_PREFIX, n), opts.d(300, 120))
        except TimeoutError:
            return [error_row(S4, m_http, TimeoutError(f"loading {n:,} cases took over {opts.d(300, 120):.0f}s"), target=50, op="<=", unit="ms")]
        load_s = time.monotonic() - t0
        log(f"stats: loaded in {load_s:.0f}s ({loaded}); starting stats")
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(stack.start_services, 300)
        except Exception as exc:
            return [not_available(S4, m_http, f"stats did not start: {exc}"[:300], target=50, op="<=", unit="ms")]
        start_s = time.monotonic() - t0
        log(f"stats: started (rollups loaded) in {start_s:.0f}s")
        nc = await nats.connect(stack.nats_url)
        count = int(opts.d(200, 60))
        rows: list[Row] = []
        # discover a few community codes for scoped queries
        communities: list[str] = []
        with contextlib.suppress(Exception):
            r = await command(nc, STATS_QUERY, _queries(2, [])[1] | {"group_by": ["community"]}, timeout=30)
            communities = [row["key"]["community"] for row in r.get("rows", []) if row.get("key", {}).get("community")][:5]
        qs = _queries(count, communities)
        rows.append(await _time_http(stack, qs, m_http, n, load_s, loaded, start_s))
        rows.append(await _time_nats(nc, qs, m_nats, n))
        return rows
    except Exception as exc:
        return [error_row(S4, m_http, exc, target=50, op="<=", unit="ms")]
    finally:
        if nc:
            await nc.close()
        await asyncio.to_thread(stack.stop)
        with contextlib.suppress(Exception):
            await drop_databases(mongodb_url, DB_PREFIX)


async def _time_http(stack: Stack, qs: list[dict[str, Any]], metric: str, n: int, load_s: float, loaded: Any,
                     start_s: float = 0.0) -> Row:
    import httpx

    url = stack.url("stats", "/api/kpis")
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(url, params=_http_params(qs[0]))
        if r.status_code != 200:
            return not_available(S4, metric, f"GET /api/kpis answered {r.status_code}: {r.text[:150]}", target=50, op="<=", unit="ms")
        times = []
        bad = 0
        for q in qs:
            t0 = time.perf_counter()
            r = await client.get(url, params=_http_params(q))
            times.append((time.perf_counter() - t0) * 1000)
            bad += r.status_code != 200
    p50, p99 = percentile(times, 50), percentile(times, 99)
    return Row(S4, metric, round(p99 or 0, 1), "ms", 50, "<=",
               note=f"{len(qs)} queries, all distinct (12 group_bys × 4 windows × shifts); p50 {p50:.1f} ms; {bad} non-200; load {load_s:.0f}s, service start {start_s:.0f}s",
               details={"p50_ms": p50, "max_ms": max(times), "non_200": bad, "load_s": load_s, "start_s": start_s,
                        "loader_said": str(loaded)[:300]})


async def _time_nats(nc: Any, qs: list[dict[str, Any]], metric: str, n: int) -> Row:
    try:
        first = await command(nc, STATS_QUERY, qs[0], timeout=30)
    except Exception as exc:
        return not_available(S4, metric, f"no answer: {type(exc).__name__}", target=50, op="<=", unit="ms")
    if not first.get("ok"):
        return not_available(S4, metric, f"refused: {str(first.get('error'))[:150]}", target=50, op="<=", unit="ms")
    times, bad = [], 0
    for q in qs:
        t0 = time.perf_counter()
        r = await command(nc, STATS_QUERY, q, timeout=30)
        times.append((time.perf_counter() - t0) * 1000)
        bad += not r.get("ok")
    p50, p99 = percentile(times, 50), percentile(times, 99)
    return Row(S4, metric, round(p99 or 0, 1), "ms", 50, "<=", note=f"{len(qs)} queries; p50 {p50:.1f} ms; {bad} refused",
               details={"p50_ms": p50, "max_ms": max(times), "refused": bad})


async def run_dispatch_match(opts: Options) -> list[Row]:
    n = 10_000
    metric = f"match p99 ({n:,} volunteers in one community)"
    try:
        t0 = time.monotonic()
        fn, how = dispatch_matcher(n)
        setup_s = time.monotonic() - t0
    except Exception as exc:
        return [error_row(S5, metric, exc, target=20, op="<=", unit="ms")]
    if fn is None:
        return [not_available(S5, metric, how, target=20, op="<=", unit="ms")]
    count = int(opts.d(1000, 200))
    times = []
    try:
        for i in range(count):
            t = time.perf_counter()
            res = fn(i)
            if inspect.isawaitable(res):
                await res
            times.append((time.perf_counter() - t) * 1000)
    except Exception as exc:
        return [error_row(S5, metric, exc, target=20, op="<=", unit="ms")]
    p50, p99 = percentile(times, 50), percentile(times, 99)
    return [Row(S5, metric, round(p99 or 0, 3), "ms", 20, "<=", note=f"{count} matches via {how}; p50 {p50:.2f} ms; setup {setup_s:.1f}s",
                details={"p50_ms": p50, "max_ms": max(times), "adapter": how})]
