"""People's mediation (人民调解): the dossier (卷宗) state machine and the mediator choice.

Pure rules, no I/O. Every transition returns the new dossier and the events to emit (contract
models, named by their event: `opened`, `consent_recorded` …); a refusal raises
`DomainError(code, message)` and changes nothing.

States: `open` (consents, sessions) → `agreed` (agreement written, follow-up pending) →
`closed` (after the follow-up); `open` → `failed` (`party_declined`, `no_agreement`,
`overdue`); `open` → `closed` when the case closes or moves on without mediation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

from shared.contract.case import PartyRef
from shared.contract.common import ContractModel, Level
from shared.contract.mediation import (
    AssignMediator,
    ConsentRecorded,
    FailureReason,
    MediationAgreed,
    MediationClosed,
    MediationFailed,
    MediationFollowedUp,
    MediationOpened,
    MediatorAssigned,
    RecordAgreement,
    RecordConsent,
    RecordFailure,
    RecordFollowUp,
    RecordSession,
    SessionRecorded,
)
from shared.errors import DomainError

Emitted = tuple[str, ContractModel]  # (event name for subjects.mediation_event, payload)


class State(StrEnum):
    open = "open"
    agreed = "agreed"
    failed = "failed"
    closed = "closed"


class CloseReason(StrEnum):
    followed_up = "followed_up"
    case_closed = "case_closed"
    superseded = "superseded"  # the case moved to another level or another handling


# ---- mediators ------------------------------------------------------------------------


@dataclass(frozen=True)
class Mediator:
    id: str
    community: str
    languages: frozenset[str] = frozenset()


@dataclass(frozen=True)
class MediatorChoice:
    """Who mediates and why (`language`, `load`, `only`, `none`)."""

    mediator: str | None
    basis: str
    languages_covered: int = 0


def party_languages(parties: Iterable[PartyRef | Mapping[str, Any]]) -> frozenset[str]:
    out = set()
    for p in parties:
        lang = p.get("language") if isinstance(p, Mapping) else p.language
        if lang:
            out.add(str(lang))
    return frozenset(out)


def choose_mediator(
    candidates: Iterable[Mediator], languages: frozenset[str], load: Mapping[str, int]
) -> MediatorChoice:
    """The community mediator who speaks most of the parties' languages, then the fewest open
    dossiers, then the smallest id (deterministic)."""
    ranked = sorted(
        candidates, key=lambda m: (-len(m.languages & languages), load.get(m.id, 0), m.id)
    )
    if not ranked:
        return MediatorChoice(None, "none")
    best = ranked[0]
    covered = len(best.languages & languages)
    if len(ranked) == 1:
        basis = "only"
    elif covered > len(ranked[1].languages & languages):
        basis = "language"
    else:
        basis = "load"
    return MediatorChoice(best.id, basis, covered)


def mediation_id_for(case_id: str, level: str, case_version: int, at: datetime) -> str:
    """A ULID made deterministic from (case, level, assignment): redelivery opens nothing new."""
    digest = hashlib.sha256(f"{case_id}|{level}|{case_version}".encode()).digest()
    ms = int(at.timestamp() * 1000)
    return "M-" + str(ULID.from_bytes(ms.to_bytes(6, "big") + digest[:10]))


# ---- the dossier ----------------------------------------------------------------------


class Step(BaseModel):
    """One line of the paper file, in the order it happened."""

    model_config = ConfigDict(extra="ignore")

    at: datetime
    kind: str
    by: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class Session(BaseModel):
    n: int
    held_at: datetime
    attendees: list[str]
    summary: str
    by: str
    recorded_at: datetime


class Consent(BaseModel):
    consented: bool
    at: datetime
    by: str


class Dossier(BaseModel):
    """The whole mediation file as one document (`_id` = mediation_id)."""

    model_config = ConfigDict(extra="ignore", use_enum_values=True)

    mediation_id: str
    case_id: str
    level: Level
    community: str | None = None
    category: str | None = None
    assigned_version: int = 1  # the case.assigned version this dossier was opened for
    state: State = State.open
    version: int = 1
    mediator: str | None = None
    mediator_basis: str = "none"
    parties: list[dict[str, Any]] = Field(default_factory=list)  # {ref, role, language}
    parties_known: bool = False
    rights_notice: dict[str, Any] | None = None  # {given: True, at, by}
    consents: dict[str, Consent] = Field(default_factory=dict)
    sessions: list[Session] = Field(default_factory=list)
    agreement: dict[str, Any] | None = None  # {terms, at, by}
    failure: dict[str, Any] | None = None  # {reason, at, by}
    follow_up: dict[str, Any] | None = None  # {fulfilled, at, by}
    closed: dict[str, Any] | None = None  # {reason, at}
    opened_at: datetime
    due_by: datetime
    wake_at: datetime | None = None
    steps: list[Step] = Field(default_factory=list)

    # -- helpers --------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state == State.open

    @property
    def party_refs(self) -> list[str]:
        return [p["ref"] for p in self.parties]

    def all_consented(self) -> bool:
        refs = self.party_refs or list(self.consents)
        return bool(refs) and all(r in self.consents and self.consents[r].consented for r in refs)

    def days_to_agreement(self) -> float | None:
        if not self.agreement:
            return None
        return (self.agreement["at"] - self.opened_at).total_seconds() / 86400

    def _base(self, version: int, now: datetime) -> dict[str, Any]:
        return dict(
            mediation_id=self.mediation_id,
            case_id=self.case_id,
            level=self.level,
            version=version,
            at=now,
        )

    def _next(self, now: datetime, **changes: Any) -> Dossier:
        return self.model_copy(update=changes, deep=True)

    def _step(self, now: datetime, kind: str, by: str | None, **detail: Any) -> list[Step]:
        return [*self.steps, Step(at=now, kind=kind, by=by, detail=detail)]

    def _require_open(self, verb: str) -> None:
        if self.state != State.open:
            raise DomainError(
                "invalid_state", f"cannot {verb}: the mediation is {str(self.state)}, not open"
            )

    def _require_mediator(self, verb: str) -> None:
        if self.mediator is None:
            raise DomainError(
                "no_mediator", f"cannot {verb}: no mediator is assigned yet (assign_mediator first)"
            )

    def _authorise(self, by: str, directors: Iterable[str], verb: str) -> None:
        if by == self.mediator or by in set(directors):
            return
        who = f"mediator {self.mediator}" if self.mediator else "a community director"
        raise DomainError(
            "not_allowed", f"{by} may not {verb} on {self.mediation_id}: only {who} may"
        )

    def fail(self, now: datetime, reason: FailureReason, by: str | None) -> tuple[Dossier, list[Emitted]]:
        v = self.version + 1
        nxt = self._next(
            now,
            state=State.failed,
            version=v,
            failure={"reason": reason.value, "at": now, "by": by},
            wake_at=None,
            steps=self._step(now, "failed", by, reason=reason.value),
        )
        return nxt, [("failed", MediationFailed(**self._base(v, now), reason=reason))]


def open_dossier(
    *,
    case_id: str,
    level: Level,
    case_version: int,
    community: str | None,
    category: str | None,
    parties: list[dict[str, Any]] | None,
    choice: MediatorChoice,
    now: datetime,
    norm: timedelta,
    assigned_at: datetime,
) -> tuple[Dossier, list[Emitted]]:
    """A new dossier for a `case.assigned` with `handling: mediation`."""
    mid = mediation_id_for(case_id, str(level), case_version, assigned_at)
    due_by = now + norm
    steps = [
        Step(at=now, kind="opened", by=None, detail={"level": str(level), "due_by": due_by}),
    ]
    if choice.mediator:
        steps.append(Step(at=now, kind="mediator_assigned", by=None, detail={"mediator": choice.mediator, "basis": choice.basis}))
    d = Dossier(
        mediation_id=mid,
        case_id=case_id,
        level=level,
        community=community,
        category=category,
        assigned_version=case_version,
        mediator=choice.mediator,
        mediator_basis=choice.basis,
        parties=list(parties or []),
        parties_known=parties is not None,
        opened_at=now,
        due_by=due_by,
        wake_at=due_by,
        steps=steps,
    )
    event = MediationOpened(**d._base(1, now), mediator=choice.mediator, due_by=due_by)
    return d, [("opened", event)]


def learn_parties(
    d: Dossier,
    parties: list[dict[str, Any]],
    better: MediatorChoice | None,
    current_covered: int,
    now: datetime,
) -> tuple[Dossier, list[Emitted]]:
    """`case.received` arrived after the dossier opened: fill in the parties, and if nothing has
    happened yet and a mediator speaking more of their languages is available, hand it over.
    `current_covered` is how many of the parties' languages the current mediator speaks."""
    if d.parties_known:
        return d, []
    nxt = d._next(now, parties=list(parties), parties_known=True)
    untouched = d.is_open and not d.consents and not d.sessions
    if (
        untouched
        and better is not None
        and better.mediator
        and better.mediator != d.mediator
        and (d.mediator is None or better.languages_covered > current_covered)
    ):
        v = d.version + 1
        nxt = nxt._next(
            now,
            version=v,
            mediator=better.mediator,
            mediator_basis=better.basis,
            steps=nxt._step(now, "mediator_assigned", None, mediator=better.mediator, basis=better.basis),
        )
        return nxt, [("mediator_assigned", MediatorAssigned(**d._base(v, now), mediator=better.mediator))]
    return nxt, []


def auto_assign(d: Dossier, choice: MediatorChoice, now: datetime) -> tuple[Dossier, list[Emitted]]:
    """A mediator became available (directory change) for an open dossier without one."""
    if not d.is_open or d.mediator is not None or not choice.mediator:
        return d, []
    v = d.version + 1
    nxt = d._next(
        now,
        version=v,
        mediator=choice.mediator,
        mediator_basis=choice.basis,
        steps=d._step(now, "mediator_assigned", None, mediator=choice.mediator, basis=choice.basis),
    )
    return nxt, [("mediator_assigned", MediatorAssigned(**d._base(v, now), mediator=choice.mediator))]


def close_quietly(d: Dossier, now: datetime, reason: CloseReason) -> tuple[Dossier, list[Emitted]]:
    """The case closed or moved on: an open dossier is closed (agreed ones keep their follow-up)."""
    if not d.is_open:
        return d, []
    v = d.version + 1
    nxt = d._next(
        now,
        state=State.closed,
        version=v,
        closed={"reason": reason.value, "at": now},
        wake_at=None,
        steps=d._step(now, "closed", None, reason=reason.value),
    )
    return nxt, [("closed", MediationClosed(**d._base(v, now)))]


def on_due(d: Dossier, now: datetime) -> tuple[Dossier, list[Emitted]]:
    """The 30-day norm: a dossier still open at `due_by` fails as `overdue` (once)."""
    if d.is_open and now >= d.due_by:
        return d.fail(now, FailureReason.overdue, None)
    return d._next(now, wake_at=d.due_by if d.is_open else None), []


# ---- commands -------------------------------------------------------------------------


def assign_mediator(
    d: Dossier,
    cmd: AssignMediator,
    now: datetime,
    *,
    directors: Iterable[str],
    mediators: Iterable[Mediator],
) -> tuple[Dossier, list[Emitted]]:
    d._require_open("assign a mediator")
    directors = set(directors)
    self_claim = d.mediator is None and cmd.by == cmd.mediator
    if not self_claim:
        d._authorise(cmd.by, directors, "assign a mediator")
    known = {m.id: m for m in mediators}
    target = known.get(cmd.mediator)
    if target is None or (d.community and target.community != d.community):
        raise DomainError(
            "unknown_mediator",
            f"{cmd.mediator} is not an active mediator of community {d.community or '(unknown)'}",
        )
    if cmd.mediator == d.mediator:
        return d, []
    v = d.version + 1
    nxt = d._next(
        now,
        version=v,
        mediator=cmd.mediator,
        mediator_basis="assigned",
        steps=d._step(now, "mediator_assigned", cmd.by, mediator=cmd.mediator, basis="assigned"),
    )
    return nxt, [("mediator_assigned", MediatorAssigned(**d._base(v, now), mediator=cmd.mediator))]


def record_consent(
    d: Dossier, cmd: RecordConsent, now: datetime, *, directors: Iterable[str]
) -> tuple[Dossier, list[Emitted]]:
    d._require_open("record consent")
    d._require_mediator("record consent")
    d._authorise(cmd.by, directors, "record consent")
    if not d.parties_known:
        raise DomainError(
            "parties_unknown", "the parties of this case are not known yet (case.received pending); try again shortly"
        )
    refs = d.party_refs
    if refs and cmd.party not in refs:
        raise DomainError("unknown_party", f"{cmd.party} is not a party of this dispute (parties: {', '.join(refs)})")
    prior = d.consents.get(cmd.party)
    if prior is not None and prior.consented and cmd.consented:
        raise DomainError("already_recorded", f"{cmd.party} has already consented")
    if d.sessions and cmd.consented:
        raise DomainError("invalid_state", "consent is recorded before the first session")
    events: list[Emitted] = []
    steps = list(d.steps)
    v = d.version
    rights = d.rights_notice
    if rights is None:
        # Parties are told their rights (voluntariness, the right to refuse) before consenting.
        rights = {"given": True, "at": now, "by": cmd.by}
        steps.append(Step(at=now, kind="rights_notice", by=cmd.by, detail={"given": True}))
    v += 1
    consents = {**d.consents, cmd.party: Consent(consented=cmd.consented, at=now, by=cmd.by)}
    steps.append(Step(at=now, kind="consent", by=cmd.by, detail={"party": cmd.party, "consented": cmd.consented}))
    parties = list(d.parties)
    if not refs:  # a dispute reported without parties: the mediator names them as p1, p2 …
        parties.append({"ref": cmd.party, "role": None, "language": None})
    nxt = d._next(now, version=v, consents=consents, rights_notice=rights, steps=steps, parties=parties)
    events.append(("consent_recorded", ConsentRecorded(**d._base(v, now), party=cmd.party, consented=cmd.consented)))
    if not cmd.consented:  # mediation is voluntary: one refusal ends it
        nxt, failed = nxt.fail(now, FailureReason.party_declined, cmd.by)
        events.extend(failed)
    return nxt, events


def record_session(
    d: Dossier, cmd: RecordSession, now: datetime, *, directors: Iterable[str]
) -> tuple[Dossier, list[Emitted]]:
    d._require_open("record a session")
    d._require_mediator("record a session")
    d._authorise(cmd.by, directors, "record a session")
    _require_consents(d, "record a session")
    if cmd.held_at > now + timedelta(hours=1):
        raise DomainError("invalid_time", "held_at is in the future")
    if cmd.held_at < d.opened_at - timedelta(minutes=5):
        raise DomainError("invalid_time", "held_at is before the mediation was opened")
    n = len(d.sessions) + 1
    v = d.version + 1
    session = Session(
        n=n, held_at=cmd.held_at, attendees=list(cmd.attendees), summary=cmd.summary, by=cmd.by, recorded_at=now
    )
    nxt = d._next(
        now,
        version=v,
        sessions=[*d.sessions, session],
        steps=d._step(now, "session", cmd.by, n=n, held_at=cmd.held_at, attendees=list(cmd.attendees), summary=cmd.summary),
    )
    event = SessionRecorded(
        **d._base(v, now), n=n, held_at=cmd.held_at, summary=cmd.summary, attendees=list(cmd.attendees)
    )
    return nxt, [("session_recorded", event)]


def record_agreement(
    d: Dossier, cmd: RecordAgreement, now: datetime, *, directors: Iterable[str]
) -> tuple[Dossier, list[Emitted]]:
    d._require_open("record an agreement")
    d._require_mediator("record an agreement")
    d._authorise(cmd.by, directors, "record an agreement")
    _require_consents(d, "record an agreement")
    if not d.sessions:
        raise DomainError("no_session", "an agreement needs at least one recorded session")
    v = d.version + 1
    nxt = d._next(
        now,
        state=State.agreed,
        version=v,
        agreement={"terms": cmd.terms, "at": now, "by": cmd.by},
        wake_at=None,
        steps=d._step(now, "agreed", cmd.by, terms=cmd.terms),
    )
    return nxt, [("agreed", MediationAgreed(**d._base(v, now), terms=cmd.terms))]


def record_failure(
    d: Dossier, cmd: RecordFailure, now: datetime, *, directors: Iterable[str]
) -> tuple[Dossier, list[Emitted]]:
    d._require_open("record a failure")
    d._require_mediator("record a failure")
    d._authorise(cmd.by, directors, "record a failure")
    if cmd.reason == FailureReason.overdue:
        raise DomainError("invalid_reason", "overdue is decided by the 30-day norm, not recorded by hand")
    return d.fail(now, cmd.reason, cmd.by)


def record_follow_up(
    d: Dossier, cmd: RecordFollowUp, now: datetime, *, directors: Iterable[str]
) -> tuple[Dossier, list[Emitted]]:
    d._authorise(cmd.by, directors, "record a follow-up")
    if d.state != State.agreed:
        raise DomainError(
            "invalid_state", f"a follow-up is recorded only after an agreement; the mediation is {str(d.state)}"
        )
    v1, v2 = d.version + 1, d.version + 2
    steps = d._step(now, "followed_up", cmd.by, fulfilled=cmd.fulfilled)
    steps.append(Step(at=now, kind="closed", by=cmd.by, detail={"reason": CloseReason.followed_up.value}))
    nxt = d._next(
        now,
        state=State.closed,
        version=v2,
        follow_up={"fulfilled": cmd.fulfilled, "at": now, "by": cmd.by},
        closed={"reason": CloseReason.followed_up.value, "at": now},
        wake_at=None,
        steps=steps,
    )
    return nxt, [
        ("followed_up", MediationFollowedUp(**d._base(v1, now), fulfilled=cmd.fulfilled)),
        ("closed", MediationClosed(**d._base(v2, now))),
    ]


def _require_consents(d: Dossier, verb: str) -> None:
    if not d.parties_known:
        raise DomainError("parties_unknown", f"cannot {verb}: the parties are not known yet")
    refs = d.party_refs or list(d.consents)
    missing = [r for r in refs if r not in d.consents]
    if not refs or missing:
        raise DomainError(
            "consent_missing",
            f"cannot {verb}: every party must consent first (missing: {', '.join(missing) or 'all parties'})",
        )


COMMANDS = {
    "assign_mediator": assign_mediator,
    "record_consent": record_consent,
    "record_session": record_session,
    "record_agreement": record_agreement,
    "record_failure": record_failure,
    "record_follow_up": record_follow_up,
}


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---- what mediation knows about a case (from case events) -----------------------------


class CaseFile(BaseModel):
    """Parties and the newest assignment of a case, kept from `case.*` events."""

    model_config = ConfigDict(extra="ignore")

    case_id: str
    community: str | None = None
    category: str | None = None
    parties: list[dict[str, Any]] | None = None  # None until `case.received` arrives
    assigned_version: int = 0
    closed_version: int = 0
    rev: int = 0  # write guard of the document

    def newer_assignment(self, version: int) -> bool:
        """A `case.assigned` not seen before and not older than the newest one or the close."""
        return version > self.assigned_version and version > self.closed_version


def supersedes(d: Dossier, level: Level, handling_is_mediation: bool) -> bool:
    """A newer assignment elsewhere (another level or another handling) ends an open dossier."""
    return d.is_open and (level != d.level or not handling_is_mediation)
