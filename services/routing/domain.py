"""Routing's pure rules: the case state machine, the SLA clocks and the escalation ladder.

No I/O. Every rule takes a `Case` (mutated in place: callers pass a copy they may keep or
drop) and a `Ctx` (policy, directory index, workload, now) and returns the events to emit
as `(name, contract model)` pairs; a refusal raises `DomainError(code, message)` with
`not_found`, `invalid_state`, `not_allowed` or `invalid`.

States: `assigned` (waiting for acceptance) → `accepted` → `resolved` (waiting for 回访
feedback) → `closed`; `referred` (handed to a city department at the top of the ladder).
`paused_at` marks a paused case (both clocks stop); `mediation` marks an open mediation
dossier (the resolve clock stops).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.contract import case as ev
from shared.contract.common import Category, Handling, Level, Priority, Satisfaction, Scope
from shared.errors import DomainError
from shared.policy import Policy

from .directory import LEVEL_ROLE, DirectoryIndex, Place

Events = list[tuple[str, BaseModel]]

ASSIGNED, ACCEPTED, REFERRED, RESOLVED, CLOSED = "assigned", "accepted", "referred", "resolved", "closed"
ACTIVE = (ASSIGNED, ACCEPTED, REFERRED)  # open and with someone to work on it
SYSTEM = "system"
SEEN_KEEP = 32
LEVEL_ORDER = [Level.building, Level.grid, Level.community, Level.street]


@dataclass
class Workload:
    """Open cases per staff member (kept in memory; seeded from the store at start)."""

    counts: dict[str, int] = field(default_factory=dict)

    def pick(self, candidates: list[str]) -> str | None:
        if not candidates:
            return None
        return min(candidates, key=lambda s: (self.counts.get(s, 0), s))

    def move(self, old: str | None, new: str | None) -> None:
        if old == new:
            return
        if old is not None:
            self.counts[old] = max(0, self.counts.get(old, 0) - 1)
        if new is not None:
            self.counts[new] = self.counts.get(new, 0) + 1


@dataclass
class Ctx:
    policy: Policy
    index: DirectoryIndex
    workload: Workload
    now: datetime


@dataclass
class Case:
    id: str
    version: int
    category: str
    priority: str
    scope: dict[str, str | None]
    building: str | None
    located: bool
    state: str = ASSIGNED
    rev: int = 0  # document revision (the write guard); `version` counts events only
    handling: str = Handling.direct.value
    level: str = Level.community.value
    unit: str = ""
    assignee: str | None = None
    respond_by: datetime | None = None
    resolve_by: datetime | None = None
    respond_warn_at: datetime | None = None
    resolve_warn_at: datetime | None = None
    warned: list[str] = field(default_factory=list)
    overdue: list[str] = field(default_factory=list)
    accepted_at: datetime | None = None
    paused_at: datetime | None = None
    mediation: dict[str, Any] | None = None
    resolved_at: datetime | None = None
    feedback_by: datetime | None = None
    dissatisfied: int = 0
    department: str | None = None
    closed_reason: str | None = None
    duplicate_of: str | None = None
    opened_at: datetime | None = None
    seen: list[str] = field(default_factory=list)
    wake_at: datetime | None = None

    # -- persistence shape ---------------------------------------------------------------
    # Field by field rather than `dataclasses.asdict`/`copy.deepcopy`: those recurse into every
    # value and cost ~130 µs and ~50 µs a case, most of a timer batch's time in routing.
    def to_doc(self) -> dict[str, Any]:
        """The stored document. It shares this case's lists and dicts: encode it, don't keep it."""
        doc: dict[str, Any] = {"_id": self.id}
        for name in _STORED:
            doc[name] = getattr(self, name)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Case:
        data = {k: v for k, v in doc.items() if k != "_id"}
        return cls(id=doc["_id"], **data)

    def copy(self) -> Case:
        """A copy to change: every list and dict in it is its own."""
        new = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, list):
                setattr(new, name, [copy.deepcopy(v) if isinstance(v, list | dict) else v for v in value])
            elif isinstance(value, dict):
                setattr(new, name, copy.deepcopy(value))
        return new

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    @property
    def is_overdue(self) -> bool:
        return bool(self.overdue) and self.state in (ASSIGNED, ACCEPTED)

    def public_state(self) -> str:
        return "paused" if self.paused and self.state in (ASSIGNED, ACCEPTED) else self.state


_STORED = tuple(f.name for f in fields(Case) if f.name != "id")


# ---- helpers ---------------------------------------------------------------------------


def _common(case: Case, ctx: Ctx) -> dict[str, Any]:
    case.version += 1
    return {
        "case_id": case.id,
        "version": case.version,
        "category": case.category,
        "scope": Scope(**case.scope),
        "at": ctx.now,
    }


def _emit(events: Events, case: Case, ctx: Ctx, name: str, model: type[BaseModel], **fields: Any) -> None:
    events.append((name, model(**_common(case, ctx), **fields)))


def unit_for(level: Level, case: Case, ctx: Ctx) -> str | None:
    """The directory unit that handles a case at `level` (None if there is none)."""
    scope = case.scope
    if level == Level.building:
        return case.building
    if level == Level.grid:
        return scope.get("grid")
    if level == Level.community:
        return scope.get("community") or ctx.policy.triage_unit
    street = ctx.index.street_of(scope.get("community"))
    return street or ctx.policy.triage_unit


def _ladder(ctx: Ctx) -> list[Level]:
    return list(ctx.policy.ladder)


def start_level(start: Level, case: Case, ctx: Ctx) -> Level:
    """The category's start level, moved up the ladder while that level has no unit."""
    ladder = _ladder(ctx)
    rank = LEVEL_ORDER.index(start)
    candidates = [lv for lv in ladder if LEVEL_ORDER.index(lv) >= rank] or [ladder[-1]]
    if not case.located:  # unlocated: community-level triage at the earliest
        candidates = [lv for lv in candidates if LEVEL_ORDER.index(lv) >= LEVEL_ORDER.index(Level.community)] or [
            ladder[-1]
        ]
    for level in candidates:
        if unit_for(level, case, ctx):
            return level
    return candidates[-1]


def next_level(case: Case, ctx: Ctx) -> Level | None:
    level: Level | None = Level(case.level)
    while True:
        level = ctx.policy.next_level(level)  # type: ignore[arg-type]
        if level is None or unit_for(level, case, ctx):
            return level


def _fresh_clocks(case: Case, ctx: Ctx, *, keep_resolve: bool = False) -> None:
    pair = ctx.policy.clock(Level(case.level), Priority(case.priority))
    f = ctx.policy.warning_fraction
    case.respond_by = ctx.now + pair.respond
    case.respond_warn_at = ctx.now + pair.respond * f
    case.overdue = [c for c in case.overdue if c == "resolve"] if keep_resolve else []
    case.warned = [c for c in case.warned if c == "resolve"] if keep_resolve else []
    if not keep_resolve:
        case.resolve_by = ctx.now + pair.resolve
        case.resolve_warn_at = ctx.now + pair.resolve * f


def _assign(
    case: Case,
    level: Level,
    reason: ev.AssignReason,
    ctx: Ctx,
    events: Events,
    *,
    assignee: str | None = None,
    keep_assignee: bool = False,
    keep_resolve: bool = False,
) -> None:
    unit = unit_for(level, case, ctx) or ctx.policy.triage_unit
    if assignee is None:
        role = LEVEL_ROLE[level]
        staff = ctx.index.staff_of(role, unit)
        if keep_assignee and case.assignee in staff:
            assignee = case.assignee
        else:
            assignee = ctx.workload.pick(staff)
    case.level, case.unit, case.assignee = level.value, unit, assignee
    case.state = ASSIGNED
    case.accepted_at = None
    case.paused_at = None
    case.mediation = None
    case.department = None
    _fresh_clocks(case, ctx, keep_resolve=keep_resolve)
    _emit(
        events,
        case,
        ctx,
        "assigned",
        ev.CaseAssigned,
        level=level,
        unit=unit,
        assignee=assignee,
        handling=case.handling,
        respond_by=case.respond_by,
        resolve_by=case.resolve_by,
        reason=reason,
    )


def _escalate(case: Case, reason: ev.EscalationReason, ctx: Ctx, events: Events) -> bool:
    """One step up the ladder: `escalated` + `assigned` (fresh clocks). False at the top."""
    to = next_level(case, ctx)
    if to is None:
        return False
    _emit(events, case, ctx, "escalated", ev.CaseEscalated, from_level=case.level, to_level=to, reason=reason)
    if reason == ev.EscalationReason.dispatch_unfilled:
        case.handling = Handling.direct.value
    if case.handling == Handling.mediation.value and to == Level.street:
        case.handling = Handling.direct.value
    _assign(case, to, ev.AssignReason.escalated, ctx, events)
    return True


def at_top(case: Case, ctx: Ctx) -> bool:
    return next_level(case, ctx) is None


def _resolve_deadline(case: Case, now: datetime) -> datetime | None:
    """The resolve deadline as it stands now, counting a running pause or mediation."""
    if case.resolve_by is None:
        return None
    stopped = case.paused_at or (case.mediation or {}).get("since")
    return case.resolve_by + (now - stopped) if stopped else case.resolve_by


def _resolve(case: Case, by: str, summary: str, ctx: Ctx, events: Events) -> None:
    deadline = _resolve_deadline(case, ctx.now)
    on_time = deadline is None or ctx.now <= deadline
    case.state = RESOLVED
    case.paused_at = None
    case.mediation = None
    case.resolved_at = ctx.now
    case.feedback_by = ctx.now + ctx.policy.feedback_window
    _emit(events, case, ctx, "resolved", ev.CaseResolved, level=case.level, by=by, summary=summary, on_time=on_time)


def _close(case: Case, reason: ev.CloseReason, ctx: Ctx, events: Events) -> None:
    case.state = CLOSED
    case.closed_reason = reason.value
    case.paused_at = None
    case.mediation = None
    _emit(events, case, ctx, "closed", ev.CaseClosed, reason=reason)


def wake_at(case: Case) -> datetime | None:
    """The earliest moment a timer must look at this case again (None: nothing pending)."""
    if case.state == RESOLVED:
        return case.feedback_by
    if case.state not in (ASSIGNED, ACCEPTED) or case.paused:
        return None
    times: list[datetime | None] = []
    if case.state == ASSIGNED and "respond" not in case.overdue:
        times.append(case.respond_by if "respond" in case.warned else case.respond_warn_at)
    if case.mediation is None and "resolve" not in case.overdue:
        times.append(case.resolve_by if "resolve" in case.warned else case.resolve_warn_at)
    present = [t for t in times if t is not None]
    return min(present) if present else None


def finish(case: Case) -> Case:
    case.wake_at = wake_at(case)
    case.rev += 1
    return case


# ---- opening a case ---------------------------------------------------------------------


def new_case(received: ev.CaseReceived, place: Place, ctx: Ctx) -> Case:
    rule = ctx.policy.rule(Category(received.category))
    urgent = received.priority == Priority.urgent or rule.priority == Priority.urgent
    return Case(
        id=received.case_id,
        version=received.version,
        category=Category(received.category).value,
        priority=(Priority.urgent if urgent else Priority.normal).value,
        scope={"district": place.district, "community": place.community, "grid": place.grid},
        building=place.building,
        located=place.located,
        handling=rule.handling.value,
        duplicate_of=received.duplicate_of,
        opened_at=ctx.now,
    )


def open_case(received: ev.CaseReceived, place: Place, ctx: Ctx) -> tuple[Case, Events]:
    """A new case: assigned by the category's rule, or closed as `merged` if it duplicates another."""
    case = new_case(received, place, ctx)
    events: Events = []
    if received.duplicate_of:
        _close(case, ev.CloseReason.merged, ctx, events)
        return finish(case), events
    rule = ctx.policy.rule(Category(received.category))
    level = start_level(rule.start, case, ctx)
    if case.handling == Handling.mediation.value and level == Level.street:
        case.handling = Handling.direct.value
    _assign(case, level, ev.AssignReason.new, ctx, events)
    return finish(case), events


def note_duplicate(original: Case, duplicate_id: str, ctx: Ctx) -> Events:
    events: Events = []
    _emit(events, original, ctx, "noted", ev.CaseNoted, by=SYSTEM, text=f"duplicate report {duplicate_id} merged into this case")
    finish(original)
    return events


# ---- commands --------------------------------------------------------------------------


def _authorise(case: Case, by: str, ctx: Ctx) -> None:
    if by == case.assignee or by in ctx.index.directors(case.scope.get("community") or ctx.policy.triage_unit):
        return
    raise DomainError("not_allowed", f"{by} is neither the case's assignee nor a community director of its community")


def _require(case: Case, states: tuple[str, ...], verb: str, *, unpaused: bool = False) -> None:
    if case.state not in states:
        raise DomainError("invalid_state", f"cannot {verb} a case that is {case.public_state()}")
    if unpaused and case.paused:
        raise DomainError("invalid_state", f"cannot {verb} a paused case; resume it first")


def command(case: Case, verb: str, cmd: Any, ctx: Ctx) -> Events:
    """Apply one case command (DESIGN §3); returns the events or raises `DomainError`."""
    handler = _COMMANDS.get(verb)
    if handler is None:
        raise DomainError("invalid", f"unknown command {verb!r}")
    if verb != "feedback":
        _authorise(case, cmd.by, ctx)
    events: Events = []
    handler(case, cmd, ctx, events)
    finish(case)
    return events


def _accept(case: Case, cmd: ev.AcceptCase, ctx: Ctx, events: Events) -> None:
    _require(case, (ASSIGNED,), "accept")
    if case.assignee is None:
        case.assignee = cmd.by
    case.state = ACCEPTED
    case.accepted_at = ctx.now
    _emit(events, case, ctx, "accepted", ev.CaseAccepted, by=cmd.by)


def _note(case: Case, cmd: ev.NoteCase, ctx: Ctx, events: Events) -> None:
    _require(case, (ASSIGNED, ACCEPTED, REFERRED, RESOLVED), "note")
    _emit(events, case, ctx, "noted", ev.CaseNoted, by=cmd.by, text=cmd.text)


def _pause(case: Case, cmd: ev.PauseCase, ctx: Ctx, events: Events) -> None:
    _require(case, (ASSIGNED, ACCEPTED), "pause", unpaused=True)
    case.paused_at = ctx.now
    _emit(events, case, ctx, "paused", ev.CasePaused, by=cmd.by, reason=cmd.reason)


def _resume(case: Case, cmd: ev.ResumeCase, ctx: Ctx, events: Events) -> None:
    if case.state not in (ASSIGNED, ACCEPTED) or not case.paused:
        raise DomainError("invalid_state", f"cannot resume a case that is {case.public_state()}")
    shift = ctx.now - case.paused_at  # type: ignore[operator]
    for name in ("respond_by", "resolve_by", "respond_warn_at", "resolve_warn_at"):
        value = getattr(case, name)
        if value is not None:
            setattr(case, name, value + shift)
    if case.mediation is not None and case.mediation.get("since") is not None:
        case.mediation["since"] = case.mediation["since"] + shift
    case.paused_at = None
    _emit(events, case, ctx, "resumed", ev.CaseResumed, by=cmd.by, reason=cmd.reason)


def _resolve_cmd(case: Case, cmd: ev.ResolveCase, ctx: Ctx, events: Events) -> None:
    _require(case, (ASSIGNED, ACCEPTED, REFERRED), "resolve")
    _resolve(case, cmd.by, cmd.summary, ctx, events)


def _escalate_cmd(case: Case, cmd: ev.EscalateCase, ctx: Ctx, events: Events) -> None:
    _require(case, (ASSIGNED, ACCEPTED), "escalate", unpaused=True)
    if not _escalate(case, ev.EscalationReason.requested, ctx, events):
        raise DomainError("invalid_state", "the case is at the top of the ladder; refer it to a department instead")


def _refer(case: Case, cmd: ev.ReferCase, ctx: Ctx, events: Events) -> None:
    _require(case, (ASSIGNED, ACCEPTED), "refer", unpaused=True)
    if not at_top(case, ctx):
        raise DomainError("invalid_state", f"only a case at the top of the ladder can be referred (it is at {case.level})")
    case.state = REFERRED
    case.department = cmd.department
    _emit(events, case, ctx, "referred", ev.CaseReferred, department=cmd.department, reason=cmd.reason)


def _feedback(case: Case, cmd: ev.RecordFeedback, ctx: Ctx, events: Events) -> None:
    _require(case, (RESOLVED,), "record feedback on")
    _emit(events, case, ctx, "feedback_recorded", ev.CaseFeedbackRecorded, satisfaction=cmd.satisfaction)
    if cmd.satisfaction != Satisfaction.dissatisfied:
        _close(case, ev.CloseReason.satisfied, ctx, events)
        return
    case.dissatisfied += 1
    case.resolved_at = case.feedback_by = None
    _emit(events, case, ctx, "reopened", ev.CaseReopened, reason="dissatisfied")
    if case.dissatisfied >= 2 and _escalate(case, ev.EscalationReason.dissatisfied, ctx, events):
        return
    _assign(case, Level(case.level), ev.AssignReason.reopened, ctx, events, keep_assignee=True)


def _reassign(case: Case, cmd: ev.ReassignCase, ctx: Ctx, events: Events) -> None:
    _require(case, (ASSIGNED, ACCEPTED), "reassign")
    if not ctx.index.is_active_staff(cmd.assignee):
        raise DomainError("invalid", f"{cmd.assignee} is not active staff in the directory")
    if cmd.assignee == case.assignee:
        raise DomainError("invalid_state", f"the case is already assigned to {cmd.assignee}")
    _assign(case, Level(case.level), ev.AssignReason.reassigned, ctx, events, assignee=cmd.assignee, keep_resolve=True)


def _withdraw(case: Case, cmd: ev.WithdrawCase, ctx: Ctx, events: Events) -> None:
    _require(case, (ASSIGNED, ACCEPTED, REFERRED, RESOLVED), "withdraw")
    _close(case, ev.CloseReason.withdrawn, ctx, events)


_COMMANDS = {
    "accept": _accept,
    "note": _note,
    "pause": _pause,
    "resume": _resume,
    "resolve": _resolve_cmd,
    "escalate": _escalate_cmd,
    "refer": _refer,
    "feedback": _feedback,
    "reassign": _reassign,
    "withdraw": _withdraw,
}


# ---- clocks ----------------------------------------------------------------------------


def on_timer(case: Case, ctx: Ctx) -> Events:
    """What is due now: a warning, an escalation, a top-of-ladder overdue flag, a feedback timeout."""
    now = ctx.now
    events: Events = []
    if case.state == RESOLVED:
        if case.feedback_by is not None and case.feedback_by <= now:
            _close(case, ev.CloseReason.feedback_timeout, ctx, events)
        finish(case)
        return events
    if case.state not in (ASSIGNED, ACCEPTED) or case.paused:
        finish(case)
        return events
    if case.state == ASSIGNED and "respond" not in case.overdue and case.respond_by is not None:
        if case.respond_by <= now:
            if _escalate(case, ev.EscalationReason.respond_overdue, ctx, events):
                finish(case)
                return events
            case.overdue.append("respond")
        elif "respond" not in case.warned and case.respond_warn_at is not None and case.respond_warn_at <= now:
            case.warned.append("respond")
            _emit(events, case, ctx, "sla_warning", ev.CaseSlaWarning, clock=ev.Clock.respond, due_at=case.respond_by)
    if case.mediation is None and "resolve" not in case.overdue and case.resolve_by is not None:
        if case.resolve_by <= now:
            if _escalate(case, ev.EscalationReason.resolve_overdue, ctx, events):
                finish(case)
                return events
            case.overdue.append("resolve")
        elif "resolve" not in case.warned and case.resolve_warn_at is not None and case.resolve_warn_at <= now:
            case.warned.append("resolve")
            _emit(events, case, ctx, "sla_warning", ev.CaseSlaWarning, clock=ev.Clock.resolve, due_at=case.resolve_by)
    finish(case)
    return events


# ---- outcomes from mediation and dispatch ------------------------------------------------


def seen(case: Case, event_id: str) -> bool:
    """True if this external event was already applied; otherwise remembers it."""
    if event_id in case.seen:
        return True
    case.seen = [*case.seen[-(SEEN_KEEP - 1) :], event_id]
    return False


def mediation_opened(case: Case, mediation_id: str, level: str, mediator: str | None, ctx: Ctx) -> Events:
    if case.state in (ASSIGNED, ACCEPTED) and level == case.level and case.mediation is None:
        case.mediation = {"id": mediation_id, "mediator": mediator, "since": ctx.now}
    finish(case)
    return []


def mediation_agreed(case: Case, mediation_id: str, level: str, ctx: Ctx) -> Events:
    events: Events = []
    if case.state in (ASSIGNED, ACCEPTED) and level == case.level:
        by = (case.mediation or {}).get("mediator") or "mediation"
        _resolve(case, by, "mediation agreement reached", ctx, events)
    finish(case)
    return events


def mediation_failed(case: Case, level: str, ctx: Ctx) -> Events:
    events: Events = []
    if case.state in (ASSIGNED, ACCEPTED) and level == case.level:
        if not _escalate(case, ev.EscalationReason.mediation_failed, ctx, events) and case.mediation:
            since = case.mediation.get("since")
            if since is not None and case.resolve_by is not None and not case.paused:
                case.resolve_by += ctx.now - since
                case.resolve_warn_at = (case.resolve_warn_at or case.resolve_by) + (ctx.now - since)
            case.mediation = None
    finish(case)
    return events


def dispatch_completed(case: Case, volunteer: str, ctx: Ctx) -> Events:
    events: Events = []
    if case.state in ACTIVE and case.handling == Handling.dispatch.value:
        _resolve(case, volunteer, "volunteer task completed", ctx, events)
    finish(case)
    return events


def dispatch_unfilled(case: Case, level: str, ctx: Ctx) -> Events:
    """A task found no volunteer: the case climbs, unless it has already left the level the
    task served (that level's task is being cancelled, the new level has a task of its own)."""
    events: Events = []
    if case.state in (ASSIGNED, ACCEPTED) and case.handling == Handling.dispatch.value and level == case.level:
        if not _escalate(case, ev.EscalationReason.dispatch_unfilled, ctx, events):
            case.handling = Handling.direct.value
            _assign(
                case, Level(case.level), ev.AssignReason.reassigned, ctx, events, keep_assignee=True, keep_resolve=True
            )
    finish(case)
    return events


def workload_key(case: Case | None) -> str | None:
    """Whose open-case count this case adds to."""
    return case.assignee if case is not None and case.state in ACTIVE else None


