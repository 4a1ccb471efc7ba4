"""Pure rules of the dossier (卷宗) and the mediator choice: no I/O."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from services.mediation import domain
from services.mediation.domain import CloseReason, Mediator, MediatorChoice, State
from services.mediation.export import render
from shared.contract.common import Level
from shared.contract.mediation import (
    AssignMediator,
    FailureReason,
    RecordAgreement,
    RecordConsent,
    RecordFailure,
    RecordFollowUp,
    RecordSession,
)
from shared.errors import DomainError

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
PARTIES = [
    {"ref": "p1", "role": "applicant", "language": "mn"},
    {"ref": "p2", "role": "respondent", "language": "zh"},
]


def dossier(parties=PARTIES, mediator="m1") -> domain.Dossier:
    d, events = domain.open_dossier(
        case_id="C-01ABC",
        level=Level.grid,
        case_version=2,
        community="jl",
        category="dispute.neighbour",
        parties=parties,
        choice=MediatorChoice(mediator, "only" if mediator else "none"),
        now=T0,
        norm=timedelta(days=30),
        assigned_at=T0,
    )
    assert [n for n, _ in events] == ["opened"]
    return d


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def consent(d, party, yes=True, by="m1", t=1):
    return domain.record_consent(d, RecordConsent(mediation_id=d.mediation_id, by=by, party=party, consented=yes), at(t), directors=["dir"])


def session(d, t=10, by="m1"):
    cmd = RecordSession(mediation_id=d.mediation_id, by=by, held_at=at(t), attendees=["applicant", "respondent"], summary="谈话")
    return domain.record_session(d, cmd, at(t + 1), directors=["dir"])


def agree(d, t=100):
    return domain.record_agreement(d, RecordAgreement(mediation_id=d.mediation_id, by="m1", terms="赔偿"), at(t), directors=["dir"])


def refused(code: str, fn, *args, **kw) -> str:
    with pytest.raises(DomainError) as exc:
        fn(*args, **kw)
    assert exc.value.code == code
    return exc.value.message


def test_mediation_id_is_deterministic_and_contract_shaped() -> None:
    a = domain.mediation_id_for("C-01ABC", "grid", 2, T0)
    assert a == domain.mediation_id_for("C-01ABC", "grid", 2, T0)
    assert a != domain.mediation_id_for("C-01ABC", "community", 4, T0)
    assert re.fullmatch(r"^M-[0-9A-Z]+$", a)


def test_choice_prefers_language_then_load_then_id() -> None:
    ms = [Mediator("b", "jl", frozenset({"zh"})), Mediator("a", "jl", frozenset({"zh"})), Mediator("c", "jl", frozenset({"zh", "mn"}))]
    assert domain.choose_mediator(ms, frozenset({"mn"}), {"c": 9}) == MediatorChoice("c", "language", 1)
    assert domain.choose_mediator(ms, frozenset({"zh"}), {"a": 2, "b": 1, "c": 1}).mediator == "b"
    assert domain.choose_mediator(ms, frozenset(), {}).mediator == "a"
    assert domain.choose_mediator([], frozenset({"mn"}), {}) == MediatorChoice(None, "none")


def test_full_path_numbers_sessions_and_closes_after_follow_up() -> None:
    d = dossier()
    assert d.state == State.open and d.wake_at == d.due_by == T0 + timedelta(days=30)
    d, ev = consent(d, "p1")
    assert [n for n, _ in ev] == ["consent_recorded"] and d.rights_notice["given"]
    d, _ = consent(d, "p2", t=2)
    d, ev = session(d)
    d, ev2 = session(d, t=20)
    assert ev[0][1].n == 1 and ev2[0][1].n == 2
    d, ev = agree(d, t=60 * 24 * 3)
    assert d.state == State.agreed and d.wake_at is None and ev[0][1].terms == "赔偿"
    assert d.days_to_agreement() == pytest.approx(3)
    d, ev = domain.record_follow_up(d, RecordFollowUp(mediation_id=d.mediation_id, by="m1", fulfilled=False), at(99999), directors=[])
    assert [n for n, _ in ev] == ["followed_up", "closed"] and d.state == State.closed
    assert [e.version for _, e in ev] == [d.version - 1, d.version]
    kinds = [s.kind for s in d.steps]
    assert kinds == ["opened", "mediator_assigned", "rights_notice", "consent", "consent", "session", "session", "agreed", "followed_up", "closed"]


def test_refusal_fails_with_party_declined() -> None:
    d, _ = consent(dossier(), "p1")
    d, ev = consent(d, "p2", yes=False)
    assert [n for n, _ in ev] == ["consent_recorded", "failed"]
    assert ev[1][1].reason == FailureReason.party_declined and d.state == State.failed and d.wake_at is None
    refused("invalid_state", consent, d, "p2")


def test_out_of_order_and_unauthorised_commands_are_refused() -> None:
    d = dossier()
    assert "p1, p2" in refused("consent_missing", session, d)
    refused("consent_missing", agree, d)
    d, _ = consent(d, "p1")
    assert "p2" in refused("consent_missing", agree, d)
    d, _ = consent(d, "p2")
    refused("no_session", agree, d)
    refused("not_allowed", consent, d, "p1", by="stranger")
    refused("unknown_party", consent, d, "p3")
    refused("already_recorded", consent, d, "p1")
    refused("invalid_state", domain.record_follow_up, d, RecordFollowUp(mediation_id=d.mediation_id, by="m1", fulfilled=True), at(5), directors=[])
    refused("invalid_reason", domain.record_failure, d, RecordFailure(mediation_id=d.mediation_id, by="m1", reason="overdue"), at(5), directors=[])
    d2, ev = session(d, by="dir")  # the community director may act
    assert ev
    d3, ev = domain.record_failure(d2, RecordFailure(mediation_id=d.mediation_id, by="m1"), at(50), directors=[])
    assert ev[0][1].reason == FailureReason.no_agreement


def test_without_mediator_or_parties() -> None:
    d = dossier(mediator=None)
    refused("no_mediator", consent, d, "p1")
    mediators = [Mediator("m2", "jl", frozenset({"mn"})), Mediator("mx", "other")]
    cmd = AssignMediator(mediation_id=d.mediation_id, by="m2", mediator="m2")  # self-claim
    d2, ev = domain.assign_mediator(d, cmd, at(1), directors=[], mediators=mediators)
    assert d2.mediator == "m2" and ev[0][1].mediator == "m2"
    bad = AssignMediator(mediation_id=d.mediation_id, by="dir", mediator="mx")
    refused("unknown_mediator", domain.assign_mediator, d, bad, at(1), directors=["dir"], mediators=mediators)
    other = AssignMediator(mediation_id=d.mediation_id, by="m9", mediator="m2")
    refused("not_allowed", domain.assign_mediator, d2, other, at(1), directors=["dir"], mediators=mediators)

    pending = dossier(parties=None)
    assert not pending.parties_known
    refused("parties_unknown", consent, pending, "p1")
    learnt, ev = domain.learn_parties(pending, PARTIES, MediatorChoice("m2", "language", 1), 0, at(1))
    assert learnt.parties_known and learnt.mediator == "m2" and ev[0][0] == "mediator_assigned"
    same, ev = domain.learn_parties(pending, PARTIES, MediatorChoice("m2", "language", 1), 1, at(1))
    assert same.mediator == "m1" and ev == []


def test_overdue_once_and_close_quietly() -> None:
    d = dossier()
    early, ev = domain.on_due(d, d.due_by - timedelta(seconds=1))
    assert ev == [] and early.wake_at == d.due_by
    failed, ev = domain.on_due(d, d.due_by)
    assert ev[0][1].reason == FailureReason.overdue and failed.wake_at is None
    again, ev = domain.on_due(failed, d.due_by + timedelta(days=1))
    assert ev == [] and again.wake_at is None
    closed, ev = domain.close_quietly(d, at(5), CloseReason.case_closed)
    assert closed.state == State.closed and [n for n, _ in ev] == ["closed"]
    assert domain.close_quietly(failed, at(5), CloseReason.case_closed)[1] == []


def test_export_lists_every_step_in_order() -> None:
    d, _ = consent(dossier(), "p1")
    d, _ = consent(d, "p2", t=2)
    d, _ = session(d)
    d, _ = agree(d)
    text = render(d, "Asia/Shanghai")
    assert text.startswith(f"# 人民调解卷宗 Mediation dossier {d.mediation_id}")
    assert "p1: 申请人 applicant; language 蒙古语 mn; consent 同意 consented" in text
    lines = [ln for ln in text.splitlines() if ln[:2] in {f"{i}." for i in range(1, 10)}]
    assert len(lines) == len(d.steps)
    assert "Session 1" in lines[5] and "Agreement: 赔偿" in lines[6]
    assert "2026-11-30 08:00 CST" in text  # local time of the city
