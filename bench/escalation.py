"""Scenario 3: escalation precision — N open cases whose respond clocks fall due over ~60 s.

Only routing runs (with a seconds-scale policy file). The bench loads the directory, then
publishes `gridcase.case.received.v1` events straight to routing (as intake would) at N/60
per second, so routing assigns them over ~60 s; every case starts at `grid` with respond
clock D (> the publish window), so the respond deadlines fall due over ~60 s after D.
Nobody accepts, so each case must be escalated `respond_overdue` exactly once, on time.
The next level's clocks are an hour, so nothing escalates twice legitimately.

Lateness = time the `escalated` event was stored in JetStream − `respond_by` of the case's
`assigned` (reason `new`) event; also reported from the event's own `at`. Missed = due
cases with no escalation by the end; doubled = cases escalated `respond_overdue` from the
start level more than once. If routing cannot take N/60 per second, publishing stops when
its backlog passes ~10 s of input and N is what was published (reported honestly).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats

from shared.contract.subjects import DIRECTORY_LOAD, SERVICE_ACCESS, case_event
from shared.launcher import Stack, StackConfig, free_port_offset

from .common import (
    Options,
    Pacer,
    Row,
    command,
    consumer_backlog,
    database_time,
    drop_databases,
    error_row,
    log,
    log_database_time,
    not_available,
    parse_time,
    percentile,
    read_subject,
    reset_streams,
    rss_mb,
    subject_count,
    wait_for,
)
from .workload import CASE_RECEIVED, Workload

DB_PREFIX = "benchesc"
S3 = "3 escalation"
ASSIGNED, ESCALATED = case_event("assigned"), case_event("escalated")
CATEGORY = "facility.parking"  # direct handling, starts at grid


def policy_yaml(respond_s: int) -> str:
    far = "PT1H"
    return (
        "# bench scenario 3: start-level respond clock of seconds, every other clock an hour\n"
        "clocks:\n"
        f"  building: {{normal: {{respond: PT{respond_s}S, resolve: PT24H}}, urgent: {{respond: PT{respond_s}S, resolve: PT24H}}}}\n"
        f"  grid: {{normal: {{respond: PT{respond_s}S, resolve: PT24H}}, urgent: {{respond: PT{respond_s}S, resolve: PT24H}}}}\n"
        f"  community: {{normal: {{respond: {far}, resolve: PT24H}}, urgent: {{respond: {far}, resolve: PT24H}}}}\n"
        f"  street: {{normal: {{respond: {far}, resolve: PT24H}}, urgent: {{respond: {far}, resolve: PT24H}}}}\n"
        "warning_fraction: 0.05\n"
        f"categories:\n  {CATEGORY}: {{handling: direct, start: grid}}\n"
    )


def _write_policy(path: Path, respond_s: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(policy_yaml(respond_s), encoding="utf-8")


def _rows_na(why: str) -> list[Row]:
    return [
        not_available(S3, "escalation lateness p99", why, target=2, op="<=", unit="s"),
        not_available(S3, "missed escalations", why, target=0, op="<="),
        not_available(S3, "doubled escalations", why, target=0, op="<="),
    ]


async def run_escalation(nats_url: str, mongodb_url: str, opts: Options, workdir: Path) -> list[Row]:
    n_target = int(opts.escalation_n or opts.d(100_000, 3_000))
    window = opts.d(60, 10)
    respond_s = int(window + opts.d(25, 12))
    rate = n_target / window
    await reset_streams(nats_url)
    await drop_databases(mongodb_url, DB_PREFIX)
    policy = workdir / "policy-escalation.yaml"
    await asyncio.to_thread(_write_policy, policy, respond_s)
    stack = Stack(
        StackConfig(
            data=workdir / "stack-escalation",
            nats_url=nats_url,
            mongodb_url=mongodb_url,
            port_offset=free_port_offset(),
            database_prefix=DB_PREFIX,
            services=("routing",),
            policy=policy,
            extra_env={"GRIDCASE_LOG_LEVEL": "WARNING"},
        )
    )
    nc = None
    try:
        await asyncio.to_thread(stack.start_infrastructure)
        try:
            await asyncio.to_thread(stack.start_services, 90)
        except Exception as exc:
            return _rows_na(f"routing did not start: {exc}"[:300])
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream(publish_async_max_pending=4000)
        wl = Workload.default()
        try:
            reply = await command(nc, DIRECTORY_LOAD, wl.directory_json(), timeout=30)
            dir_note = "directory loaded" if reply.get("ok") else "directory refused"
        except Exception as exc:
            dir_note = f"directory not loaded ({type(exc).__name__})"
        # probe: does routing assign at all?
        for i in range(5):
            _, eid, body = wl.received_envelope(i, category=CATEGORY, prefix="probe")
            await js.publish(CASE_RECEIVED, body, headers={"Nats-Msg-Id": eid})

        async def probe_assigned() -> bool:
            return await subject_count(js, "GRIDCASE_CASES", ASSIGNED) >= 5

        if not await wait_for(probe_assigned, 30):
            return _rows_na(f"routing publishes no case.assigned for case.received ({dir_note})")

        durables = [d for d in SERVICE_ACCESS["routing"].durables if d[1].endswith("case-received")]
        guard = max(2000, int(rate * 10))
        state = {"backlog": 0, "stop": False, "rss": 0.0}
        pid = stack.services["routing"].pid

        async def monitor() -> None:
            while True:
                with contextlib.suppress(Exception):
                    state["backlog"] = sum((await consumer_backlog(js, durables)).values())
                    if state["backlog"] > guard:
                        state["stop"] = True
                if pid:
                    state["rss"] = max(state["rss"], rss_mb(pid).get("hwm_mb") or 0)
                await asyncio.sleep(1)

        mon = asyncio.create_task(monitor())
        ours: set[str] = set()

        def make(i: int) -> tuple[str, str, bytes, str]:
            case_id, eid, body = wl.received_envelope(i, category=CATEGORY, prefix="esc")
            ours.add(case_id)
            return CASE_RECEIVED, eid, body, case_id

        pacer = Pacer(js, make)
        log(f"escalation: publishing {n_target} case.received at {rate:.0f}/s (respond clock {respond_s}s; {dir_note})")
        t_pub = time.time()
        await pacer.run(rate, window * 1.5, stop=lambda: bool(state["stop"]), limit=n_target)
        n = pacer.sent
        log(f"escalation: published {n} in {time.time() - t_pub:.0f}s; waiting for routing to assign them")
        base = 5

        async def all_assigned() -> bool:
            return await subject_count(js, "GRIDCASE_CASES", ASSIGNED) >= n + base

        await wait_for(all_assigned, max(60.0, respond_s * 2), interval=1)
        t_assigned = time.time()
        # every deadline is ≤ last assignment + respond_s; wait for it plus a grace period
        end_wait = t_assigned + respond_s + 6
        log(f"escalation: assigned by +{t_assigned - t_pub:.0f}s; waiting {end_wait - time.time():.0f}s for the deadlines")
        await asyncio.sleep(max(0.0, end_wait - time.time()))
        # then until escalations stop arriving (bounded)
        last, stable_since = -1, time.time()
        while time.time() - stable_since < 3 and time.time() < end_wait + 30:
            cur = await subject_count(js, "GRIDCASE_CASES", ESCALATED)
            if cur != last:
                last, stable_since = cur, time.time()
            await asyncio.sleep(1)
        cutoff = datetime.now(UTC)
        mon.cancel()
        log_database_time("escalation", await asyncio.to_thread(database_time, stack))
        log("escalation: reading assigned/escalated events back from the stream")
        assigned = await read_subject(js, "GRIDCASE_CASES", ASSIGNED)
        escalated = await read_subject(js, "GRIDCASE_CASES", ESCALATED)
        return _analyse(assigned, escalated, ours, n, n_target, respond_s, cutoff, state, dir_note)
    except Exception as exc:
        return [error_row(S3, "escalation lateness p99", exc, target=2, op="<=", unit="s")]
    finally:
        if nc:
            await nc.close()
        await asyncio.to_thread(stack.stop)
        with contextlib.suppress(Exception):
            await reset_streams(nats_url)
            await drop_databases(mongodb_url, DB_PREFIX)


def _analyse(assigned: list[Any], escalated: list[Any], ours: set[str], n: int, n_target: int, respond_s: int,
             cutoff: datetime, state: dict[str, Any], dir_note: str) -> list[Row]:
    due: dict[str, tuple[datetime, str]] = {}
    for m in assigned:
        d = json.loads(m.data).get("data", {})
        cid = d.get("case_id")
        if cid in ours and d.get("reason") == "new" and cid not in due:
            due[cid] = (parse_time(d["respond_by"]), d.get("level", ""))
    esc: dict[str, list[tuple[datetime, datetime]]] = {}
    for m in escalated:
        d = json.loads(m.data).get("data", {})
        cid = d.get("case_id")
        if cid not in due or d.get("reason") != "respond_overdue" or d.get("from_level") != due[cid][1]:
            continue
        esc.setdefault(cid, []).append((m.metadata.timestamp, parse_time(d["at"])))
    late, late_at = [], []
    missed = doubled = early = 0
    for cid, (respond_by, _) in due.items():
        evs = esc.get(cid, [])
        if not evs:
            if respond_by <= cutoff:
                missed += 1
            continue
        if len(evs) > 1:
            doubled += 1
        stored, at = min(evs)
        late.append((stored - respond_by).total_seconds())
        late_at.append((at - respond_by).total_seconds())
        if at < respond_by:
            early += 1
    dues = sorted(r for r, _ in due.values())
    spread = (dues[-1] - dues[0]).total_seconds() if dues else 0
    not_assigned = len(ours) - len(due)
    det = {
        "n_published": n,
        "n_target": n_target,
        "n_assigned": len(due),
        "not_assigned": not_assigned,
        "respond_clock_s": respond_s,
        "due_spread_s": round(spread, 1),
        "lateness_p50_s": percentile(late, 50),
        "lateness_p99_s": percentile(late, 99),
        "lateness_max_s": max(late) if late else None,
        "lateness_at_p99_s": percentile(late_at, 99),
        "early": early,
        "routing_peak_rss_mb": round(state.get("rss") or 0, 1),
        "directory": dir_note,
    }
    size = f"N={len(due):,}" + ("" if n >= n_target else f" of {n_target:,} (routing backlog guard)")
    note = f"{size}, due over {spread:.0f}s; p50 {det['lateness_p50_s'] or 0:.2f}s, max {det['lateness_max_s'] or 0:.1f}s; by event `at` p99 {det['lateness_at_p99_s'] or 0:.2f}s"
    if early:
        note += f"; {early} escalated before due"
    if not_assigned:
        note += f"; {not_assigned} never assigned"
    p99 = percentile(late, 99)
    return [
        Row(S3, "escalation lateness p99", None if p99 is None else round(p99, 3), "s", 2, "<=",
            status="ok" if late else "error", note=note if late else "no escalations observed", details=det),
        Row(S3, "missed escalations", float(missed), "", 0, "<=", note=f"of {len(due):,} due"),
        Row(S3, "doubled escalations", float(doubled), "", 0, "<=", note=f"of {len(due):,} due"),
    ]

