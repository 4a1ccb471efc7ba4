"""A service's stop is bounded: a shutdown step that hangs is cut short, and says so."""

from __future__ import annotations

import asyncio
import logging

from shared.app import _within


async def test_a_hanging_step_is_cut_short_with_a_warning(caplog) -> None:
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    with caplog.at_level(logging.WARNING, logger="gridcase.app"):
        await asyncio.wait_for(_within("stuck step", hangs(), timeout=0.05), timeout=2)
    assert started.is_set()
    assert [r.fields for r in caplog.records if r.getMessage() == "shutdown step cut short"] == [{"step": "stuck step", "after_s": 0.05}]


async def test_a_step_that_finishes_in_time_runs_to_its_end(caplog) -> None:
    done: list[int] = []

    async def quick() -> None:
        await asyncio.sleep(0)
        done.append(1)

    with caplog.at_level(logging.WARNING, logger="gridcase.app"):
        await _within("quick step", quick(), timeout=1)
    assert done == [1]
    assert not [r for r in caplog.records if "cut short" in r.getMessage()]
