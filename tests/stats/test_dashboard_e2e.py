"""The operator dashboard in headless Chromium (Debian package) driven by Playwright: it shows
the numbers of an independent computation over the scripted history; and a screenshot of it renders."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import async_playwright

from demo.screenshot import CHROMIUM, CHROMIUM_ARGS
from shared.contract import subjects as s
from shared.contract.directory import DirectoryChanged
from shared.contract.envelope import Envelope

from .conftest import StatsService, publish_all, wait_settled
from .history import GRIDS, build_history, expected_reply

pytestmark = pytest.mark.e2e

NAMES = {"jl": "金川社区", "hs": "和顺社区"}


def directory() -> Envelope:
    grids = [{"code": g, "name": f"第{i + 1}网格", "community": c} for c, gs in GRIDS.items() for i, g in enumerate(gs)]
    data = DirectoryChanged(
        version=1,
        districts=[{"code": "linhe", "name": "临河区"}],
        streets=[],
        communities=[{"code": c, "name": n, "district": "linhe"} for c, n in NAMES.items()],
        grids=grids,
        buildings=[],
        staff=[],
        counts={"communities": 2, "grids": len(grids)},
        at=datetime.now(UTC),
    )
    return Envelope.new(s.DIRECTORY_CHANGED, data.model_dump(mode="json"), source="/tests")


def chromium_installed() -> bool:
    return Path(CHROMIUM).exists()


def pct(v: float | None) -> str:
    return "—" if v is None else f"{math.floor(v * 1000 + 0.5) / 10:.1f}%"  # as the page rounds (half up)


def num(v: int | None) -> str:
    return "—" if v is None else str(v)


async def test_dashboard_shows_the_expected_numbers(stats_service: StatsService) -> None:
    assert chromium_installed(), "install Debian's chromium: apt-get install -y chromium"
    svc = stats_service
    now = datetime.now(UTC)
    history = build_history(500, seed=7, now=now)
    await publish_all(svc.js, [*history.envelopes, directory()], seed=3)
    await wait_settled(svc.js)
    async with httpx.AsyncClient(base_url=svc.url) as http:
        overview = (await http.get("/api/overview")).json()
    periods = {k: [datetime.fromisoformat(t) for t in v] for k, v in overview["periods"].items()}
    # the history is 0.3–6 days old: in the first hours of a month (Asia/Shanghai) "this month"
    # holds none of it, so the detailed checks use the period that holds the most
    busiest = max(periods, key=lambda p: len(expected_reply(history.expected, *periods[p], {}, ["grid"])["rows"]))

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # a browser far from the city: times must still read as the city's (Asia/Shanghai)
            page = await browser.new_page(viewport={"width": 1600, "height": 1400}, timezone_id="America/New_York")
            await page.goto(svc.url + "/dashboard")
            await page.wait_for_selector("body[data-loaded='1']", timeout=20_000)
            assert "金川社区" in await page.inner_text(f"#community-{busiest}")
            for period in ("today", "week", "month"):
                want = expected_reply(history.expected, *periods[period], {}, ["community"])
                for row in want["rows"]:
                    sel = f"#community-{period} tr[data-key='{row['key']['community']}']"
                    for field, fmt in (("received", num), ("response_rate", pct), ("resolution_rate", pct),
                                       ("satisfaction_rate", pct), ("in_grid_rate", pct),
                                       ("in_community_rate", pct), ("open", num), ("overdue", num)):
                        assert await page.inner_text(f"{sel} td[data-field='{field}']") == fmt(row[field]), (period, field)
            # grid table, ranking and escalations for that period
            await page.select_option("#period", busiest)
            # the label is e.g. "今日 Today" for "today" (the busiest period when all three hold as many grids)
            await page.wait_for_function(
                f"document.getElementById('grid-period-label').textContent.toLowerCase().includes('{busiest}')")
            want = expected_reply(history.expected, *periods[busiest], {}, ["grid"])
            await page.wait_for_selector(f"#grid-table tr[data-key='{want['rows'][0]['key']['grid']}']")
            for row in want["rows"]:
                sel = f"#grid-table tr[data-key='{row['key']['grid']}']"
                assert await page.inner_text(f"{sel} td[data-field='score']") == pct(row["score"])
                assert await page.inner_text(f"{sel} td[data-field='received']") == num(row["received"])
            ranked = [r["key"]["grid"] for r in sorted(
                (r for r in want["rows"] if r["key"]["grid"] is not None and not r["suppressed"] and r["score"] is not None),
                key=lambda r: -r["score"])]
            assert await page.eval_on_selector_all("#ranking li", "els => els.map(e => e.dataset.key)") == ranked
            summary = await page.inner_text("#summary [data-field='resolution_rate'] .value")
            assert summary == pct(want["totals"]["resolution_rate"])
            backlog_open = sum(c.open for c in history.expected if not c.excluded)
            shown = await page.eval_on_selector_all("#backlog td[data-field='open']", "els => els.map(e => +e.textContent)")
            assert sum(shown) == backlog_open
            assert len(await page.query_selector_all("#recent tr")) == 26  # header + 25 events
            assert (await page.inner_text("#clock")).endswith("(Asia/Shanghai)")
            async with httpx.AsyncClient(base_url=svc.url) as http:
                first = (await http.get("/api/recent")).json()["events"][0]
            at = datetime.fromisoformat(first["at"]).astimezone(ZoneInfo(overview["timezone"]))
            shown = await page.inner_text("#recent tr:nth-child(2) td:first-child")
            assert shown == f"{at.year}/{at.month}/{at.day} {at:%H:%M:%S}", (shown, first["at"])
            shot = await page.screenshot(full_page=True)
            assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
        finally:
            await browser.close()
