"""What the embedded database costs per statement and per document, on this box.

`.venv/bin/python -m bench.dbprobe [--seconds 20]` starts a fresh SecantusDB on a free loopback
port (nothing else running is best) and measures, with pymongo's async client:

- a unit of work as the services write one: a transaction of two inserts and a commit, 100 a
  second — its latency p50/p99/max is the floor under every hop of report → assigned;
- the database time per document of an `insert_many`, with no secondary index and with one;
- the database time per document of an escalation's write: guarded `UpdateMany`s of 100 cases
  (routing's documents and indexes) inside a transaction.

These are the figures the README's "what bounds the misses" paragraph quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, IndexModel, UpdateMany

from services.routing.domain import Case
from shared.embedded import free_port, mongo_healthy, mongo_url, secantus_server, wait_until

from .common import percentile

T0 = datetime(2026, 11, 30, tzinfo=UTC)


def routing_case(i: int) -> dict[str, Any]:
    """Routing's stored document of a case assigned at grid level, its respond clock running."""
    due = T0 + timedelta(milliseconds=i)
    grid = f"g{i % 11}"
    return Case(
        id=f"C-20261130-{i:08d}", version=2, category="env.sanitation", priority="normal",
        scope={"district": "150802", "street": "s1", "community": "c1", "grid": grid, "building": None},
        building=None, located=True, rev=1, level="grid", unit=grid, assignee=f"w{i % 11}",
        respond_by=due, resolve_by=T0 + timedelta(hours=1), warned=["respond"], opened_at=T0, wake_at=due,
    ).to_doc()


async def unit_of_work_latency(client: AsyncMongoClient, seconds: float) -> dict[str, float]:
    db = client["dbprobe"]
    await db.state.insert_one({"_id": "warm"})
    await db.outbox.insert_one({"_id": "warm"})
    lat: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        t = time.perf_counter()
        async with client.start_session() as s, await s.start_transaction():
            await db.state.insert_one({"_id": i, "x": "y" * 500}, session=s)
            await db.outbox.insert_one({"_id": i, "events": "z" * 1000}, session=s)
        lat.append((time.perf_counter() - t) * 1000)
        i += 1
        await asyncio.sleep(0.01)
    return {"n": len(lat), "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat)}


async def per_document(client: AsyncMongoClient, n: int = 20_000) -> dict[str, float]:
    db = client["dbprobe"]
    out: dict[str, float] = {}
    for name, indexes in (("insert, no secondary index", []), ("insert, one secondary index", ["wake_at"])):
        coll = db[f"ins_{len(indexes)}"]
        if indexes:
            await coll.create_indexes([IndexModel([(f, 1)]) for f in indexes])
        t = time.perf_counter()
        for k in range(0, n, 500):
            await coll.insert_many([routing_case(i) for i in range(k, k + 500)], ordered=False)
        out[name] = (time.perf_counter() - t) / n * 1000
    cases = db["cases"]
    await cases.create_indexes([IndexModel([("wake_at", 1)]), IndexModel([("state", 1)])])
    for k in range(0, n, 2000):
        await cases.insert_many([routing_case(i) for i in range(k, k + 2000)])
    change = {"level": "community", "unit": "c1", "assignee": "d1", "respond_by": T0 + timedelta(hours=2),
              "wake_at": T0 + timedelta(hours=2), "warned": []}
    t = time.perf_counter()
    for k in range(0, n, 500):
        ids = [f"C-20261130-{i:08d}" for i in range(k, k + 500)]
        ops = [UpdateMany({"_id": {"$in": ids[j:j + 100]}, "rev": 1}, {"$set": change, "$inc": {"rev": 1, "version": 2}})
               for j in range(0, 500, 100)]
        async with client.start_session() as s, await s.start_transaction():
            result = await cases.bulk_write(ops, ordered=False, session=s)
        if result.matched_count != 500:
            raise RuntimeError(f"guarded update matched {result.matched_count} of 500")
    out["escalation write (guarded UpdateMany of 100, routing's indexes)"] = (time.perf_counter() - t) / n * 1000
    return out


async def main(seconds: float) -> None:
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="gridcase-dbprobe-"))
    server = secantus_server(home / "db", port, home / "db.log").start()
    url = mongo_url(port)
    try:
        wait_until(lambda: mongo_healthy(url), 60, "SecantusDB")
        async with AsyncMongoClient(url) as client:
            uow = await unit_of_work_latency(client, seconds)
            print(f"unit of work (2 inserts + commit, 100/s, {uow['n']} of them): "
                  f"p50 {uow['p50_ms']:.1f} ms, p99 {uow['p99_ms']:.1f} ms, max {uow['max_ms']:.1f} ms")
            for name, ms in (await per_document(client)).items():
                print(f"{name}: {ms:.3f} ms a document")
    finally:
        server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to measure units of work")
    asyncio.run(main(ap.parse_args().seconds))
