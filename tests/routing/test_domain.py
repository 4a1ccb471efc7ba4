"""Routing's pure rules: location, assignment, state machine, clocks, ladder (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.routing import domain
from services.routing.directory import DirectoryIndex, merge, normalise
from services.routing.domain import Case, Ctx, Workload
from shared.contract import case as ev
from shared.contract.directory import Directory
from shared.contract.intake import Location
from shared.errors import DomainError
from shared.policy import Policy

from .helpers import address, build_directory, received

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)


@pytest.fixture(scope="module")
def index() -> DirectoryIndex:
    return DirectoryIndex.build(Directory.model_validate(build_directory(2, 3, 4)), 1)


def policy(**over) -> Policy:
    clocks = {
        lv: {p: {"respond": "PT10S", "resolve": "PT100S"} for p in ("normal", "urgent")}
        for lv in ("building", "grid", "community", "street")
    }
    return Policy.model_validate({"clocks": clocks, "feedback_window": "PT50S", "triage_unit": "s1", **over})


def ctx(index: DirectoryIndex, now: datetime = T0, pol: Policy | None = None, wl: Workload | None = None) -> Ctx:
    return Ctx(pol or policy(), index, wl or Workload(), now)


def opened(index: DirectoryIndex, category: str = "facility.parking", **loc) -> tuple[Case, list]:
    data = received(category=category, **(loc or {"building": "c1-g01-b01"}))
    c = ctx(index)
    return domain.open_case(data, index.locate(data.location), c)


def names(events) -> list[str]:
    return [n for n, _ in events]


# ---- directory ---------------------------------------------------------------------------


def test_normalise_ignores_width_spaces_punctuation_and_chinese_numerals() -> None:
    assert normalise("金川社区 第１２片区，三号楼") == normalise("金川社区第十二片区3号楼") == "金川社区第12片区3号楼"
    assert normalise("二十三") == "23" and normalise("一百零五") == "105" and normalise("十") == "10"
    assert normalise("ＡＢ-12 栋") == "ab12栋"


def test_locate_by_building_grid_address_alias_community_and_nothing(index: DirectoryIndex) -> None:
    assert index.locate(Location(building="c2-g03-b04")).grid == "c2-g03"
    assert index.locate(Location(grid="c1-g02")).community == "c1"
    assert index.locate(Location(address=" " + address(2, 2, 3).replace("3", "三") + "。")).building == "c2-g02-b03"
    assert index.locate(Location(address="巴彦淖尔市临河区" + address(1, 3, 1))).building == "c1-g03-b01"
    assert index.locate(Location(address="金川社区二区四栋")).building == "c2-g02-b04"
    place = index.locate(Location(address="somewhere unknown", community="c2"))
    assert (place.community, place.grid, place.located) == ("c2", None, False)
    assert index.locate(Location(address="nowhere")).community is None


def test_directory_merge_refuses_dangling_refs_and_duplicates_naming_them() -> None:
    good = Directory.model_validate(build_directory(1, 1, 2))
    bad = build_directory(1, 1, 2)
    bad["grids"].append({"code": "gx", "name": "x", "community": "nope"})
    with pytest.raises(DomainError, match="grid gx: unknown community 'nope'"):
        merge(None, Directory.model_validate(bad))
    dup = build_directory(1, 1, 2)
    dup["buildings"].append(dict(dup["buildings"][0]))
    with pytest.raises(DomainError, match="buildings: duplicate code c1-g01-b01"):
        merge(None, Directory.model_validate(dup))
    staff = build_directory(1, 1, 2)
    staff["staff"].append({"id": "x", "name": "n", "role": "grid_worker", "unit": "c1"})
    with pytest.raises(DomainError, match="staff x: unknown unit"):
        merge(None, Directory.model_validate(staff))
    # an upsert may refer to what is already loaded
    more = Directory.model_validate({"buildings": [{"code": "new-b", "grid": "c1-g01", "address": "新地址1号"}]})
    merged = merge(good, more)
    assert len(merged.buildings) == 3 and len(merged.grids) == 1


# ---- assignment --------------------------------------------------------------------------


def test_assignment_by_category_level_and_fewest_open_cases(index: DirectoryIndex) -> None:
    wl = Workload({"gw-c1-g01-a": 3, "gw-c1-g01-b": 1})
    data = received(building="c1-g01-b02")
    case, events = domain.open_case(data, index.locate(data.location), ctx(index, wl=wl))
    (name, a), = events
    assert name == "assigned" and a.version == 2 and a.level == "grid" and a.unit == "c1-g01"
    assert a.assignee == "gw-c1-g01-b" and a.handling == "direct" and a.reason == "new"
    assert a.respond_by == T0 + 10 * S and a.resolve_by == T0 + 100 * S
    assert case.wake_at == T0 + 8 * S  # the respond warning at 80 %
    # mediation starts at grid; property disputes at the community
    _, ev2 = opened(index, "dispute.property", building="c1-g01-b01")
    assert ev2[0][1].level == "community" and ev2[0][1].handling == "mediation" and ev2[0][1].assignee == "dir-c1"
    # safety hazards are urgent by rule
    case3, _ = opened(index, "safety.hazard")
    assert case3.priority == "urgent"


def test_unlocated_goes_to_community_triage_or_policy_triage_unit(index: DirectoryIndex) -> None:
    _, events = opened(index, address="不存在的地址", community="c2")
    a = events[0][1]
    assert (a.level, a.unit, a.assignee, a.scope.grid) == ("community", "c2", "dir-c2", None)
    _, events = opened(index, address="不存在的地址")
    a = events[0][1]
    assert (a.level, a.unit, a.assignee) == ("community", "s1", None)


def test_duplicate_is_closed_merged(index: DirectoryIndex) -> None:
    data = received(duplicate_of="C-ORIGINAL", building="c1-g01-b01")
    case, events = domain.open_case(data, index.locate(data.location), ctx(index))
    assert names(events) == ["closed"] and events[0][1].reason == "merged" and case.state == "closed"
    assert case.wake_at is None


# ---- state machine -----------------------------------------------------------------------

ALL_STATES = ["assigned", "accepted", "paused", "referred", "resolved", "closed"]
ALLOWED = {
    "accept": {"assigned", "paused"},
    "note": {"assigned", "accepted", "paused", "referred", "resolved"},
    "pause": {"assigned", "accepted"},
    "resume": {"paused"},
    "resolve": {"assigned", "accepted", "paused", "referred"},
    "escalate": {"assigned", "accepted"},
    "refer": {"assigned", "accepted"},  # at the top of the ladder only
    "feedback": {"resolved"},
    "reassign": {"assigned", "accepted", "paused"},
    "withdraw": {"assigned", "accepted", "paused", "referred", "resolved"},
}
CMD = {
    "accept": ev.AcceptCase,
    "note": lambda **k: ev.NoteCase(text="n", **k),
    "pause": lambda **k: ev.PauseCase(reason="waiting", **k),
    "resume": ev.ResumeCase,
    "resolve": lambda **k: ev.ResolveCase(summary="done", **k),
    "escalate": lambda **k: ev.EscalateCase(reason="too big", **k),
    "refer": lambda **k: ev.ReferCase(department="城管局", reason="city matter", **k),
    "feedback": lambda **k: ev.RecordFeedback(satisfaction="satisfied", **k),
    "reassign": lambda **k: ev.ReassignCase(assignee="so-2", **k),
    "withdraw": lambda **k: ev.WithdrawCase(reason="resident withdrew", **k),
}


def case_in(state: str, index: DirectoryIndex, *, top: bool) -> Case:
    case, _ = opened(index, building="c1-g01-b01")
    c = ctx(index)
    if top:
        case.level, case.unit, case.assignee = "street", "s1", "so-1"
    by = case.assignee
    steps = {
        "assigned": [],
        "accepted": ["accept"],
        "paused": ["pause"],
        "referred": ["refer"],
        "resolved": ["resolve"],
        "closed": ["withdraw"],
    }[state]
    for verb in steps:
        domain.command(case, verb, CMD[verb](case_id=case.id, by=by), c)
    assert case.public_state() == state
    return case


@pytest.fixture(scope="module")
def index_with_spare() -> DirectoryIndex:
    d = build_directory(2, 3, 4)
    d["staff"].append({"id": "so-2", "name": "另一干部", "role": "street_officer", "unit": "s1"})
    return DirectoryIndex.build(Directory.model_validate(d), 1)


@pytest.mark.parametrize("verb", list(ALLOWED))
@pytest.mark.parametrize("state", ALL_STATES)
def test_every_transition_allowed_or_refused(verb: str, state: str, index_with_spare: DirectoryIndex) -> None:
    top = verb == "refer" or state == "referred"
    case = case_in(state, index_with_spare, top=top)
    before_version = case.version
    cmd = CMD[verb](case_id=case.id, by=case.assignee)
    if state in ALLOWED[verb]:
        events = domain.command(case, verb, cmd, ctx(index_with_spare, T0 + S))
        assert events and case.version == before_version + len(events)
        assert [e.version for _, e in events] == list(range(before_version + 1, case.version + 1))
    else:
        with pytest.raises(DomainError) as err:
            domain.command(case, verb, cmd, ctx(index_with_spare, T0 + S))
        assert err.value.code == "invalid_state" and case.version == before_version


def test_only_assignee_or_director_may_act_feedback_from_anyone(index: DirectoryIndex) -> None:
    case, _ = opened(index)
    with pytest.raises(DomainError) as err:
        domain.command(case, "accept", ev.AcceptCase(case_id=case.id, by="gw-c2-g01-a"), ctx(index))
    assert err.value.code == "not_allowed"
    with pytest.raises(DomainError):
        domain.command(case, "accept", ev.AcceptCase(case_id=case.id, by="dir-c2"), ctx(index))  # another community
    domain.command(case, "accept", ev.AcceptCase(case_id=case.id, by="dir-c1"), ctx(index))
    domain.command(case, "resolve", ev.ResolveCase(case_id=case.id, by="dir-c1", summary="ok"), ctx(index))
    events = domain.command(case, "feedback", ev.RecordFeedback(case_id=case.id, by="desk-1", satisfaction="basically_satisfied"), ctx(index))
    assert names(events) == ["feedback_recorded", "closed"] and events[1][1].reason == "satisfied"


def test_refer_and_escalate_depend_on_the_ladder(index: DirectoryIndex) -> None:
    case, _ = opened(index)
    with pytest.raises(DomainError, match="top of the ladder"):
        domain.command(case, "refer", CMD["refer"](case_id=case.id, by=case.assignee), ctx(index))
    levels = []
    while True:
        try:
            events = domain.command(case, "escalate", CMD["escalate"](case_id=case.id, by="dir-c1"), ctx(index))
        except DomainError as exc:
            assert exc.code == "invalid_state"
            break
        assert names(events) == ["escalated", "assigned"] and events[0][1].reason == "requested"
        levels.append(events[1][1].level)
    assert levels == ["community", "street"] and case.assignee == "so-1"
    events = domain.command(case, "refer", CMD["refer"](case_id=case.id, by="so-1"), ctx(index))
    assert names(events) == ["referred"] and case.wake_at is None


# ---- clocks ------------------------------------------------------------------------------


def run_timers(case: Case, index: DirectoryIndex, until: datetime, pol: Policy | None = None) -> list[tuple[datetime, str, object]]:
    out = []
    while case.wake_at is not None and case.wake_at <= until:
        now = case.wake_at
        for name, e in domain.on_timer(case, ctx(index, now, pol)):
            out.append((now, name, e))
    return out


def test_unaccepted_case_warns_then_escalates_up_to_the_top_then_is_flagged(index: DirectoryIndex) -> None:
    case, _ = opened(index)
    fired = run_timers(case, index, T0 + 1000 * S)
    seq = [(n, getattr(e, "reason", getattr(e, "clock", None))) for _, n, e in fired]
    assert seq == [
        ("sla_warning", "respond"),
        ("escalated", "respond_overdue"),
        ("assigned", "escalated"),
        ("sla_warning", "respond"),
        ("escalated", "respond_overdue"),
        ("assigned", "escalated"),
        ("sla_warning", "respond"),
        ("sla_warning", "resolve"),
    ]
    assert fired[1][0] == T0 + 10 * S and fired[4][0] == T0 + 20 * S
    assert case.level == "street" and case.overdue == ["respond", "resolve"] and case.is_overdue
    assert case.wake_at is None  # at the top: flagged, never escalated again


def test_accepted_case_escalates_on_resolve_by_and_resolved_never(index: DirectoryIndex) -> None:
    case, _ = opened(index)
    domain.command(case, "accept", ev.AcceptCase(case_id=case.id, by=case.assignee), ctx(index, T0 + S))
    fired = run_timers(case, index, T0 + 100 * S)
    assert [n for _, n, _ in fired] == ["sla_warning", "escalated", "assigned"]
    assert fired[1][0] == T0 + 100 * S and fired[1][2].reason == "resolve_overdue"
    other, _ = opened(index)
    domain.command(other, "resolve", ev.ResolveCase(case_id=other.id, by=other.assignee, summary="fixed"), ctx(index, T0 + S))
    fired = run_timers(other, index, T0 + 10_000 * S)
    assert [n for _, n, _ in fired] == ["closed"] and fired[0][2].reason == "feedback_timeout"
    assert fired[0][0] == T0 + 51 * S


def test_pause_stops_the_clocks_and_resume_shifts_them(index: DirectoryIndex) -> None:
    case, _ = opened(index)
    by = case.assignee
    domain.command(case, "pause", ev.PauseCase(case_id=case.id, by=by, reason="wait"), ctx(index, T0 + 5 * S))
    assert case.wake_at is None and run_timers(case, index, T0 + 1000 * S) == []
    domain.command(case, "resume", ev.ResumeCase(case_id=case.id, by=by), ctx(index, T0 + 65 * S))
    assert case.respond_by == T0 + 70 * S and case.resolve_by == T0 + 160 * S
    fired = run_timers(case, index, T0 + 70 * S)
    assert [n for _, n, _ in fired] == ["sla_warning", "escalated", "assigned"] and fired[1][0] == T0 + 70 * S


def test_stale_timer_does_nothing(index: DirectoryIndex) -> None:
    case, _ = opened(index)
    domain.command(case, "accept", ev.AcceptCase(case_id=case.id, by=case.assignee), ctx(index))
    assert domain.on_timer(case, ctx(index, T0 + 10 * S)) == []  # respond clock no longer runs


# ---- outcomes and follow-up ------------------------------------------------------------------


def test_mediation_pauses_resolve_clock_agreed_resolves_failed_escalates(index: DirectoryIndex) -> None:
    case, _ = opened(index, "dispute.neighbour")
    domain.command(case, "accept", ev.AcceptCase(case_id=case.id, by=case.assignee), ctx(index))
    domain.mediation_opened(case, "M-1", "grid", "med-c1", ctx(index, T0 + S))
    assert case.wake_at is None
    assert domain.mediation_agreed(case, "M-1", "community", ctx(index)) == []  # stale level
    events = domain.mediation_agreed(case, "M-1", "grid", ctx(index, T0 + 500 * S))
    assert names(events) == ["resolved"] and events[0][1].by == "med-c1" and events[0][1].on_time
    failing, _ = opened(index, "dispute.neighbour")
    events = domain.mediation_failed(failing, "grid", ctx(index))
    assert names(events) == ["escalated", "assigned"] and events[0][1].reason == "mediation_failed"
    assert events[1][1].handling == "mediation" and events[1][1].level == "community"
    events = domain.mediation_failed(failing, "community", ctx(index))
    assert events[1][1].level == "street" and events[1][1].handling == "direct"


def test_dispatch_outcomes(index: DirectoryIndex) -> None:
    case, _ = opened(index, "help.home_service")
    assert case.level == "grid"
    assert domain.dispatch_unfilled(case, "building", ctx(index)) == []  # a task of a level it has left
    events = domain.dispatch_unfilled(case, "grid", ctx(index))
    assert names(events) == ["escalated", "assigned"] and events[1][1].handling == "direct"
    assert domain.dispatch_completed(case, "v-1", ctx(index)) == []  # no longer a dispatch case
    other, _ = opened(index, "help.micro_wish")
    events = domain.dispatch_completed(other, "v-1", ctx(index))
    assert names(events) == ["resolved"] and events[0][1].by == "v-1"


def test_dissatisfied_reopens_then_escalates(index: DirectoryIndex) -> None:
    case, _ = opened(index)
    by = case.assignee
    c = ctx(index)
    domain.command(case, "resolve", ev.ResolveCase(case_id=case.id, by=by, summary="x"), c)
    events = domain.command(case, "feedback", ev.RecordFeedback(case_id=case.id, by="desk", satisfaction="dissatisfied"), c)
    assert names(events) == ["feedback_recorded", "reopened", "assigned"]
    assert events[2][1].reason == "reopened" and events[2][1].level == "grid" and events[2][1].assignee == by
    domain.command(case, "resolve", ev.ResolveCase(case_id=case.id, by=by, summary="x"), c)
    events = domain.command(case, "feedback", ev.RecordFeedback(case_id=case.id, by="desk", satisfaction="dissatisfied"), c)
    assert names(events) == ["feedback_recorded", "reopened", "escalated", "assigned"]
    assert events[2][1].reason == "dissatisfied" and events[3][1].level == "community"


def test_seen_drops_repeated_external_events(index: DirectoryIndex) -> None:
    case, _ = opened(index)
    assert not domain.seen(case, "e1") and domain.seen(case, "e1")


def test_a_copy_shares_no_list_or_dict_and_the_stored_document_round_trips(index: DirectoryIndex) -> None:
    case, _ = opened(index)
    case.warned.append("respond")
    case.mediation = {"id": "M-1", "parties": [{"ref": "p1"}]}
    doc = case.to_doc()
    assert doc["_id"] == case.id and "id" not in doc
    assert Case.from_doc(doc) == case
    twin = case.copy()
    assert twin == case
    twin.warned.append("resolve")
    twin.scope["grid"] = "elsewhere"
    twin.mediation["parties"][0]["ref"] = "p2"
    twin.seen.append("E-1")
    assert case.warned == ["respond"] and case.scope["grid"] != "elsewhere"
    assert case.mediation["parties"][0]["ref"] == "p1" and case.seen == []
