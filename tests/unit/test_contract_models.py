"""Every contract model round-trips through its envelope; bad values fail with a field path."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from shared.contract import subjects as s
from shared.contract.catalogue import (
    COMMANDS,
    EVENTS,
    UnknownType,
    is_newer_copy,
    model_for,
    parse_event,
    published_as,
)
from shared.contract.dispatch import TaskCompleted, TaskUnfilled, TaskUnfilledV2
from shared.contract.envelope import Envelope
from shared.contract.intake import Report
from shared.errors import field_errors

pytestmark = pytest.mark.unit

AT = "2026-11-30T08:00:00+08:00"
CASE = {"case_id": "C-01JABCDEF", "version": 2, "category": "facility.parking", "scope": {"district": "linhe", "community": "jianglin", "grid": "jianglin-g01"}, "at": AT}
MED = {"mediation_id": "M-01JABC", "case_id": "C-01JABCDEF", "level": "grid", "version": 1, "at": AT}
TASK = {"task_id": "T-01JABC", "case_id": "C-01JABCDEF", "version": 1, "at": AT}
REPORT = {
    "channel": "hotline_12345",
    "external_id": "12345-0001",
    "reported_at": AT,
    "category": "dispute.neighbour",
    "priority": "normal",
    "title": "楼上噪音",
    "description": "晚上十一点后仍有噪音",
    "location": {"community": "jianglin", "building": "jianglin-g01-b01", "address": "丽景苑3号楼"},
    "reporter": {"name": "测试居民", "phone": "13800000001", "anonymous": False},
    "parties": [{"role": "applicant", "language": "mn"}, {"role": "respondent"}],
    "needs": None,
}
DIRECTORY = {
    "districts": [{"code": "linhe", "name": "临河区"}],
    "streets": [{"code": "jinchuan", "name": "金川街道", "district": "linhe"}],
    "communities": [{"code": "jianglin", "name": "江林社区", "district": "linhe", "street": "jinchuan"}],
    "grids": [{"code": "jianglin-g01", "name": "一网格", "community": "jianglin"}],
    "buildings": [{"code": "jianglin-g01-b01", "grid": "jianglin-g01", "address": "丽景苑小区1号楼", "aliases": ["丽景苑1号楼"]}],
    "staff": [{"id": "s-1", "name": "示例·网格员（虚构）", "role": "grid_worker", "unit": "jianglin-g01", "languages": ["zh", "mn"]}],
}

SAMPLES: dict[str, dict[str, Any]] = {
    s.INTAKE_REPORT: REPORT,
    s.INTAKE_REJECTED: {"channel": "wechat", "external_id": "w-1", "errors": [{"path": "title", "message": "Field required"}], "quarantine_id": "Q-1", "at": AT},
    s.case_event("received"): {**CASE, "version": 1, "channel": "wechat", "external_id": "w-1", "priority": "normal", "title": "t", "description": "", "reported_at": AT, "location": {"grid": "jianglin-g01"}, "located": True, "duplicate_of": None, "parties": [{"ref": "p1", "role": "applicant", "language": "zh"}], "needs": {"skills": ["repair"], "people": 1}},
    s.case_event("assigned"): {**CASE, "level": "grid", "unit": "jianglin-g01", "assignee": "s-1", "handling": "direct", "respond_by": AT, "resolve_by": AT, "reason": "new"},
    s.case_event("accepted"): {**CASE, "by": "s-1"},
    s.case_event("noted"): {**CASE, "by": "s-1", "text": "已联系物业"},
    s.case_event("paused"): {**CASE, "by": "s-1", "reason": "等待维修配件"},
    s.case_event("resumed"): {**CASE, "by": "s-1", "reason": "配件到货"},
    s.case_event("sla_warning"): {**CASE, "clock": "respond", "due_at": AT},
    s.case_event("escalated"): {**CASE, "from_level": "grid", "to_level": "community", "reason": "respond_overdue"},
    s.case_event("resolved"): {**CASE, "level": "grid", "by": "s-1", "summary": "已处理", "on_time": True},
    s.case_event("feedback_recorded"): {**CASE, "satisfaction": "basically_satisfied"},
    s.case_event("reopened"): {**CASE, "reason": "dissatisfied"},
    s.case_event("referred"): {**CASE, "department": "市住建局", "reason": "超出社区职权"},
    s.case_event("closed"): {**CASE, "reason": "feedback_timeout"},
    s.mediation_event("opened"): {**MED, "mediator": "s-m1", "due_by": AT},
    s.mediation_event("mediator_assigned"): {**MED, "mediator": "s-m2"},
    s.mediation_event("consent_recorded"): {**MED, "party": "p1", "consented": True},
    s.mediation_event("session_recorded"): {**MED, "n": 1, "held_at": AT, "summary": "双方陈述", "attendees": ["applicant", "respondent"]},
    s.mediation_event("agreed"): {**MED, "terms": "晚十点后不再装修"},
    s.mediation_event("failed"): {**MED, "reason": "party_declined"},
    s.mediation_event("followed_up"): {**MED, "fulfilled": True},
    s.mediation_event("closed"): MED,
    s.dispatch_event("volunteer_registered"): {"volunteer": "v-1", "community": "jianglin", "grid": None, "skills": ["haircut"], "languages": ["mn"], "kind": "party_member", "max_tasks": 2, "active": True, "at": AT},
    s.dispatch_event("task_opened"): {**TASK, "skills": ["elderly_care"], "people": 2, "open_claim": False},
    s.dispatch_event("offered"): {**TASK, "volunteer": "v-1", "expires_at": AT},
    s.dispatch_event("accepted"): {**TASK, "volunteer": "v-1"},
    s.dispatch_event("declined"): {**TASK, "volunteer": "v-1"},
    s.dispatch_event("expired"): {**TASK, "volunteer": "v-1"},
    s.dispatch_event("completed"): {**TASK, "volunteer": "v-1", "hours": 1.5},
    s.dispatch_event("unfilled"): TASK,
    s.DISPATCH_UNFILLED_V2: {**TASK, "reason": "offers_exhausted", "level": "community"},
    s.dispatch_event("cancelled"): TASK,
    s.DIRECTORY_CHANGED: {**{k: v for k, v in DIRECTORY.items() if k != "staff"}, "version": 1, "staff": [{"id": "s-1", "role": "grid_worker", "unit": "jianglin-g01", "community": "jianglin", "languages": ["zh"]}], "counts": {"grids": 1}, "at": AT},
    # commands
    s.INTAKE_SUBMIT: REPORT,
    s.INTAKE_CONTACT: {"case_id": "C-01JABCDEF", "requested_by": "s-1", "purpose": "回访"},
    s.command("case", "accept"): {"case_id": "C-01JABCDEF", "by": "s-1"},
    s.command("case", "note"): {"case_id": "C-01JABCDEF", "by": "s-1", "text": "note"},
    s.command("case", "pause"): {"case_id": "C-01JABCDEF", "by": "s-1", "reason": "wait"},
    s.command("case", "resume"): {"case_id": "C-01JABCDEF", "by": "s-1"},
    s.command("case", "resolve"): {"case_id": "C-01JABCDEF", "by": "s-1", "summary": "done"},
    s.command("case", "escalate"): {"case_id": "C-01JABCDEF", "by": "s-1", "reason": "needs community"},
    s.command("case", "refer"): {"case_id": "C-01JABCDEF", "by": "s-1", "department": "市水务局", "reason": "管网"},
    s.command("case", "feedback"): {"case_id": "C-01JABCDEF", "by": "desk-12345", "satisfaction": "satisfied"},
    s.command("case", "reassign"): {"case_id": "C-01JABCDEF", "by": "s-d1", "assignee": "s-2"},
    s.command("case", "withdraw"): {"case_id": "C-01JABCDEF", "by": "s-1", "reason": "resident withdrew"},
    s.command("mediation", "assign_mediator"): {"mediation_id": "M-01JABC", "by": "s-d1", "mediator": "s-m1"},
    s.command("mediation", "record_consent"): {"mediation_id": "M-01JABC", "by": "s-m1", "party": "p2", "consented": False},
    s.command("mediation", "record_session"): {"mediation_id": "M-01JABC", "by": "s-m1", "held_at": AT, "attendees": ["applicant"], "summary": "s"},
    s.command("mediation", "record_agreement"): {"mediation_id": "M-01JABC", "by": "s-m1", "terms": "t"},
    s.command("mediation", "record_failure"): {"mediation_id": "M-01JABC", "by": "s-m1", "reason": "no_agreement"},
    s.command("mediation", "record_follow_up"): {"mediation_id": "M-01JABC", "by": "s-m1", "fulfilled": False},
    s.command("dispatch", "register_volunteer"): {"volunteer": {"id": "v-1", "name": "示例·志愿者（虚构）", "community": "jianglin", "grid": "jianglin-g01", "skills": ["repair"], "languages": ["zh"], "kind": "volunteer", "max_tasks": 2, "active": True}},
    s.command("dispatch", "respond"): {"task_id": "T-01JABC", "volunteer": "v-1", "answer": "decline"},
    s.command("dispatch", "claim"): {"task_id": "T-01JABC", "volunteer": "v-1"},
    s.command("dispatch", "complete"): {"task_id": "T-01JABC", "volunteer": "v-1", "hours": 2},
    s.DIRECTORY_LOAD: DIRECTORY,
    s.STATS_QUERY: {"from": "2026-11-01T00:00:00+08:00", "to": "2026-12-01T00:00:00+08:00", "scope": {"community": "jianglin"}, "group_by": ["grid", "day"]},
}


def test_samples_cover_the_whole_catalogue() -> None:
    assert set(SAMPLES) == set(EVENTS) | set(COMMANDS)


@pytest.mark.parametrize("subject", sorted(SAMPLES))
def test_round_trip_through_the_envelope(subject: str) -> None:
    model = model_for(subject)
    data = model.model_validate(SAMPLES[subject])
    env = Envelope.new(subject, data.model_dump(mode="json", by_alias=True), source="/tests", subject="C-01JABCDEF")
    wire = env.to_json()
    decoded_env, decoded = parse_event(wire)
    assert decoded_env.type == subject == decoded_env.model_dump()["type"]
    assert decoded_env.id == env.id and decoded_env.specversion == "1.0"
    assert decoded == data
    assert json.loads(wire)["datacontenttype"] == "application/json"


def test_unfilled_goes_out_as_v2_and_as_v1_beside_it() -> None:
    v2 = TaskUnfilledV2.model_validate(SAMPLES[s.DISPATCH_UNFILLED_V2])
    # the producer names the event by its v1 subject and emits the current model
    out = published_as(s.dispatch_event("unfilled"), v2)
    assert [subject for subject, _ in out] == [s.DISPATCH_UNFILLED_V2, s.dispatch_event("unfilled")]
    assert out[0][1] is v2
    v1 = out[1][1]
    assert type(v1) is TaskUnfilled and v1.model_dump() == {k: v for k, v in v2.model_dump().items() if k != "level"}
    for subject, data in out:  # each copy decodes as its own version
        _, decoded = parse_event(Envelope.new(subject, data.model_dump(mode="json"), source="/tests").to_json())
        assert decoded == data
    # a consumer of every version takes the fact from the v1 copy only
    assert is_newer_copy(s.DISPATCH_UNFILLED_V2) and not is_newer_copy(s.dispatch_event("unfilled"))
    # an event with one version goes out once; the wrong model for a subject is refused
    done = TaskCompleted.model_validate(SAMPLES[s.dispatch_event("completed")])
    assert published_as(s.dispatch_event("completed"), done) == [(s.dispatch_event("completed"), done)]
    with pytest.raises(TypeError):
        published_as(s.dispatch_event("unfilled"), TaskUnfilled.model_validate(TASK))


def test_timestamps_are_stored_as_utc() -> None:
    env = Envelope.new(s.INTAKE_REPORT, REPORT, source="/tests")
    _, report = parse_event(env.to_json())
    assert report.reported_at.utcoffset().total_seconds() == 0
    assert report.reported_at.hour == 0  # 08:00+08:00


BAD = [
    (s.INTAKE_REPORT, {"channel": "fax"}, "channel"),
    (s.INTAKE_REPORT, {"external_id": ""}, "external_id"),
    (s.INTAKE_REPORT, {"external_id": "x" * 129}, "external_id"),
    (s.INTAKE_REPORT, {"title": "x" * 201}, "title"),
    (s.INTAKE_REPORT, {"priority": "critical"}, "priority"),
    (s.INTAKE_REPORT, {"location": {}}, "location"),
    (s.INTAKE_REPORT, {"reported_at": "2026-11-30T08:00:00"}, "reported_at"),
    (s.INTAKE_REPORT, {"parties": [{"role": "witness"}]}, "parties.0.role"),
    (s.INTAKE_REPORT, {"parties": [{"role": "applicant", "language": "en"}]}, "parties.0.language"),
    (s.INTAKE_REPORT, {"needs": {"skills": [], "people": 0}}, "needs.people"),
    (s.INTAKE_REPORT, {"surprise": 1}, "surprise"),
    (s.case_event("assigned"), {"level": "city"}, "level"),
    (s.case_event("assigned"), {"handling": "ignore"}, "handling"),
    (s.case_event("escalated"), {"reason": "boredom"}, "reason"),
    (s.case_event("accepted"), {"version": 0}, "version"),
    (s.case_event("closed"), {"reason": "lost"}, "reason"),
    (s.case_event("feedback_recorded"), {"satisfaction": "meh"}, "satisfaction"),
    (s.command("case", "accept"), {"case_id": "12345"}, "case_id"),
    (s.command("case", "resolve"), {"summary": "   "}, "summary"),
    (s.mediation_event("failed"), {"reason": "rain"}, "reason"),
    (s.command("mediation", "record_consent"), {"party": "alice"}, "party"),
    (s.command("dispatch", "respond"), {"answer": "maybe"}, "answer"),
    (s.command("dispatch", "complete"), {"hours": -1}, "hours"),
    (s.command("dispatch", "register_volunteer"), {"volunteer": {"id": "v-1"}}, "volunteer.name"),
    (s.STATS_QUERY, {"group_by": ["ethnicity"]}, "group_by.0"),
    (s.STATS_QUERY, {"to": "2026-10-01T00:00:00+08:00"}, ""),
    (s.DIRECTORY_LOAD, {"staff": [{"id": "s", "name": "n", "role": "mayor", "unit": "u"}]}, "staff.0.role"),
]


@pytest.mark.parametrize(("subject", "change", "path"), BAD)
def test_bad_values_fail_with_a_field_path(subject: str, change: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as info:
        model_for(subject).model_validate({**SAMPLES[subject], **change})
    paths = [e["path"] for e in field_errors(info.value)]
    assert any(p.startswith(path) for p in paths), paths


def test_errors_never_echo_the_input() -> None:
    with pytest.raises(ValidationError) as info:
        Report.model_validate({**REPORT, "reporter": {"phone": "13800000001-not-a-phone!"}})
    assert "13800000001" not in json.dumps(field_errors(info.value), ensure_ascii=False)


def test_unknown_or_missing_category_becomes_other_and_codes_are_halfwidth() -> None:
    r = Report.model_validate({**REPORT, "category": "pets.barking", "external_id": "ＡＢ１２", "location": {"building": " ｊｌ－１ "}})
    assert r.category == "other"
    assert r.external_id == "AB12" and r.location.building == "jl-1"
    r2 = Report.model_validate({k: v for k, v in REPORT.items() if k != "category"})
    assert r2.category == "other"


def test_envelope_type_must_be_known() -> None:
    env = Envelope.new("gridcase.case.exploded.v1", {}, source="/tests")
    with pytest.raises(UnknownType):
        parse_event(env.to_json())
