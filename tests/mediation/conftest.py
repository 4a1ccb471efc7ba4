"""Fixtures for the mediation suite: a running service with a directory already known to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from shared.app import Runtime
from shared.contract import subjects as s
from shared.settings import Settings

from ..support import command, connect, eventually, running, service_settings
from .support import DIRECTOR, OTHER, directory, feed, staff

DEFAULT_STAFF = [
    staff("med-a", languages=("zh",)),
    staff("med-b", languages=("zh", "mn")),
    staff(DIRECTOR, role="community_director"),
    staff("med-x", community=OTHER, languages=("zh", "mn")),
]


@dataclass
class Harness:
    rt: Runtime
    nc: Any
    settings: Settings

    @property
    def js(self):
        return self.nc.jetstream()

    async def cmd(self, verb: str, id: str | None = None, **data: Any) -> dict:
        return await command(self.nc, s.command("mediation", verb), data, id=id)

    async def dossier(self, case_id: str, state: str | None = None) -> dict | None:
        q: dict[str, Any] = {"case_id": case_id}
        if state:
            q["state"] = state
        return await self.rt.db.dossiers.find_one(q)


async def load_directory(h: Harness, version: int, members) -> None:
    await feed(h.js, s.DIRECTORY_CHANGED, directory(version, members))
    await eventually(
        lambda: h.rt.db.directory.find_one({"_id": "current", "version": version}), what="directory stored"
    )


@pytest.fixture
def settings(nats_url: str, mongodb_url: str, db_prefix: str) -> Settings:
    return service_settings("mediation", nats_url, mongodb_url, db_prefix)


@pytest.fixture
async def nc(nats_url: str):
    conn = await connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def med(settings: Settings, nc) -> Harness:
    async with running("mediation", settings) as rt:
        h = Harness(rt, nc, settings)
        await load_directory(h, 1, DEFAULT_STAFF)
        yield h
