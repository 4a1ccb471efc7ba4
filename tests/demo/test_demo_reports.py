"""The simulator without a broker: report and volunteer generation, and how it runs and stops its actions (issue 8)."""

from __future__ import annotations

import asyncio
import gc
import random
from collections import Counter
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from demo.simulator import (
    Draw,
    ReportFactory,
    SimStats,
    _Simulation,
    load_directory,
    make_volunteers,
)
from shared.contract.common import Category, Channel
from shared.contract.dispatch import Volunteer
from shared.contract.intake import Report

pytestmark = pytest.mark.unit

FIXED = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def directory():
    return load_directory()


def draws(directory, seed: int, n: int) -> list[Draw]:
    factory = ReportFactory(directory, random.Random(seed), run_tag="t", clock=lambda: FIXED)
    return [factory.next() for _ in range(n)]


def test_reports_validate_and_cover_channels_and_categories(directory) -> None:
    channels: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for draw in draws(directory, 7, 2000):
        kinds[draw.kind] += 1
        if draw.kind == "invalid":
            with pytest.raises(ValidationError):
                Report.model_validate(draw.data)
            continue
        report = Report.model_validate(draw.data)
        channels[report.channel] += 1
        categories[report.category] += 1
        assert report.external_id.startswith("sim-t-")
        if report.category.value.startswith("dispute."):
            assert len(report.parties) >= 2
            assert {p.role for p in report.parties} == {"applicant", "respondent"}
        if report.category.value.startswith("help."):
            assert report.needs is not None and report.needs.skills
            assert 1 <= report.needs.people <= 3
        if not report.reporter.anonymous:
            assert report.reporter.name and "虚构" in report.reporter.name
            assert report.reporter.phone and report.reporter.phone.startswith("1380000")
        for p in report.parties:
            assert p.name is None or "虚构" in p.name
    assert set(channels) == set(Channel)
    assert set(categories) == set(Category)
    assert 20 <= kinds["repeat"] <= 110  # ~3 %
    assert 5 <= kinds["invalid"] <= 45  # ~1 %


def test_mixes_look_realistic(directory) -> None:
    reports = [Report.model_validate(d.data) for d in draws(directory, 3, 2000) if d.kind == "new"]
    langs = Counter(p.language for r in reports for p in r.parties)
    assert langs["mn"] > 0 and langs["zh"] > langs["mn"]
    micro = [r for r in reports if r.channel == Channel.micro_wish]
    # ~1 % of platforms send no category: intake makes it `other`
    assert all(r.category.value.startswith("help.") or r.category == "other" for r in micro)
    hazards = [r for r in reports if r.category == Category.safety_hazard]
    assert sum(r.priority == "urgent" for r in hazards) > len(hazards) / 2
    shapes = Counter(
        tuple(k for k, v in r.location.model_dump().items() if v is not None) for r in reports
    )
    for shape in [("building",), ("grid",), ("address",), ("community",)]:
        assert shapes[shape] > 0
    codes = {b.code for b in directory.buildings} | {g.code for g in directory.grids}
    codes |= {c.code for c in directory.communities}
    for r in reports:
        for code in (r.location.building, r.location.grid, r.location.community):
            assert code is None or code in codes


def test_repeats_are_exact(directory) -> None:
    seen: dict[tuple, dict] = {}
    same_envelope = 0
    for draw in draws(directory, 11, 2000):
        if draw.kind == "new":
            assert draw.key not in seen
            seen[draw.key] = draw.data
        elif draw.kind == "repeat":
            assert seen[draw.key] == draw.data
            same_envelope += draw.same_envelope
    assert same_envelope > 0


def test_deterministic_for_a_seed(directory) -> None:
    a = draws(directory, 42, 300)
    b = draws(directory, 42, 300)
    c = draws(directory, 43, 300)
    assert a == b
    assert a != c


def test_volunteers_validate(directory) -> None:
    volunteers = make_volunteers(directory, random.Random(5))
    models = [Volunteer.model_validate(v) for v in volunteers]
    per_community = Counter(v.community for v in models)
    assert set(per_community) == {c.code for c in directory.communities}
    assert all(13 <= n <= 17 for n in per_community.values())
    assert {v.kind for v in models} == {"volunteer", "party_member", "partner_unit"}
    assert len({v.id for v in models}) == len(models)
    assert any("mn" in v.languages for v in models)
    assert all("虚构" in v.name for v in models)
    grids = {g.code: g.community for g in directory.grids}
    assert all(v.grid is None or grids[v.grid] == v.community for v in models)
    assert volunteers == make_volunteers(directory, random.Random(5))


def test_stats_are_counts_only() -> None:
    stats = SimStats()
    stats.events_seen["case.assigned"] += 2
    stats.commands_sent["case.accept"] += 1
    stats.commands_refused["not_assignee"] += 1
    d = stats.as_dict()
    assert d["commands"]["sent"] == 1 and d["commands"]["refused"] == 1
    assert d["events_seen"] == {"case.assigned": 2}
    assert "assigned=2" in stats.status_line()


async def test_stopping_cancels_actions_cleanly_and_failed_actions_are_counted(recwarn) -> None:
    """Actions cancelled at stop before they began are closed, not left 'never awaited' (the
    demo e2e run warned so), and an action that raises is counted, not lost."""

    class NoBroker:
        def jetstream(self) -> None:
            return None

    stats = SimStats()
    sim = _Simulation(NoBroker(), load_directory(), random.Random(1), 1.0, stats, "t")

    async def fails() -> None:
        raise RuntimeError("boom")

    async def waits() -> None:
        await asyncio.sleep(60)

    sim.spawn(fails())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    sim.spawn(waits())  # cancelled before its first step
    await sim.stop()
    for _ in range(3):  # the cancelled step runs and the loop lets go of it
        await asyncio.sleep(0)
    gc.collect()
    assert stats.handler_errors == 1 and stats.actions_cancelled == 1
    assert not sim.pending

    def never_awaited() -> list[str]:
        return [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]

    assert not never_awaited(), never_awaited()
    sim.spawn(waits())  # after stop: closed at once, never run
    gc.collect()
    assert not sim.pending and not never_awaited(), never_awaited()
