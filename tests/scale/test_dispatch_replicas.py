"""Dispatch replicas keep the volunteer registry in memory for matching. A registration is
answered by one replica (queue group); every other replica must know it at once, or the
tasks it opens meanwhile go `unfilled` for want of a volunteer (found by tests/scale)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from shared.contract import subjects as s

from ..support import command, connect, eventually, running, service_settings

pytestmark = pytest.mark.integration


def volunteer(vid: str, *, active: bool = True) -> dict:
    return {"id": vid, "name": "示例·志愿者（虚构）", "community": "c1", "grid": "c1-g1", "skills": ["elderly_care"], "active": active}


@pytest.mark.timeout(120)
async def test_every_dispatch_replica_hears_each_registration(nats_url: str, mongodb_url: str, db_prefix: str) -> None:
    nc = await connect(nats_url)
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(running("dispatch", service_settings("dispatch", nats_url, mongodb_url, db_prefix)))
            for _ in range(2)
        ]
        registries = [rt.dispatch.registry for rt in replicas]  # type: ignore[attr-defined]
        for i in range(4):
            reply = await command(nc, s.command("dispatch", "register_volunteer"), {"volunteer": volunteer(f"v-{i}")})
            assert reply["ok"], reply
        # far sooner than the registry refresh (60 s)
        await eventually(lambda: all(len(r) == 4 for r in registries), timeout=5, what="both replicas know every volunteer")
        assert all(r.available("c1", ["elderly_care"]) == {f"v-{i}" for i in range(4)} for r in registries)

        reply = await command(nc, s.command("dispatch", "register_volunteer"), {"volunteer": volunteer("v-0", active=False)})
        assert reply["ok"], reply
        await eventually(
            lambda: all("v-0" not in r.available("c1", ["elderly_care"]) for r in registries),
            timeout=5,
            what="both replicas know v-0 is inactive",
        )
    await nc.close()
