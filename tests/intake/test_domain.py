"""Intake's pure rules: decoding, normalisation, idempotency key, linking, privacy of events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.intake import domain
from services.intake.privacy import Privacy, load_or_create_key
from shared.contract import subjects as s
from shared.contract.common import Scope
from shared.contract.envelope import Envelope
from shared.contract.intake import Report

pytestmark = pytest.mark.unit

REPORT = {
    "channel": "hotline_12345",
    "external_id": "ＨＬ－００１",
    "reported_at": "2026-11-30T08:00:00+08:00",
    "category": "facility.parking",
    "title": "  楼下乱停车  ",
    "location": {"community": "ｊｌ", "building": "JL-B1", "address": "胜利路３号 ２单元"},
    "reporter": {"name": "王小明", "phone": "１３９ ０００-１１１１", "anonymous": False},
    "parties": [{"role": "applicant", "name": "王小明", "language": "mn"}, {"role": "respondent", "phone": "13900002222"}],
}


def raw(data, subject=s.INTAKE_REPORT, **kw) -> bytes:
    return Envelope.new(subject, data, source="/tests", **kw).to_json()


def test_valid_report_is_normalised() -> None:
    parsed = domain.parse_report(raw(REPORT), s.INTAKE_REPORT)
    assert parsed.ok and parsed.reason is None
    r = parsed.report
    assert r.external_id == "HL-001"
    assert r.title == "楼下乱停车"
    assert r.location.community == "jl"
    assert r.reported_at == datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
    assert r.reported_at.utcoffset() == timedelta(0)
    assert domain.report_key(r.channel.value, r.external_id) == "hotline_12345:HL-001"


@pytest.mark.parametrize("category", [None, "", "nonsense", "dispute.unknown"])
def test_missing_or_unknown_category_is_other(category) -> None:
    data = {**REPORT, "category": category}
    if category is None:
        data.pop("category")
    parsed = domain.parse_report(raw(data), s.INTAKE_REPORT)
    assert parsed.ok and parsed.report.category.value == "other"


def test_undecodable_bytes() -> None:
    for body in (b"{not json", b"\xff\xfe", b"[1,2]", b"42"):
        parsed = domain.parse_report(body, s.INTAKE_REPORT)
        assert not parsed.ok and parsed.reason == "undecodable"
        assert parsed.errors[0].path == "(body)"


def test_invalid_report_errors_have_paths_and_no_values() -> None:
    bad = {**REPORT, "channel": "hotline_12345", "title": "", "reporter": {"phone": "call 王小明 now"}, "location": {}}
    parsed = domain.parse_report(raw(bad), s.INTAKE_REPORT)
    assert parsed.reason == "invalid"
    paths = {e.path for e in parsed.errors}
    assert {"data.title", "data.reporter.phone", "data.location"} <= paths
    text = json.dumps([e.model_dump() for e in parsed.errors], ensure_ascii=False)
    assert "王小明" not in text and "call" not in text
    assert parsed.channel == "hotline_12345" and parsed.external_id == "HL-001"


def test_unreadable_channel_is_not_echoed() -> None:
    parsed = domain.parse_report(raw({**REPORT, "channel": "fax 13900001111"}), s.INTAKE_REPORT)
    assert parsed.reason == "invalid" and parsed.channel is None and parsed.external_id == "HL-001"


def test_bad_envelope_and_wrong_type() -> None:
    parsed = domain.parse_report(json.dumps({"data": REPORT}).encode(), s.INTAKE_REPORT)
    assert parsed.reason == "envelope" and parsed.external_id == "HL-001"
    assert {"id", "source", "type", "time"} <= {e.path for e in parsed.errors}
    parsed = domain.parse_report(raw(REPORT, subject=s.INTAKE_SUBMIT), s.INTAKE_REPORT)
    assert parsed.reason == "envelope" and parsed.errors[0].path == "type"


def test_quarantine_id_is_stable_per_bytes() -> None:
    assert domain.quarantine_id(b"x") == domain.quarantine_id(b"x") != domain.quarantine_id(b"y")
    assert domain.quarantine_id(b"x", "E1", "a") == domain.quarantine_id(b"y", "E1", "a")
    assert domain.quarantine_id(b"x", "E1", "a") != domain.quarantine_id(b"x", "E1", "b")


def test_case_ids_are_opaque_sortable_and_unique() -> None:
    ids = [domain.new_case_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i.startswith("C-") and len(i) == 28 for i in ids)
    assert ids[0] <= ids[-1]


def test_link_key_building_then_address() -> None:
    r = Report.model_validate(REPORT)
    assert domain.link_key(r) == "b:jl-b1|facility.parking"
    no_building = Report.model_validate({**REPORT, "location": {"address": " 胜利路３号 ２单元 "}})
    same_place = Report.model_validate({**REPORT, "location": {"address": "胜利路3号2单元"}})
    assert domain.link_key(no_building) == domain.link_key(same_place) == "a:胜利路3号2单元|facility.parking"
    only_grid = Report.model_validate({**REPORT, "location": {"grid": "g1"}})
    assert domain.link_key(only_grid) is None


def test_duplicate_of_earliest_open_case_in_window() -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    cands = [
        domain.OpenCase("C-2", now - timedelta(hours=2)),
        domain.OpenCase("C-1", now - timedelta(hours=5)),
        domain.OpenCase("C-0", now - timedelta(hours=25)),
    ]
    assert domain.duplicate_of(cands, now) == "C-1"
    assert domain.duplicate_of(cands[2:], now) is None
    assert domain.duplicate_of([], now) is None


def test_received_event_carries_no_personal_data() -> None:
    r = Report.model_validate(REPORT)
    ev = domain.case_received(r, case_id="C-01ABC", at=datetime.now(UTC), scope=Scope(community="jl"), duplicate_of=None)
    text = ev.model_dump_json()
    assert "王小明" not in text and "13900001111" not in text and "reporter" not in text
    assert [p.model_dump(mode="json") for p in ev.parties] == [
        {"ref": "p1", "role": "applicant", "language": "mn"},
        {"ref": "p2", "role": "respondent", "language": None},
    ]
    assert ev.version == 1 and ev.located is False


def test_scope_from_directory() -> None:
    view = domain.DirectoryView(version=1, districts={"jl": "linhe"}, grid_community={"g1": "jl"})
    r = Report.model_validate({**REPORT, "location": {"grid": "g1"}})
    assert domain.scope_of(r, view) == Scope(district="linhe", community="jl", grid="g1")
    r = Report.model_validate({**REPORT, "location": {"address": "somewhere"}})
    assert domain.scope_of(r, view) == Scope()


def test_contact_and_phones() -> None:
    r = Report.model_validate(REPORT)
    contact = domain.contact_of(r)
    assert contact["reporter"] == {"anonymous": False, "name": "王小明", "phone": "1390001111"}
    assert domain.phones_of(contact) == ["1390001111", "13900002222"]
    anon = domain.contact_of(Report.model_validate({**REPORT, "reporter": {"name": "x", "phone": "123", "anonymous": True}}))
    assert anon["reporter"] == {"anonymous": True, "name": None, "phone": None}
    assert domain.canonical_phone("+86 (139) 0000-1111") == "+8613900001111"


def test_contact_access_rule() -> None:
    decide = domain.may_see_contact
    assert decide(case_known=True, assignee="s1", community="jl", requested_by="s1", directors=()).granted
    assert decide(case_known=True, assignee="s1", community="jl", requested_by="d1", directors={"d1"}).reason == "community_director"
    assert not decide(case_known=True, assignee="s1", community="jl", requested_by="s2", directors={"d1"}).granted
    assert not decide(case_known=True, assignee=None, community=None, requested_by="d1", directors={"d1"}).granted
    assert decide(case_known=False, assignee=None, community=None, requested_by="s1", directors=()).reason == "unknown_case"


def test_privacy_round_trip_and_match_hash(tmp_path) -> None:
    key = load_or_create_key(tmp_path)
    assert (tmp_path / "intake.key").stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path) == key
    p = Privacy(key)
    token = p.seal({"phone": "13900001111"})
    assert "13900001111" not in token and p.open(token) == {"phone": "13900001111"}
    assert p.match_hash("139 0000 1111") == p.match_hash("１３９００００１１１１") != p.match_hash("13900001112")
    assert Privacy(load_or_create_key(tmp_path / "other")).match_hash("13900001111") != p.match_hash("13900001111")
    assert p.open_bytes(p.seal_bytes(b"raw")) == b"raw"

