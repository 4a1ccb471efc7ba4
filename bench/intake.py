"""Scenario 7 (issue 3): intake alone — reports/s one intake process turns into cases.

A backlog of N distinct reports is published on `gridcase.intake.report.v1` while intake is
stopped; then one intake process starts against the same servers and drains it. The figure is
the rate at which `gridcase.case.received.v1` events appear between 10 % and 90 % of N (start-up
and the last partial batches left out), checked against the number of cases stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import nats
from pymongo import AsyncMongoClient

from shared.contract.subjects import INTAKE_REPORT, case_event
from shared.launcher import Stack, StackConfig, free_port_offset

from .common import (
    Options,
    Row,
    cpu_seconds,
    database_time,
    drop_databases,
    log,
    log_database_time,
    reset_streams,
    subject_count,
)
from .profile import start_profile
from .workload import Workload

DB_PREFIX = "benchintake"
RECEIVED = case_event("received")
S7, M7 = "7 intake", "intake alone: reports/s → case stored + received published"
TARGET = 2000


async def _publish_backlog(js: Any, wl: Workload, n: int) -> float:
    t0 = time.monotonic()
    for i in range(n):
        eid, body = wl.report_envelope(i, prefix="in")
        await js.publish_async(INTAKE_REPORT, body, headers={"Nats-Msg-Id": eid})
        if i % 2000 == 1999:
            await js.publish_async_completed()
    await js.publish_async_completed()
    return n / (time.monotonic() - t0)


async def run_intake(nats_url: str, mongodb_url: str, opts: Options, workdir: Path,
                     infra_pids: dict[str, int | None] | None = None) -> list[Row]:
    n = int(opts.d(60_000, 10_000))
    await reset_streams(nats_url)
    await drop_databases(mongodb_url, DB_PREFIX)
    stack = Stack(StackConfig(
        data=workdir / "stack-intake", nats_url=nats_url, mongodb_url=mongodb_url, port_offset=free_port_offset(),
        database_prefix=DB_PREFIX, services=("intake",), extra_env={"GRIDCASE_LOG_LEVEL": "WARNING"},
    ))
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=4000)
    try:
        wl = Workload.default()
        pub_rate = await _publish_backlog(js, wl, n)
        log(f"intake: {n} reports waiting (published at {pub_rate:.0f}/s); starting one intake process")
        await asyncio.to_thread(stack.start_infrastructure)
        await asyncio.to_thread(stack.start_services, 90)
        pid = stack.services["intake"].pid
        db_pid = (infra_pids or {}).get("secantusdb")
        cpu0 = cpu_seconds(pid) if pid else None
        db0 = cpu_seconds(db_pid) if db_pid else None
        profile = start_profile(pid, "intake", opts.d(20, 6)) if "intake" in opts.profile and pid else None
        marks: dict[str, float] = {}
        t_start = time.monotonic()
        deadline = t_start + opts.d(240, 90)
        done = 0
        while time.monotonic() < deadline:
            done = await subject_count(js, "GRIDCASE_CASES", RECEIVED)
            now = time.monotonic()
            for name, frac in (("p10", 0.1), ("p90", 0.9), ("all", 1.0)):
                if name not in marks and done >= frac * n:
                    marks[name] = now
            if "all" in marks:
                break
            await asyncio.sleep(0.2)
        cpu1 = cpu_seconds(pid) if pid else None
        db1 = cpu_seconds(db_pid) if db_pid else None
        if profile:
            log(f"profile written: {await asyncio.to_thread(profile.wait)}")
        db_time = await asyncio.to_thread(database_time, stack)
        log_database_time("intake", db_time)
        async with AsyncMongoClient(mongodb_url) as client:
            cases = await client[f"{DB_PREFIX}_intake"]["reports"].count_documents({})
        if "p90" not in marks:
            return [Row(S7, M7, round(done / (time.monotonic() - t_start), 1), "reports/s", TARGET, status="partial",
                        note=f"only {done}/{n} received within the time limit")]
        rate = 0.8 * n / (marks["p90"] - marks["p10"])
        whole = done / (marks.get("all", time.monotonic()) - t_start)
        span = marks.get("all", time.monotonic()) - t_start
        cores = (cpu1 - cpu0) / span if cpu0 is not None and cpu1 is not None else None
        # CPU per report is what bounds the rate on a busy machine: the database is one thread
        db_ms = 1000 * (db1 - db0) / max(done, 1) if db0 is not None and db1 is not None else None
        intake_ms = 1000 * (cpu1 - cpu0) / max(done, 1) if cpu0 is not None and cpu1 is not None else None
        note = (f"{n} distinct reports drained by one process; 10→90 % in {marks['p90'] - marks['p10']:.1f}s; "
                f"whole drain incl. start-up {whole:.0f}/s; {cases} cases stored, {done} received events"
                + (f"; intake used {cores:.2f} cores ({intake_ms:.2f} ms CPU/report)" if cores is not None and intake_ms is not None else "")
                + (f"; database {db_ms:.2f} ms CPU/report" if db_ms is not None else ""))
        ok = cases == n and done == n
        return [Row(S7, M7, round(rate, 1), "reports/s", TARGET, status="ok" if ok else "partial", note=note,
                    details={"n": n, "cases": cases, "received": done, "marks": marks, "intake_cores": cores,
                             "intake_cpu_ms_per_report": intake_ms, "db_cpu_ms_per_report": db_ms,
                             "database_time": db_time})]
    finally:
        await nc.close()
        await asyncio.to_thread(stack.stop)
        with contextlib.suppress(Exception):
            await drop_databases(mongodb_url, DB_PREFIX)
