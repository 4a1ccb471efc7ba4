"""Wiring of the stats service: subscribers, query endpoint, HTTP routes, due clocks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shared.app import Runtime, route
from shared.batching import OFF_PATH_BATCH
from shared.contract import subjects as s
from shared.contract.envelope import Envelope, RawEvent
from shared.contract.stats import KpiQuery
from shared.logs import log
from shared.timers import DuePoller

from .engine import StatsEngine
from .handlers import Handlers, static
from .metrics import Metrics
from .store import FACTS, StatsStore

logger = logging.getLogger("gridcase.stats")

SUBJECTS = ("gridcase.case.>", "gridcase.mediation.>", "gridcase.dispatch.>", s.DIRECTORY_CHANGED)
REBUILD_WATCH_S = 2.0


def engine_of(rt: Runtime) -> StatsEngine:
    """The running projector of a stats runtime (tests, bench)."""
    return rt.stats  # type: ignore[attr-defined,no-any-return]


def register(rt: Runtime) -> None:
    store = StatsStore(rt.db)
    StatsStore.declare(rt.indexes)
    engine = StatsEngine(store, rt.tz, Metrics(rt.registry))
    handlers = Handlers(engine)
    rt.stats = engine  # type: ignore[attr-defined]

    for subject in SUBJECTS:

        @rt.messaging.consume_each(subject, dict[str, Any], batch=OFF_PATH_BATCH)
        async def on_event(body: RawEvent) -> None:
            await handlers.on_event(body)

    @rt.messaging.serve(s.STATS_QUERY)
    async def on_query(body: Envelope[KpiQuery]) -> dict:
        return await handlers.on_query(body)

    rt.routes += [
        ("/api/kpis", route(handlers.http_kpis)),
        ("/api/recent", route(handlers.http_recent)),
        ("/api/overview", route(handlers.http_overview)),
        ("/dashboard", route(static("index.html"))),
        ("/dashboard/", route(static("index.html"))),
        ("/dashboard/app.js", route(static("app.js"))),
        ("/dashboard/style.css", route(static("style.css"))),
    ]

    rt.on_start.append(engine.load)
    rt.on_stop.append(handlers.coalescer.drain)
    poller = DuePoller(rt.db[FACTS], engine.on_due, interval=max(rt.settings.timer_poll_s, 0.25))
    rt.background.append(poller.run_forever)

    async def watch_rebuilds() -> None:
        """`gridcase stats rebuild` bumps the generation: reload the rebuilt projections."""
        while True:
            await asyncio.sleep(REBUILD_WATCH_S)
            try:
                if await engine.reload_if_rebuilt():
                    log(logger, logging.INFO, "projections reloaded after rebuild", generation=engine.generation)
            except Exception as exc:
                log(logger, logging.WARNING, "rebuild watch failed", error=type(exc).__name__)

    rt.background.append(watch_rebuilds)
