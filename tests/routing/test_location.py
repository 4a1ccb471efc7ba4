"""A directory of 4 communities × 11 grids × 30 buildings: 1,000 reports land on the right grid."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import pytest

from shared.contract import subjects as s

from ..support import command, eventually, running
from .conftest import Env, start_env
from .helpers import (
    COMMUNITY_NAMES,
    address,
    build_directory,
    chinese,
    publish_received,
    received,
    write_policy,
)

pytestmark = pytest.mark.integration

LONG = (3600, 7200)


def fullwidth(text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "0" <= ch <= "9" else ch for ch in text)


def report_for(rng: random.Random, i: int):
    c, g, b = rng.randint(1, 4), rng.randint(1, 11), rng.randint(1, 30)
    grid = f"c{c}-g{g:02d}"
    kind = i % 7
    if kind == 0:
        loc = {"building": f"{grid}-b{b:02d}"}
    elif kind == 1:
        loc = {"grid": grid, "community": f"c{c}"}
    elif kind == 2:
        loc = {"address": address(c, g, b)}
    elif kind == 3:
        loc = {"address": " " + fullwidth(address(c, g, b)).replace("片区", "片区， ") + "。"}
    elif kind == 4:
        loc = {"address": f"{COMMUNITY_NAMES[c - 1]}第{chinese(g)}片区{chinese(b)}号楼"}
    elif kind == 5:
        loc = {"address": f"{COMMUNITY_NAMES[c - 1]}{chinese(g)}区{chinese(b)}栋", "community": f"c{c}"}
    else:
        loc = {"address": unicodedata.normalize("NFC", "内蒙古巴彦淖尔市临河区" + address(c, g, b) + "2单元")}
    return received(**loc), grid


async def test_1000_reports_by_code_grid_and_address_land_on_the_right_grid(
    tmp_path: Path, nats_url: str, mongodb_url: str, db_prefix: str
) -> None:
    policy = write_policy(tmp_path, building=LONG, grid=LONG, community=LONG, street=LONG)
    settings, nc = await start_env(tmp_path, nats_url, mongodb_url, db_prefix, policy=policy)
    try:
        async with running("routing", settings) as rt:
            reply = await command(nc, s.DIRECTORY_LOAD, build_directory(4, 11, 30))
            assert reply["ok"] and reply["counts"]["buildings"] == 4 * 11 * 30, reply
            env = Env(rt, nc)
            rng = random.Random(7)
            expected: dict[str, str] = {}
            for i in range(1000):
                data, grid = report_for(rng, i)
                expected[data.case_id] = grid
                await publish_received(env.js, data)

            async def all_assigned():
                evs = [e for e in await env.events() if e[0] == "assigned"]
                return evs if len(evs) >= 1000 else None

            assigned = await eventually(all_assigned, timeout=60, interval=0.5, what="1,000 assigned")
            got = {d["case_id"]: d for _, d, _ in assigned}
            assert len(got) == 1000
            wrong = {cid: (d["scope"]["grid"], expected[cid]) for cid, d in got.items() if d["scope"]["grid"] != expected[cid]}
            assert wrong == {}
            assert all(d["level"] == "grid" and d["unit"] == expected[cid] for cid, d in got.items())
            assert all(d["assignee"].startswith(f"gw-{expected[cid]}-") for cid, d in got.items())
            # the workload is spread: both grid workers of a busy grid get cases
            counts = rt.routing.workload.counts
            assert sum(counts.values()) == 1000
    finally:
        await nc.close()
