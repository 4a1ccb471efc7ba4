"""Dispatch domain rules: eligibility, ranking, and the task state machine (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.dispatch.domain import (
    Effect,
    Matcher,
    Need,
    OfferState,
    Registry,
    Task,
    TaskState,
    VolunteerState,
    needs_for,
)
from shared.errors import DomainError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
TTL = timedelta(minutes=30)


def vol(vid: str, community: str = "c1", grid: str | None = "g1", skills=("elderly_care",), languages=("zh",), max_tasks: int = 2, active: bool = True) -> VolunteerState:
    return VolunteerState(
        id=vid,
        community=community,
        grid=grid,
        skills=frozenset(skills),
        languages=frozenset(languages),
        kind="volunteer",
        max_tasks=max_tasks,
        active=active,
    )


def registry(*vols: VolunteerState) -> Registry:
    reg = Registry()
    for v in vols:
        reg.upsert(v)
    return reg


def task(category: str = "help.home_service", needs=None, languages=(), max_offers: int = 5, community: str = "c1") -> tuple[Task, list[str]]:
    t, out = Task.open(
        task_id="T-1",
        case_id="C-1",
        level="grid",
        category=category,
        community=community,
        grid="g1",
        needs=needs,
        languages=languages,
        now=NOW,
        max_offers=max_offers,
    )
    return t, out.names()


# ---- needs ----


def test_needs_default_from_category_and_override_from_report() -> None:
    assert needs_for("help.home_service", None) == (("elderly_care",), 1)
    assert needs_for("help.micro_wish", None) == ((), 1)
    assert needs_for("help.home_service", {"skills": ["medical", "medical"], "people": 3}) == (("medical",), 3)
    assert needs_for("help.home_service", {"skills": [], "people": 2}) == (("elderly_care",), 2)


# ---- eligibility ----


def test_eligibility_rules() -> None:
    reg = registry(
        vol("ok"),
        vol("inactive", active=False),
        vol("elsewhere", community="c2"),
        vol("no-skill", skills=("haircut",)),
        vol("full", max_tasks=1),
        vol("zero", max_tasks=0),
    )
    reg.apply([Effect("full", tasks=1)])
    m = Matcher(reg)
    need = Need("c1", "g1", ("elderly_care",))
    assert {v.id for v in m.eligible(need)} == {"ok"}
    assert m.why_not(reg.get("inactive"), need) == "volunteer_inactive"
    assert m.why_not(reg.get("elsewhere"), need) == "other_community"
    assert m.why_not(reg.get("no-skill"), need) == "missing_skill"
    assert m.why_not(reg.get("full"), need) == "at_capacity"
    assert m.why_not(None, need) == "unknown_volunteer"
    assert m.why_not(reg.get("ok"), need, exclude=["ok"]) == "already_offered"
    assert m.eligible(need, exclude=["ok"]) == []
    assert m.eligible(Need(None, None, ())) == []


def test_every_required_skill_is_needed_and_outstanding_offers_count_as_load() -> None:
    reg = registry(vol("both", skills=("medical", "driving")), vol("one", skills=("medical",)), vol("busy", skills=("medical", "driving"), max_tasks=1))
    reg.apply([Effect("busy", offers=1)])
    m = Matcher(reg)
    assert [v.id for v in m.eligible(Need("c1", None, ("medical", "driving")))] == ["both"]
    assert {v.id for v in m.eligible(Need("c1", None, ()))} == {"both", "one"}


def test_registry_update_moves_indexes_and_keeps_counters() -> None:
    reg = registry(vol("v1"))
    reg.get("v1").tasks = 1
    reg.upsert(vol("v1", community="c2", skills=("repair",)))
    assert reg.in_community("c1") == set()
    assert reg.in_community("c2", ["repair"]) == {"v1"}
    assert reg.in_community("c2", ["elderly_care"]) == frozenset()
    assert reg.get("v1").tasks == 1


# ---- ranking ----


def test_ranking_grid_then_language_then_fewest_recent_hours_then_id() -> None:
    reg = registry(
        vol("a-other-grid", grid="g2"),
        vol("b-mn-only", languages=("mn",)),
        vol("c-busy-hours"),
        vol("d-fresh"),
        vol("e-fresh"),
        vol("f-old-hours"),
    )
    reg.get("c-busy-hours").credit(NOW - timedelta(days=3), 5.0)
    reg.get("f-old-hours").credit(NOW - timedelta(days=45), 50.0)  # outside the 30-day window
    m = Matcher(reg)
    ranked = [v.id for v in m.rank(Need("c1", "g1", ("elderly_care",), frozenset({"zh"})), now=NOW)]
    assert ranked == ["d-fresh", "e-fresh", "f-old-hours", "c-busy-hours", "b-mn-only", "a-other-grid"]
    # resident languages unknown: language does not matter
    ranked = [v.id for v in m.rank(Need("c1", "g1", ("elderly_care",)), now=NOW)]
    assert ranked.index("b-mn-only") < ranked.index("c-busy-hours")
    assert m.best(Need("c1", "g1", ("elderly_care",), frozenset({"mn"})), now=NOW)[0].id == "b-mn-only"
    assert [v.id for v in m.best(Need("c1", "g1", ("elderly_care",)), now=NOW, k=2)] == ["b-mn-only", "d-fresh"]


def test_hours_window_cache_follows_new_credits_and_time() -> None:
    v = vol("v")
    v.credit(NOW - timedelta(days=29), 2.0)
    assert v.hours_recent(NOW) == 2.0
    v.credit(NOW, 1.5)
    assert v.hours_recent(NOW) == 3.5
    assert v.hours_recent(NOW + timedelta(days=2)) == 1.5


def test_matching_among_10k_volunteers_agrees_with_ranking_everyone() -> None:
    """The tiered index gives exactly the brute-force answer over all 10,000 of a community
    (its speed is measured in `make bench`, scenario 5)."""
    vols = [
        vol(f"v{i:05d}", grid=f"g{i % 40}", skills=("elderly_care", f"s{i % 7}"), languages=("zh",) if i % 3 else ("mn",),
            max_tasks=1 + i % 2, active=i % 17 != 0)
        for i in range(10_000)
    ]
    for i in range(0, 10_000, 5):
        vols[i].tasks = 1  # full when max_tasks is 1
    reg = registry(*vols)
    for i in range(0, 10_000, 3):
        reg.get(f"v{i:05d}").credit(NOW - timedelta(days=i % 40), float(i % 9))
    m = Matcher(reg)
    exclude = {"v00007", "v00047", "v00087"}
    for need in (
        Need("c1", "g7", ("elderly_care",), frozenset({"mn"})),
        Need("c1", "g3", ("elderly_care", "s4"), frozenset()),
        Need("c1", None, ("s2",), frozenset({"zh"})),
        Need("c1", "g99", (), frozenset({"mn"})),
    ):
        everyone = sorted((v for v in vols if m.why_not(v, need, exclude) is None), key=lambda v: m.rank_key(v, need, NOW))
        assert len(everyone) > 100
        assert [v.id for v in m.best(need, now=NOW, k=5, exclude=exclude)] == [v.id for v in everyone[:5]]
        assert [v.id for v in m.best(need, now=NOW, exclude=exclude)] == [everyone[0].id]


# ---- the task state machine ----


def test_offer_accept_complete() -> None:
    reg = registry(vol("v1"), vol("v2"))
    m = Matcher(reg)
    t, names = task()
    assert names == ["task_opened"] and t.skills == ("elderly_care",) and not t.open_claim
    out = t.offer_next(m, NOW, TTL)
    assert out.names() == ["offered"]
    offered = out.events[0][1]
    assert offered.volunteer == "v1" and offered.expires_at == NOW + TTL and offered.version == 2
    assert t.wake_at == NOW + TTL
    out = t.respond("v1", True, NOW + timedelta(minutes=5), m, TTL)
    assert out.names() == ["accepted"] and out.accept_delays == [300.0]
    assert t.state is TaskState.filled and t.wake_at is None
    with pytest.raises(DomainError) as e:
        t.complete("v2", 1.0, NOW)
    assert e.value.code == "not_assigned"
    out = t.complete("v1", 2.5, NOW + timedelta(hours=3))
    assert out.names() == ["completed"] and out.effects[0].hours == 2.5 and out.effects[0].tasks == -1
    assert t.state is TaskState.completed
    with pytest.raises(DomainError) as e:
        t.complete("v1", 1.0, NOW)
    assert e.value.code == "already_completed"


def test_decline_moves_to_next_and_max_offers_then_unfilled() -> None:
    reg = registry(*(vol(f"v{i}") for i in range(5)))
    m = Matcher(reg)
    t, _ = task(max_offers=3)
    t.offer_next(m, NOW, TTL)
    out = t.respond("v0", False, NOW, m, TTL)
    assert out.names() == ["declined", "offered"] and out.events[1][1].volunteer == "v1"
    with pytest.raises(DomainError) as e:
        t.respond("v0", True, NOW, m, TTL)
    assert e.value.code == "offer_declined"
    t.respond("v1", False, NOW, m, TTL)
    out = t.respond("v2", False, NOW, m, TTL)  # the third offer was the last one allowed
    assert out.names() == ["declined", "unfilled"] and out.events[1][1].reason == "offers_exhausted"
    assert t.state is TaskState.unfilled


def test_expiry_offers_the_next_candidate() -> None:
    reg = registry(vol("v1"), vol("v2"))
    m = Matcher(reg)
    t, _ = task()
    t.offer_next(m, NOW, TTL)
    assert t.expire(NOW + TTL - timedelta(seconds=1), m, TTL).events == []
    with pytest.raises(DomainError) as e:
        t.respond("v1", True, NOW + TTL, m, TTL)
    assert e.value.code == "offer_expired"
    out = t.expire(NOW + TTL, m, TTL)
    assert out.names() == ["expired", "offered"] and out.events[1][1].volunteer == "v2"
    out = t.expire(NOW + 2 * TTL, m, TTL)
    assert out.names() == ["expired", "unfilled"] and out.events[1][1].reason == "no_volunteer"


def test_nobody_eligible_is_unfilled_at_once() -> None:
    m = Matcher(registry(vol("v1", community="c2")))
    t, _ = task()
    assert t.offer_next(m, NOW, TTL).names() == ["unfilled"]


def test_three_people_keep_offering_until_three_accepted() -> None:
    reg = registry(*(vol(f"v{i}") for i in range(6)))
    m = Matcher(reg)
    t, _ = task(needs={"skills": ["elderly_care"], "people": 3})
    out = t.offer_next(m, NOW, TTL)
    assert [e.volunteer for _, e in out.events] == ["v0", "v1", "v2"]
    reg.apply(out.effects)
    t.respond("v0", True, NOW, m, TTL)
    out = t.respond("v1", False, NOW, m, TTL)
    assert out.names() == ["declined", "offered"] and out.events[1][1].volunteer == "v3"
    t.respond("v2", True, NOW, m, TTL)
    assert t.state is TaskState.open
    with pytest.raises(DomainError) as e:
        t.complete("v0", 1.0, NOW)
    assert e.value.code == "not_filled"
    t.respond("v3", True, NOW, m, TTL)
    assert t.state is TaskState.filled and t.places_left == 0
    assert t.complete("v0", 1.0, NOW).names() == ["completed"]
    assert t.state is TaskState.filled  # until everyone has completed
    t.complete("v2", 1.0, NOW)
    t.complete("v3", 1.0, NOW)
    assert t.state is TaskState.completed


def test_open_claim_first_wins() -> None:
    reg = registry(vol("v1", skills=()), vol("v2", skills=()), vol("far", community="c2"))
    m = Matcher(reg)
    t, names = task(category="help.micro_wish")
    assert t.open_claim and t.skills == ()
    assert t.offer_next(m, NOW, TTL).events == []  # never offered
    with pytest.raises(DomainError) as e:
        t.claim(reg.get("far"), NOW, m)
    assert e.value.code == "other_community"
    out = t.claim(reg.get("v1"), NOW + timedelta(seconds=30), m)
    assert out.names() == ["accepted"] and t.state is TaskState.filled
    with pytest.raises(DomainError) as e:
        t.claim(reg.get("v2"), NOW, m)
    assert e.value.code == "taken"
    with pytest.raises(DomainError) as e:
        t.respond("v2", True, NOW, m, TTL)
    assert e.value.code == "open_claim"


def test_cancel_withdraws_offers_and_releases_places() -> None:
    reg = registry(*(vol(f"v{i}") for i in range(3)))
    m = Matcher(reg)
    t, _ = task(needs={"people": 2})
    t.offer_next(m, NOW, TTL)
    t.respond("v0", True, NOW, m, TTL)
    out = t.cancel(NOW)
    assert out.names() == ["cancelled"]
    assert {(e.volunteer, e.offers, e.tasks) for e in out.effects} == {("v1", -1, 0), ("v0", 0, -1)}
    assert [o.state for o in t.offers] == [OfferState.released, OfferState.withdrawn]
    assert t.cancel(NOW).events == []
    with pytest.raises(DomainError) as e:
        t.respond("v1", True, NOW, m, TTL)
    assert e.value.code == "task_cancelled"


def test_task_document_round_trip() -> None:
    m = Matcher(registry(vol("v1")))
    t, _ = task(languages=("mn",))
    t.offer_next(m, NOW, TTL)
    doc = t.to_doc()
    back = Task.from_doc(doc)
    assert back.to_doc() == doc and doc["wake_at"] == NOW + TTL


def test_availability_follows_counters_profile_and_reset() -> None:
    reg = registry(vol("v1", max_tasks=1), vol("v2"))
    m = Matcher(reg)
    need = Need("c1", "g1", ("elderly_care",))
    reg.apply([Effect("v1", offers=1)])
    assert [v.id for v in m.eligible(need)] == ["v2"]
    reg.apply([Effect("v1", offers=1)], sign=-1)
    assert {v.id for v in m.eligible(need)} == {"v1", "v2"}
    reg.upsert(vol("v2", active=False))
    assert [v.id for v in m.eligible(need)] == ["v1"]
    again = vol("v1", max_tasks=1)
    again.tasks = 1
    reg.reset([again, vol("v3")])
    assert [v.id for v in m.eligible(need)] == ["v3"] and len(reg) == 2
    reg.credit([Effect("v3", hours=4.0, at=NOW)])
    assert reg.hours_key(NOW)["v3"] == (4.0, "v3")
