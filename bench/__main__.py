"""`make bench` → `.venv/bin/python -m bench [--quick] [--only floor,throughput,…] [--profile routing]`.

Starts one fresh nats-server and SecantusDB on free loopback ports (shared by every
scenario, so the floor is measured on the same servers as the system), runs the chosen
scenarios in order, tidies up after each, and writes bench/results/latest.{json,md}.

Scenarios: floor (0), throughput (1), latency (2), escalation (3), stats (4), dispatch (5),
memory (6, sampled during 1), intake alone (7, issue 3). `throughput` implies `floor` (its ratio needs it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from .common import (
    Infra,
    Options,
    Row,
    error_row,
    log,
    make_workdir,
    remove_workdir,
    settle_database,
)
from .report import write

ALL = ("floor", "intake", "throughput", "latency", "memory", "escalation", "stats", "dispatch")
ALIASES = {"0": "floor", "1": "throughput", "2": "latency", "3": "escalation", "4": "stats", "5": "dispatch", "6": "memory", "7": "intake",
           "system": "throughput,latency,memory"}


def parse(argv: list[str] | None) -> Options:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help=f"comma-separated subset of {', '.join(ALL)} (or 0–7)")
    ap.add_argument("--quick", action="store_true", help="short durations and small N (a smoke run, ~4 min)")
    ap.add_argument("--profile", default="", help="comma-separated services to profile with py-spy during scenario 1")
    ap.add_argument("--escalation-n", type=int, help="cases for scenario 3 (default 100000; quick 3000)")
    ap.add_argument("--stats-n", type=int, help="cases for scenario 4 (default 1000000; quick 20000)")
    ap.add_argument("--services", help="scenarios 1, 2, 6: start only these services (e.g. intake,routing) "
                    "to see which one's load costs the others; the figures are then not the system's")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data directory (logs of every process)")
    ap.add_argument("--workdir", type=Path, help="data directory to use (kept)")
    a = ap.parse_args(argv)
    only = None
    if a.only:
        only = set()
        for part in a.only.split(","):
            part = ALIASES.get(part.strip(), part.strip())
            for p in part.split(","):
                if p not in ALL:
                    ap.error(f"unknown scenario {p!r}; choose from {', '.join(ALL)}")
                only.add(p)
        if "throughput" in only:
            only.add("floor")
    return Options(quick=a.quick, only=only, profile=tuple(p for p in a.profile.split(",") if p),
                   escalation_n=a.escalation_n, stats_n=a.stats_n, keep=a.keep, workdir=a.workdir,
                   services=tuple(x.strip() for x in a.services.split(",")) if a.services else None)


async def run(opts: Options, work: Path) -> list[Row]:
    from .escalation import run_escalation
    from .floor import run_floor
    from .intake import run_intake
    from .micro import run_dispatch_match, run_stats_query
    from .system import run_system

    want = set(opts.only or ALL)
    rows: list[Row] = []
    infra = Infra(work / "servers")
    try:
        await asyncio.to_thread(infra.start)
        log(f"servers: nats {infra.nats_url}, databases {infra.mongodb_url} and {infra.second_mongodb_url}")
        floor = None
        if "floor" in want:
            row = await run_floor(infra.nats_url, infra.mongodb_url, opts)
            rows.append(row)
            floor = row.figure
        db = infra.pids.get("secantusdb")
        if "intake" in want:
            rows += await _guard(run_intake(infra.nats_url, infra.mongodb_url, opts, work, infra.pids), "7 intake", settle=db)
        sys_want = want & {"throughput", "latency", "memory"}
        if sys_want:
            rows += await _guard(run_system(infra.nats_url, infra.mongodb_url, infra.second_mongodb_url, opts, floor, work, sys_want, infra.pids), "1 throughput", settle=db)
        if "escalation" in want:
            rows += await _guard(run_escalation(infra.nats_url, infra.mongodb_url, opts, work, infra.pids), "3 escalation", settle=db)
        if "stats" in want:
            rows += await _guard(run_stats_query(infra.nats_url, infra.mongodb_url, opts, work), "4 stats query", settle=db)
        if "dispatch" in want:
            rows += await _guard(run_dispatch_match(opts), "5 dispatch matching")
        for r in rows:
            if r.ratio_to_floor is None and floor and r.unit in ("reports/s", "msgs/s") and r.figure is not None:
                r.ratio_to_floor = round(r.figure / floor, 3)
        return rows
    finally:
        await asyncio.to_thread(infra.stop)


async def _guard(coro, scenario: str, *, settle: int | None = None) -> list[Row]:
    """Run a scenario (once the database process `settle` is idle); an error is its row."""
    await settle_database(settle)
    try:
        return await coro
    except Exception as exc:
        return [error_row(scenario, "scenario", exc)]


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    work = make_workdir(opts)
    t0 = time.monotonic()
    try:
        rows = asyncio.run(run(opts, work))
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        remove_workdir(work, opts)
        if opts.keep or opts.workdir:
            log(f"data and logs kept in {work}")
    meta = {"quick": opts.quick, "only": sorted(opts.only) if opts.only else None, "duration_s": time.monotonic() - t0,
            "profile": list(opts.profile)}
    jp, mp = write(rows, meta)
    print(mp.read_text(encoding="utf-8"))
    log(f"wrote {jp} and {mp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
