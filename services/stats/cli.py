"""`gridcase stats …` tools.

  gridcase stats rebuild [--nats-url URL] [--mongodb-url URL] [--instance ID]

`rebuild` drops the stats projections (facts, cells, aux) and replays the case, mediation,
dispatch and directory streams from their first message (an ephemeral, unacknowledged pull
consumer per stream, deliver all) up to the last message present when it started, through
the same folding code as the live service. It then bumps the projection generation; a
running stats service notices within seconds and reloads. Events that arrive during the
rebuild are applied by the live service as usual (folding is idempotent).

Stats replicas are independent instances, each with a database of its own: `rebuild` targets
the instance named by `--instance` (default `GRIDCASE_INSTANCE`, as the service itself; empty:
the single, unsuffixed `gridcase_stats`). Rebuild each instance in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from shared.contract import subjects as s
from shared.contract.envelope import RawEvent
from shared.db import make_client
from shared.logs import log
from shared.settings import Settings

from .engine import StatsEngine, ingest
from .store import StatsStore

logger = logging.getLogger("gridcase.stats.cli")

REPLAY = ((s.CASES.name, "gridcase.case.>"), (s.MEDIATION.name, "gridcase.mediation.>"),
          (s.DISPATCH.name, "gridcase.dispatch.>"), (s.DIRECTORY.name, s.DIRECTORY_CHANGED))


async def stream_envelopes(js, stream: str, subject: str, *, batch: int = 1000) -> AsyncIterator[list[RawEvent]]:
    """Every message of `stream` on `subject`, from the start to the last one stored now."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return
    last = info.state.last_seq
    if info.state.messages == 0:
        return
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL,
            inactive_threshold=60,
            max_ack_pending=-1,
        ),
    )
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except nats.errors.TimeoutError:
                break
            out = []
            done = False
            for m in msgs:
                if m.metadata.sequence.stream > last:
                    done = True
                    break
                try:
                    out.append(RawEvent.model_validate_json(m.data))
                except ValueError:
                    log(logger, logging.WARNING, "skipped undecodable message", stream=stream, seq=m.metadata.sequence.stream)
            yield out
            if done or (msgs and msgs[-1].metadata.sequence.stream >= last):
                break
    finally:
        await sub.unsubscribe()


async def rebuild(settings: Settings) -> dict[str, int]:
    """Drop and replay; returns events read per stream."""
    mongo = make_client(settings.mongodb_url, app_name="gridcase-stats-rebuild")
    nc = await nats.connect(settings.nats_url)
    counts: dict[str, int] = {}
    try:
        store = StatsStore(mongo[settings.database_name("stats")])
        await store.drop_projections()
        engine = StatsEngine(store, ZoneInfo(settings.timezone), cache_size=10_000_000)
        await engine.load()  # empty: every case is new, no reads needed
        js = nc.jetstream()
        for stream, subject in REPLAY:
            n = 0
            async for envelopes in stream_envelopes(js, stream, subject):
                n += await ingest(engine, _valid(envelopes))
            counts[stream] = n
        await store.bump_generation()
    finally:
        await nc.close()
        await mongo.close()
    return counts


def _valid(envelopes: list[RawEvent]):
    from pydantic import ValidationError

    from shared.contract.catalogue import UnknownType

    from .engine import item_for

    for env in envelopes:
        try:
            item_for(env)  # the live consumer dead-letters these; the replay skips them
        except (ValidationError, UnknownType):
            log(logger, logging.WARNING, "skipped invalid event", type=env.type, id=env.id)
            continue
        yield env


def main(argv: list[str] | None = None) -> int:
    defaults = Settings(service="stats")
    parser = argparse.ArgumentParser(prog="gridcase stats", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    rb = sub.add_parser("rebuild", help="drop the projections and replay the streams from the start")
    rb.add_argument("--nats-url", default=defaults.nats_url)
    rb.add_argument("--mongodb-url", default=defaults.mongodb_url)
    rb.add_argument("--database-prefix", default=defaults.database_prefix)
    rb.add_argument("--instance", default=defaults.instance, help="the stats instance to rebuild (default: GRIDCASE_INSTANCE)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings(
        **{
            **defaults.model_dump(),
            "nats_url": args.nats_url,
            "mongodb_url": args.mongodb_url,
            "database_prefix": args.database_prefix,
            "instance": args.instance,  # validated like GRIDCASE_INSTANCE
        }
    )
    counts = asyncio.run(rebuild(settings))
    print(json.dumps({"ok": True, "database": settings.database_name("stats"), "replayed": counts}))
    return 0
