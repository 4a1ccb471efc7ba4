"""The stats service served over real HTTP (uvicorn, in-process) against real servers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from shared.app import Runtime, build_app
from shared.contract.envelope import Envelope
from shared.settings import Settings

from ..support import connect, eventually, service_settings

DURABLES = (
    ("GRIDCASE_CASES", "stats-case-all"),
    ("GRIDCASE_MEDIATION", "stats-mediation-all"),
    ("GRIDCASE_DISPATCH", "stats-dispatch-all"),
    ("GRIDCASE_DIRECTORY", "stats-directory-changed"),
)


@dataclass
class StatsService:
    rt: Runtime
    url: str
    nc: Any
    settings: Settings

    @property
    def js(self):
        return self.nc.jetstream()


async def serve(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task, Runtime]:
    app, rt = build_app("stats", settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=settings.http_port, lifespan="on", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), timeout=30, what="stats HTTP server")
    assert not task.done(), "stats service failed to start"
    return server, task, rt


@pytest.fixture
async def stats_service(nats_url: str, mongodb_url: str, db_prefix: str):
    settings = service_settings("stats", nats_url, mongodb_url, db_prefix, timer_poll_s=0.25)
    nc = await connect(nats_url)
    server, task, rt = await serve(settings)
    try:
        yield StatsService(rt, f"http://127.0.0.1:{settings.http_port}", nc, settings)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        await nc.close()


async def publish_all(js, envelopes: Sequence[Envelope[Any]], *, seed: int = 1, msg_id_suffix: str = "") -> None:
    """Publish in a shuffled order (the projection must not care), pipelined."""
    order = list(envelopes)
    random.Random(seed).shuffle(order)
    for i in range(0, len(order), 500):
        futures = [
            await js.publish_async(e.type, e.to_json(), headers={"Nats-Msg-Id": e.id + msg_id_suffix})
            for e in order[i : i + 500]
        ]
        await asyncio.gather(*futures)


async def settled(js) -> bool:
    """Every stats durable has delivered and had acknowledged everything stored."""
    for stream, durable in DURABLES:
        try:
            info = await js.consumer_info(stream, durable)
        except Exception:
            return False
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def wait_settled(js, timeout: float = 90) -> None:
    await eventually(lambda: settled(js), timeout=timeout, interval=0.2, what="stats consumers caught up")
