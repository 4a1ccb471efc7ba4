"""Scenario 0, the floor: our I/O shape and none of our logic, on the same servers.

Three hops, each a batched durable pull consumer (fetch 128) → `insert_many` into the same
database → publish to the next hop with `Nats-Msg-Id` (publish_async + gather) → ack.
Hop i reads `bench.floor.h<i>` and writes `bench.floor.h<i+1>`; each hop subject has a
stream of its own. The input is preloaded, so the figure is the pipeline's own capacity
(messages completing hop 3 per second), measured over a window after a warm-up.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api
from pymongo import AsyncMongoClient

from .common import Options, Row, drop_databases, error_row, log
from .workload import Workload

HOPS = 3
FETCH = 128
DB_PREFIX = "benchfloor"


def _stream(i: int) -> str:
    return f"BENCH_FLOOR_H{i}"


def _subject(i: int) -> str:
    return f"bench.floor.h{i}"


async def _setup_streams(js: Any) -> None:
    for i in range(HOPS + 1):
        try:
            await js.delete_stream(_stream(i))
        except nats.js.errors.NotFoundError:
            pass
        await js.add_stream(
            api.StreamConfig(
                name=_stream(i),
                subjects=[_subject(i)],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                duplicate_window=120.0,
            )
        )


async def _teardown(js: Any) -> None:
    for i in range(HOPS + 1):
        try:
            await js.delete_stream(_stream(i))
        except Exception:
            pass


async def _hop(i: int, js: Any, db: Any, stop: asyncio.Event, done: list[int]) -> None:
    durable = f"floor-h{i}"
    sub = await js.pull_subscribe(
        _subject(i),
        durable=durable,
        stream=_stream(i),
        config=api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30,
            max_deliver=6,
            max_ack_pending=1024,
            deliver_policy=api.DeliverPolicy.ALL,
        ),
    )
    coll = db[f"hop{i + 1}"]
    nxt = _subject(i + 1)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(FETCH, timeout=0.5)
        except nats.errors.TimeoutError:
            continue
        except Exception:
            if stop.is_set():
                break
            raise
        docs = []
        for m in msgs:
            d = json.loads(m.data)
            d["_id"] = f"{d['id']}:{i}"
            docs.append(d)
        try:
            await coll.insert_many(docs, ordered=False)
        except Exception as exc:  # a redelivery after a timeout: duplicates are fine
            if "E11000" not in str(exc) and "duplicate" not in str(exc).lower():
                raise
        futs = [
            await js.publish_async(nxt, m.data, headers={"Nats-Msg-Id": f"{m.headers.get('Nats-Msg-Id', '')}:{i}"})
            for m in msgs
        ]
        await asyncio.gather(*futs)
        for m in msgs:
            await m.ack()
        done[i] += len(msgs)


async def run_floor(nats_url: str, mongodb_url: str, opts: Options) -> Row:
    warmup = opts.d(4, 2)
    window = opts.d(20, 8)
    preload = int(opts.d(80_000, 25_000))
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=4000)
    client = AsyncMongoClient(mongodb_url, serverSelectionTimeoutMS=10_000)
    db = client[f"{DB_PREFIX}_floor"]
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    try:
        await _setup_streams(js)
        await drop_databases(mongodb_url, DB_PREFIX)
        wl = Workload.default()
        log(f"floor: preloading {preload} report envelopes")
        t0 = time.monotonic()
        futs = []
        for n in range(preload):
            msg_id, body = wl.report_envelope(n, prefix="floor")
            futs.append(await js.publish_async(_subject(0), body, headers={"Nats-Msg-Id": msg_id}))
            if len(futs) >= 2000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
        log(f"floor: preloaded in {time.monotonic() - t0:.1f}s; running {HOPS} hops")
        done = [0] * HOPS
        tasks = [asyncio.create_task(_hop(i, js, db, stop, done)) for i in range(HOPS)]
        t_start = time.monotonic()
        await asyncio.sleep(warmup)
        c0, m0 = done[HOPS - 1], time.monotonic()
        samples = []
        while time.monotonic() - m0 < window:
            await asyncio.sleep(1.0)
            for t in tasks:
                if t.done() and t.exception():
                    raise t.exception()  # type: ignore[misc]
            samples.append((round(time.monotonic() - t_start, 1), done[HOPS - 1]))
            if done[0] >= preload:  # input exhausted: stop the window here
                break
        c1, m1 = done[HOPS - 1], time.monotonic()
        rate = (c1 - c0) / (m1 - m0)
        stored = await js.stream_info(_stream(HOPS))
        log(f"floor: {rate:,.0f} msgs/s end-to-end ({c1 - c0} in {m1 - m0:.1f}s)")
        return Row(
            "0 floor",
            "3-hop pipeline msgs/s (fetch 128 → insert_many → publish_async → ack)",
            round(rate, 1),
            "msgs/s",
            None,
            ratio_to_floor=1.0,
            note=f"one process; {c1 - c0} msgs completed hop 3 in {m1 - m0:.1f}s after {warmup:.0f}s warm-up",
            details={
                "window_s": round(m1 - m0, 2),
                "completed": c1 - c0,
                "preloaded": preload,
                "hop_done": done,
                "sink_stored": stored.state.messages,
                "samples": samples,
            },
        )
    except Exception as exc:
        return error_row("0 floor", "3-hop pipeline msgs/s", exc)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _teardown(js)
        await nc.close()
        try:
            await client.drop_database(f"{DB_PREFIX}_floor")
        finally:
            await client.close()
