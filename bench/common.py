"""Plumbing shared by every bench scenario: servers, result rows, pacing, percentiles, NATS helpers.

Every scenario runs against fresh servers on free loopback ports (never the dev stack's
4222/27017/81xx) and a `Stack` whose HTTP ports are shifted by a free `port_offset`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from shared.contract.envelope import Envelope, new_id
from shared.contract.subjects import SERVICE_ACCESS, STREAMS
from shared.embedded import (
    Child,
    free_port,
    mongo_healthy,
    mongo_url,
    nats_healthy,
    nats_server,
    secantus_server,
    wait_until,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO = BENCH_DIR.parent


# ---- result rows ---------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the results table."""

    scenario: str  # "0 floor", "1 throughput" …
    metric: str  # what the figure is
    figure: float | None = None
    unit: str = ""
    target: float | None = None
    op: str = ">="  # the figure must be `op` the target
    ratio_to_floor: float | None = None
    status: str = "ok"  # ok | not available | error
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.status != "ok" or self.figure is None or self.target is None:
            return None
        return self.figure >= self.target if self.op == ">=" else self.figure <= self.target

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["met"] = self.met
        return d


def not_available(scenario: str, metric: str, why: str, *, target: float | None = None, op: str = ">=", unit: str = "") -> Row:
    return Row(scenario, metric, None, unit, target, op, status="not available", note=why)


def error_row(scenario: str, metric: str, exc: BaseException, *, target: float | None = None, op: str = ">=", unit: str = "") -> Row:
    return Row(scenario, metric, None, unit, target, op, status="error", note=f"{type(exc).__name__}: {exc}"[:400])


@dataclass
class Options:
    quick: bool = False
    only: set[str] | None = None
    profile: tuple[str, ...] = ()
    escalation_n: int | None = None
    stats_n: int | None = None
    keep: bool = False  # keep the temp data directory (logs) after the run
    workdir: Path | None = None
    services: tuple[str, ...] | None = None  # scenarios 1, 2, 6: run only these (which load hurts?)

    def d(self, full: float, quick: float) -> float:
        """A duration (or size) for this mode."""
        return quick if self.quick else full


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- statistics -----------------------------------------------------------------------------
def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1))
    return xs[k]


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points (units of y per second)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mt) * (y - my) for t, y in points) / den


def machine() -> dict[str, Any]:
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


# ---- processes ------------------------------------------------------------------------------
def rss_mb(pid: int) -> dict[str, float | None]:
    """Current and peak resident set size of a process, in MB (psutil if present, else /proc)."""
    try:
        import psutil  # type: ignore[import-not-found]

        p = psutil.Process(pid)
        mi = p.memory_info()
        peak = getattr(mi, "peak_wset", None)
        out: dict[str, float | None] = {"rss_mb": mi.rss / 2**20, "hwm_mb": peak / 2**20 if peak else None}
        if out["hwm_mb"] is None:
            out["hwm_mb"] = _proc_status(pid).get("hwm_mb")
        return out
    except ImportError:
        return _proc_status(pid)
    except Exception:
        return {"rss_mb": None, "hwm_mb": None}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds_each(pids: dict[str, int]) -> dict[str, float]:
    """`cpu_seconds` of each named process that can still be read."""
    return {n: c for n, p in pids.items() if (c := cpu_seconds(p)) is not None}


# A SecantusDB process is Python under one GIL: it works on about one core at most (seen
# saturated at 0.92–1.0 cores in scenario 3), however many cores the machine has.
DATABASES = ("secantusdb", "secantusdb-2")


@dataclass
class CpuCeiling:
    """The rate the CPU spent per item allows at most: the whole system on the machine's cores,
    and each database on the one core it can use. At the batch sizes of the run it was measured
    in (a fuller batch costs less per item)."""

    ms_per_item: dict[str, float]
    cores: int

    @classmethod
    def measure(cls, before: dict[str, float], after: dict[str, float], items: int, cores: int | None = None) -> CpuCeiling | None:
        """From CPU seconds per process (`cpu_seconds`) before and after `items` were done."""
        if items <= 0:
            return None
        ms = {n: round(1000 * (after[n] - before[n]) / items, 3) for n in after if n in before}
        return cls(ms, cores or os.cpu_count() or 1) if ms else None

    @property
    def system_ms(self) -> float:
        return sum(self.ms_per_item.values())

    @property
    def busiest_database(self) -> str | None:
        dbs = [n for n in self.ms_per_item if n in DATABASES and self.ms_per_item[n] > 0]
        return max(dbs, key=self.ms_per_item.__getitem__) if dbs else None

    @property
    def per_s(self) -> float | None:
        """The lower of the two ceilings (items a second)."""
        limits = []
        if self.system_ms > 0:
            limits.append(1000 * self.cores / self.system_ms)
        if (db := self.busiest_database) is not None:
            limits.append(1000 / self.ms_per_item[db])
        return min(limits) if limits else None

    def describe(self, item: str) -> str:
        text = f"whole system {self.system_ms:.2f} ms CPU per {item} → {self.cores} cores allow {1000 * self.cores / self.system_ms:,.0f}/s"
        if (db := self.busiest_database) is not None:
            ms = self.ms_per_item[db]
            text += f"; {db} {ms:.2f} ms per {item} → its one core allows {1000 / ms:,.0f}/s"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"cpu_ms_per_item": self.ms_per_item, "cores": self.cores, "system_ms": round(self.system_ms, 3),
                "busiest_database": self.busiest_database, "ceiling_per_s": self.per_s}


async def settle_database(pid: int | None, *, idle_cores: float = 0.1, limit_s: float = 90.0) -> float:
    """Wait until the database process is idle (dropping the last scenario's data, flushing its
    cache), so a scenario does not pay for the one before it; returns the seconds waited."""
    if not pid:
        return 0.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        c0 = cpu_seconds(pid)
        await asyncio.sleep(1.0)
        c1 = cpu_seconds(pid)
        if c0 is None or c1 is None or c1 - c0 < idle_cores:
            break
    waited = time.monotonic() - t0
    if waited > 1.5:
        log(f"database busy after the last scenario: waited {waited:.0f}s for it to settle")
    return waited


def _proc_status(pid: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {"rss_mb": None, "hwm_mb": None}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_mb"] = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    out["hwm_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


# ---- servers --------------------------------------------------------------------------------
class Infra:
    """A fresh nats-server and two SecantusDB processes on free loopback ports, in a temp
    directory — the embedded stack's shape (`shared.settings.SECOND_DB_SERVICES`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nats: Child | None = None
        self.db: Child | None = None
        self.db2: Child | None = None
        self.nats_url = ""
        self.mongodb_url = ""
        self.second_mongodb_url = ""
        self.nats_monitor = 0

    def start(self) -> Infra:
        port, monitor = free_port(), free_port()
        self.nats = nats_server(self.root / "nats", port, monitor, self.root / "logs" / "nats.log", name="bench-nats").start()
        self.nats_monitor = monitor
        self.nats_url = f"nats://127.0.0.1:{port}"
        wait_until(lambda: nats_healthy(monitor), 20, "nats-server")
        db_port = free_port()
        self.db = secantus_server(self.root / "db", db_port, self.root / "logs" / "secantusdb.log").start()
        self.mongodb_url = mongo_url(db_port)
        db2_port = free_port()
        self.db2 = secantus_server(self.root / "db2", db2_port, self.root / "logs" / "secantusdb-2.log", name="secantusdb-2").start()
        self.second_mongodb_url = mongo_url(db2_port)
        wait_until(lambda: mongo_healthy(self.mongodb_url), 60, "SecantusDB")
        wait_until(lambda: mongo_healthy(self.second_mongodb_url), 60, "second SecantusDB")
        return self

    def stop(self) -> None:
        for db in (self.db2, self.db):
            if db:
                db.stop(timeout=5)
        if self.nats:
            self.nats.stop(timeout=3)

    @property
    def pids(self) -> dict[str, int | None]:
        return {"nats-server": self.nats.pid if self.nats else None, "secantusdb": self.db.pid if self.db else None,
                "secantusdb-2": self.db2.pid if self.db2 else None}


def make_workdir(opts: Options) -> Path:
    if opts.workdir:
        opts.workdir.mkdir(parents=True, exist_ok=True)
        return opts.workdir
    return Path(tempfile.mkdtemp(prefix="gridcase-bench-"))


def remove_workdir(path: Path, opts: Options) -> None:
    if not opts.keep and not opts.workdir:
        shutil.rmtree(path, ignore_errors=True)


async def reset_streams(nats_url: str) -> None:
    """Delete and re-declare the contract's streams (and so every durable consumer)."""
    from shared.messaging import declare_streams

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for s in STREAMS:
            try:
                await js.delete_stream(s.name)
            except nats.js.errors.NotFoundError:
                pass
        # nats-server may still be removing a deleted stream's files (a large one, after the
        # throughput scenario): creating it again then fails with "error creating store for
        # stream" (10049) for a moment
        deadline = time.monotonic() + 30
        while True:
            try:
                await declare_streams(js)
                break
            except nats.js.errors.ServerError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def drop_databases(mongodb_url: str, prefix: str) -> None:
    from pymongo import AsyncMongoClient

    client = AsyncMongoClient(mongodb_url, serverSelectionTimeoutMS=5000)
    try:
        for name in await client.list_database_names():
            if name.startswith(prefix + "_") or name == prefix:
                await client.drop_database(name)
    finally:
        await client.close()


# ---- NATS helpers ---------------------------------------------------------------------------
def envelope_bytes(type_: str, data: Any, *, source: str = "/bench", subject: str | None = None) -> tuple[str, bytes]:
    env = Envelope.new(type_, data, source=source, subject=subject)
    return env.id, env.to_json()


async def command(nc: Any, subject: str, data: Any, timeout: float = 10.0) -> dict[str, Any]:
    _, body = envelope_bytes(subject, data)
    msg = await nc.request(subject, body, timeout=timeout)
    return json.loads(msg.data)


async def consumer_backlog(js: Any, durables: Iterable[tuple[str, str]]) -> dict[str, int]:
    """num_pending + num_ack_pending per existing durable (missing ones are left out)."""
    out: dict[str, int] = {}
    for stream, durable in durables:
        try:
            info = await js.consumer_info(stream, durable, timeout=2)
        except Exception:
            continue
        out[durable] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    return out


def durables_of(*services: str) -> list[tuple[str, str]]:
    return [d for s in services for d in SERVICE_ACCESS[s].durables]


async def subject_count(js: Any, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    subjects = info.state.subjects or {}
    return int(subjects.get(subject, 0))


async def read_subject(js: Any, stream: str, subject: str, *, batch: int = 1000, idle: float = 1.0) -> list[Any]:
    """Every stored message of one subject, with its metadata (ephemeral, ack none)."""
    total = await subject_count(js, stream, subject)
    if total == 0:
        return []
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL,
            inactive_threshold=30,
            filter_subject=subject,
        ),
        pending_msgs_limit=batch * 4,
    )
    out: list[Any] = []
    try:
        while len(out) < total:
            try:
                out.extend(await sub.fetch(batch, timeout=idle))
            except nats.errors.TimeoutError:
                break
    finally:
        await sub.unsubscribe()
    return out


class Pacer:
    """Publishes at a controlled rate (open loop), tracking publish times; async JetStream publishes."""

    def __init__(self, js: Any, make: Callable[[int], tuple[str, str, bytes, str]], *, max_inflight: int = 2000) -> None:
        self.js = js
        self.make = make  # i → (subject, msg id, body, key)
        self.sent = 0
        self.failed = 0
        self.sent_at: dict[str, float] = {}
        self.max_inflight = max_inflight
        self._futs: list[asyncio.Future] = []

    async def _drain(self, keep: int) -> None:
        while len(self._futs) > keep:
            chunk, self._futs = self._futs[: len(self._futs) - keep], self._futs[len(self._futs) - keep :]
            for r in await asyncio.gather(*chunk, return_exceptions=True):
                if isinstance(r, BaseException):
                    self.failed += 1

    async def run(self, rate: float, seconds: float, *, stop: Callable[[], bool] | None = None, track: bool = False,
                  limit: int | None = None) -> float:
        """Publish `rate`/s for `seconds` (at most `limit` messages in all); returns the achieved rate."""
        t0 = time.monotonic()
        start_sent = self.sent
        tick = 0.01
        while True:
            now = time.monotonic()
            el = now - t0
            if el >= seconds or (stop and stop()):
                break
            due = int(rate * el) - (self.sent - start_sent)
            if limit is not None:
                if self.sent >= limit:
                    break
                due = min(due, limit - self.sent)
            for _ in range(max(0, min(due, 5000))):
                subject, msg_id, body, key = self.make(self.sent)
                if track:
                    self.sent_at[key] = time.time()
                self._futs.append(await self.js.publish_async(subject, body, headers={"Nats-Msg-Id": msg_id}))
                self.sent += 1
            if len(self._futs) > self.max_inflight:
                await self._drain(self.max_inflight // 2)
            await asyncio.sleep(tick)
        await self._drain(0)
        el = time.monotonic() - t0
        return (self.sent - start_sent) / el if el > 0 else 0.0


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except Exception:
            last = None
        if last:
            return last
        await asyncio.sleep(interval)
    return last


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


__all__ = [
    "Infra",
    "Options",
    "Pacer",
    "Row",
    "command",
    "consumer_backlog",
    "durables_of",
    "error_row",
    "iso",
    "new_id",
    "not_available",
    "percentile",
    "timedelta",
]


# ---- where the database time went -----------------------------------------------------------------
def database_time(stack: Any, top: int = 12) -> list[dict[str, Any]]:
    """Driver-timed database seconds per (service, command, collection), from each service's
    `gridcase_db_command_seconds` — the busiest first."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for name in stack.services:
        try:
            with urllib.request.urlopen(stack.url(name, "/metrics"), timeout=5) as r:  # noqa: S310 - loopback
                text = r.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            if family.name != "gridcase_db_command_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith(("_sum", "_count")):
                    key = (name, sample.labels["command"], sample.labels["collection"])
                    row = rows.setdefault(key, {"service": name, "command": key[1], "collection": key[2]})
                    row["seconds" if sample.name.endswith("_sum") else "count"] = sample.value
    ranked = sorted(rows.values(), key=lambda r: -r.get("seconds", 0.0))[:top]
    for r in ranked:
        r["seconds"] = round(r.get("seconds", 0.0), 2)
        r["ms_each"] = round(1000 * r["seconds"] / r["count"], 2) if r.get("count") else None
    return ranked


def log_database_time(scenario: str, ranked: list[dict[str, Any]]) -> None:
    log(f"{scenario}: database time by service/command/collection (driver-timed, whole scenario):")
    for r in ranked:
        log(f"  {r['service']:9s} {r['command']:14s} {r['collection']:22s} {r['seconds']:8.2f}s  "
            f"n={r.get('count', 0):.0f}  {r['ms_each']} ms each")
