"""Scenario 3: escalation precision — N open cases whose respond clocks fall due over ~60 s.

Only routing runs (with a policy file whose start-level respond clock is D = 10 min and every
other clock an hour). The bench first checks that routing assigns a published
`case.received` at all, then stops routing and stores N open cases in its database
(`services.routing.bench_support`): each opened by routing's own rules a respond clock
before its deadline, warned at the warning time, its deadline between T0 and T0 + 60 s.
That is the state routing would be in after taking the N reports over the previous ten
minutes; building it directly keeps the scenario about the timers, not about how fast cases
come in (scenario 1). Routing is started again and loads them; nobody accepts, so each case
must be escalated `respond_overdue` exactly once, on time. The next level's clocks are an
hour, so nothing escalates twice legitimately.

Lateness = time the `escalated` event was stored in JetStream − the case's `respond_by`;
also reported from the event's own `at`. Missed = due cases with no escalation by the end;
doubled = cases escalated `respond_overdue` from the start level more than once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
from pymongo import AsyncMongoClient

from services.routing.bench_support import open_cases, respond_deadlines, seed_open_cases
from shared.contract.case import CaseReceived
from shared.contract.subjects import DIRECTORY_LOAD, case_event
from shared.launcher import Stack, StackConfig, free_port_offset
from shared.policy import load_policy

from .common import (
    CpuCeiling,
    Options,
    Row,
    command,
    cpu_seconds_each,
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


RESPOND_S = 600  # the start level's respond clock: the cases were opened ten minutes before their deadline
SEED_LEAD_S = 30  # first deadline this long after the cases are built, plus N / SEED_RATE seconds
SEED_RATE = 1500  # cases built and stored per second, conservatively
LATE_WAIT_S = 150  # after the last deadline, how long escalations may still come in


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


async def run_escalation(nats_url: str, mongodb_url: str, opts: Options, workdir: Path,
                         infra_pids: dict[str, int | None] | None = None) -> list[Row]:
    n = int(opts.escalation_n or opts.d(100_000, 3_000))
    window = opts.d(60, 10)
    await reset_streams(nats_url)
    await drop_databases(mongodb_url, DB_PREFIX)
    policy = workdir / "policy-escalation.yaml"
    await asyncio.to_thread(_write_policy, policy, RESPOND_S)
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
    client: AsyncMongoClient | None = None
    try:
        await asyncio.to_thread(stack.start_infrastructure)
        try:
            await asyncio.to_thread(stack.start_services, 90)
        except Exception as exc:
            return _rows_na(f"routing did not start: {exc}"[:300])
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
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

        # routing stops; the N open cases are stored as it would have left them
        await asyncio.to_thread(stack.services["routing"].stop, 10)
        t_seed = time.time()
        t0 = datetime.now(UTC) + timedelta(seconds=SEED_LEAD_S + n / SEED_RATE)
        received = [CaseReceived.model_validate(json.loads(wl.received_envelope(i, category=CATEGORY, prefix="esc")[2])["data"])
                    for i in range(n)]
        due = [t0 + timedelta(seconds=window * i / n) for i in range(n)]
        cases = await asyncio.to_thread(open_cases, received, due, load_policy(policy), wl.directory)
        deadlines = respond_deadlines(cases)
        client = AsyncMongoClient(stack.mongodb_url)
        await seed_open_cases(client[f"{DB_PREFIX}_routing"], cases)
        del cases, received
        log(f"escalation: stored {n:,} open cases in {time.time() - t_seed:.0f}s; restarting routing")
        await asyncio.to_thread(stack.start_service, "routing")
        await asyncio.to_thread(stack.wait_ready, 120, ("routing",))
        margin = (t0 - datetime.now(UTC)).total_seconds()
        log(f"escalation: routing ready {margin:.0f}s before the first deadline; deadlines over {window:.0f}s")
        state: dict[str, Any] = {"rss": 0.0, "ready_margin_s": round(margin, 1)}
        pid = stack.services["routing"].pid

        async def monitor() -> None:
            while True:
                if pid:
                    with contextlib.suppress(Exception):
                        state["rss"] = max(state["rss"], rss_mb(pid).get("hwm_mb") or 0)
                await asyncio.sleep(1)

        mon = asyncio.create_task(monitor())
        # the CPU the escalations cost, from the first deadline on: what bounds the rate
        pids = {n: p for n, p in {**(infra_pids or {}), "routing": pid}.items() if p and n != "secantusdb-2"}
        await asyncio.sleep(max(0.0, t0.timestamp() - time.time()))
        cpu0 = cpu_seconds_each(pids)
        end_wait = t0.timestamp() + window + 6
        await asyncio.sleep(max(0.0, end_wait - time.time()))
        # then until every case has escalated or none has for a while: a late escalation is late,
        # not missed (bounded; one batch of a backlog takes seconds to write)
        last, stable_since = -1, time.time()
        while time.time() - stable_since < 10 and time.time() < end_wait + LATE_WAIT_S:
            cur = await subject_count(js, "GRIDCASE_CASES", ESCALATED)
            if cur >= n:
                break
            if cur != last:
                last, stable_since = cur, time.time()
            await asyncio.sleep(1)
        cutoff = datetime.now(UTC)
        state["cpu"] = (cpu0, cpu_seconds_each(pids))
        mon.cancel()
        log_database_time("escalation", await asyncio.to_thread(database_time, stack))
        log("escalation: reading escalated events back from the stream")
        escalated = await read_subject(js, "GRIDCASE_CASES", ESCALATED)
        return _analyse(deadlines, escalated, n, cutoff, state, dir_note)
    except Exception as exc:
        return [error_row(S3, "escalation lateness p99", exc, target=2, op="<=", unit="s")]
    finally:
        if client:
            await client.close()
        if nc:
            await nc.close()
        await asyncio.to_thread(stack.stop)
        with contextlib.suppress(Exception):
            await reset_streams(nats_url)
            await drop_databases(mongodb_url, DB_PREFIX)


def _analyse(due: dict[str, tuple[datetime, str]], escalated: list[Any], n: int, cutoff: datetime,
             state: dict[str, Any], dir_note: str) -> list[Row]:
    esc: dict[str, list[tuple[datetime, datetime]]] = {}
    for m in escalated:
        d = json.loads(m.data).get("data", {})
        cid = d.get("case_id")
        if cid not in due or d.get("reason") != "respond_overdue" or d.get("from_level") != due[cid][1]:
            continue
        esc.setdefault(cid, []).append((m.metadata.timestamp, parse_time(d["at"])))
    late, late_at, stored_at = [], [], []
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
        stored_at.append(stored)
        late.append((stored - respond_by).total_seconds())
        late_at.append((at - respond_by).total_seconds())
        if at < respond_by:
            early += 1
    dues = sorted(r for r, _ in due.values())
    spread = (dues[-1] - dues[0]).total_seconds() if dues else 0
    # how fast routing escalated: every escalation over the time from the first deadline to the last escalation
    busy = (max(stored_at) - dues[0]).total_seconds() if stored_at and dues else 0
    rate = round(len(stored_at) / busy) if busy > 0 else None
    det = {
        "n": n,
        "n_due": len(due),
        "respond_clock_s": RESPOND_S,
        "due_spread_s": round(spread, 1),
        "routing_ready_before_first_due_s": state.get("ready_margin_s"),
        "lateness_p50_s": percentile(late, 50),
        "lateness_p99_s": percentile(late, 99),
        "lateness_max_s": max(late) if late else None,
        "lateness_at_p99_s": percentile(late_at, 99),
        "early": early,
        "escalations_per_s": rate,
        "due_per_s": round(len(due) / spread) if spread else None,
        "routing_peak_rss_mb": round(state.get("rss") or 0, 1),
        "directory": dir_note,
    }
    note = (f"N={len(due):,} open, due over {spread:.0f}s ({det['due_per_s']}/s), routing escalated {rate}/s; p50 {det['lateness_p50_s'] or 0:.2f}s, "
            f"max {det['lateness_max_s'] or 0:.1f}s; by event `at` p99 {det['lateness_at_p99_s'] or 0:.2f}s")
    if early:
        note += f"; {early} escalated before due"
    p99 = percentile(late, 99)
    rows = [
        Row(S3, "escalation lateness p99", None if p99 is None else round(p99, 3), "s", 2, "<=",
            status="ok" if late else "error", note=note if late else "no escalations observed", details=det),
        Row(S3, "missed escalations", float(missed), "", 0, "<=", note=f"of {len(due):,} due"),
        Row(S3, "doubled escalations", float(doubled), "", 0, "<=", note=f"of {len(due):,} due"),
    ]
    ceiling = CpuCeiling.measure(*state["cpu"], len(stored_at)) if state.get("cpu") else None
    if ceiling is not None and ceiling.per_s:
        rows.append(Row(S3, "ceiling: escalations/s the CPU per escalation allows", round(ceiling.per_s), "/s",
                        note=ceiling.describe("escalation") + f"; due {det['due_per_s']}/s", details=ceiling.as_dict()))
    return rows
