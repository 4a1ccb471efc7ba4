"""Routing integration fixtures: the service in-process with a seconds-scale policy and a loaded directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from shared.app import Runtime
from shared.contract import subjects as s

from ..support import command, connect, running, service_settings, stream_messages
from .helpers import build_directory, write_policy


@dataclass
class Env:
    rt: Runtime
    nc: Any

    @property
    def js(self):
        return self.nc.jetstream()

    async def cmd(self, verb: str, **data: Any) -> dict:
        return await command(self.nc, s.command("case", verb), data)

    async def events(self, case_id: str | None = None) -> list[tuple[str, dict, datetime]]:
        """(name, data, time stored in the stream) of routing's case events, optionally of one case."""
        out = []
        for m in await stream_messages(self.js, "GRIDCASE_CASES"):
            body = json.loads(m.data)
            data = body["data"]
            name = body["type"].split(".")[2]
            if name != "received" and (case_id is None or data["case_id"] == case_id):
                out.append((name, data, m.metadata.timestamp))
        return out

    async def names(self, case_id: str) -> list[str]:
        return [n for n, _, _ in await self.events(case_id)]


async def start_env(tmp_path: Path, nats_url: str, mongodb_url: str, db_prefix: str, *, directory: dict | None = None, policy: Path | None = None, **clocks: Any):
    settings = service_settings(
        "routing", nats_url, mongodb_url, db_prefix, policy_file=policy or write_policy(tmp_path, **clocks)
    )
    nc = await connect(nats_url)
    return settings, nc


@pytest.fixture
async def routing_env(tmp_path: Path, nats_url: str, mongodb_url: str, db_prefix: str):
    settings, nc = await start_env(tmp_path, nats_url, mongodb_url, db_prefix)
    async with running("routing", settings) as rt:
        reply = await command(nc, s.DIRECTORY_LOAD, build_directory(2, 3, 5))
        assert reply["ok"], reply
        yield Env(rt, nc)
    await nc.close()
