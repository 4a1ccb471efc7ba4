"""A scripted history of cases for the stats tests, with its expected facts written down
*independently* of the service's folding code (the script knows what it made happen)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from shared.contract import subjects as s
from shared.contract.case import (
    CaseAccepted,
    CaseAssigned,
    CaseClosed,
    CaseEscalated,
    CaseFeedbackRecorded,
    CaseNoted,
    CasePaused,
    CaseReceived,
    CaseReferred,
    CaseReopened,
    CaseResolved,
    CaseSlaWarning,
)
from shared.contract.dispatch import TaskCompleted, TaskOpened
from shared.contract.envelope import Envelope
from shared.contract.mediation import MediationAgreed, MediationFailed, MediationOpened

TZ = ZoneInfo("Asia/Shanghai")
DISTRICT = "linhe"
GRIDS = {"jl": ["jl-g1", "jl-g2", "jl-g3"], "hs": ["hs-g1", "hs-g2"]}
CHANNELS = ["hotline_12345", "wechat", "service_window", "grid_patrol", "mini_program"]
CATEGORIES = ["dispute.neighbour", "facility.parking", "environment.sanitation", "service.enrollment", "help.micro_wish"]
LADDER = ["building", "grid", "community", "street"]
SATISFACTION = ["satisfied", "basically_satisfied", "dissatisfied"]


@dataclass
class Expected:
    case_id: str
    received_at: datetime
    day: str
    dims: dict[str, Any]
    excluded: bool = False
    assigned: bool = False
    responded_on_time: bool = False
    resolved: bool = False
    resolved_on_time: bool = False
    resolved_level: str | None = None
    escalations: list[str] = field(default_factory=list)
    feedback: str | None = None
    open: bool = True
    overdue: bool = False


@dataclass
class History:
    envelopes: list[Envelope[Any]]
    expected: list[Expected]
    mediation: dict[str, int]
    hours: float


class CaseScript:
    def __init__(self, case_id: str, t0: datetime, scope: dict[str, Any], category: str) -> None:
        self.case_id, self.t0, self.scope, self.category = case_id, t0, scope, category
        self.version = 0
        self.events: list[Envelope[Any]] = []

    def emit(self, name: str, model: type, offset_s: float, **fields: Any) -> datetime:
        self.version += 1
        at = self.t0 + timedelta(seconds=offset_s)
        data = model(case_id=self.case_id, version=self.version, category=self.category, scope=self.scope, at=at, **fields)
        self.events.append(
            Envelope.new(s.case_event(name), data.model_dump(mode="json"), source="/tests/history", subject=self.case_id, time=at)
        )
        return at


def build_history(n_cases: int = 500, seed: int = 7, now: datetime | None = None) -> History:
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    envelopes: list[Envelope[Any]] = []
    expected: list[Expected] = []
    mediation = {"opened": 0, "agreed": 0, "failed": 0}
    hours = 0.0
    far = now + timedelta(days=3)
    for i in range(n_cases):
        community = "jl" if i % 5 < 3 else "hs"
        grid = rng.choice(GRIDS[community])
        scope = {"district": DISTRICT, "community": community, "grid": grid}
        category = rng.choice(CATEGORIES)
        channel = rng.choice(CHANNELS)
        t0 = now - timedelta(days=rng.uniform(0.3, 6.0))
        cid = f"C-{i:05d}"
        sc = CaseScript(cid, t0, scope, category)
        ex = Expected(cid, t0, t0.astimezone(TZ).date().isoformat(), {**scope, "category": category, "channel": channel, "level": None})
        sc.emit(
            "received", CaseReceived, 0, channel=channel, external_id=f"x-{i}", priority="normal", title="t",
            description="", reported_at=t0, location={"grid": grid}, located=True,
        )
        kind = rng.choices(
            ["merged", "withdrawn", "new", "waiting", "respond_overdue", "accepted_open", "paused",
             "escalated_open", "referred", "resolved"],
            [5, 5, 3, 7, 5, 10, 3, 7, 3, 52],
        )[0]
        if kind == "new":
            expected.append(ex)
            envelopes += sc.events
            continue
        level = rng.choice(["building", "grid", "community"])
        mostly_past = kind not in ("waiting",)
        respond_by = t0 + timedelta(hours=1) if mostly_past else far
        resolve_by = t0 + timedelta(hours=5) if kind != "accepted_open" or rng.random() < 0.5 else far
        sc.emit("assigned", CaseAssigned, 1, level=level, unit=grid, assignee="s-1", handling="direct",
                respond_by=respond_by, resolve_by=resolve_by, reason="new")
        ex.assigned, ex.dims["level"] = True, level
        first_respond_by = respond_by
        if rng.random() < 0.3:
            sc.emit("sla_warning", CaseSlaWarning, 2, clock="respond", due_at=respond_by)
        if kind in ("merged", "withdrawn"):
            sc.emit("closed", CaseClosed, 60, reason="merged" if kind == "merged" else "withdrawn")
            ex.excluded, ex.open = True, False
            expected.append(ex)
            envelopes += sc.events
            continue
        if kind == "waiting":
            expected.append(ex)
            envelopes += sc.events
            continue
        if kind == "respond_overdue":
            ex.overdue = True
            expected.append(ex)
            envelopes += sc.events
            continue
        # escalations before anyone accepts (respond clock ran out, or handed up)
        n_esc = 0
        if kind in ("escalated_open", "referred") or (kind == "resolved" and rng.random() < 0.3):
            n_esc = 1 if kind != "referred" else 3 - LADDER.index(level)
            n_esc = max(1, n_esc)
        accept_offset = rng.choice([600, 7200])  # on time (10 min) or late (2 h)
        t = 3700.0
        for _ in range(n_esc):
            if level == "street":
                break
            reason = rng.choice(["respond_overdue", "requested", "mediation_failed", "dispatch_unfilled"])
            new_level = LADDER[LADDER.index(level) + 1]
            sc.emit("escalated", CaseEscalated, t, from_level=level, to_level=new_level, reason=reason)
            ex.escalations.append(reason)
            level = new_level
            ex.dims["level"] = level
            resolve_by = (t0 + timedelta(seconds=t + 3 * 3600)) if kind == "resolved" else far
            sc.emit("assigned", CaseAssigned, t + 1, level=level, unit=grid, assignee="s-2", handling="direct",
                    respond_by=far if kind != "resolved" else t0 + timedelta(seconds=t + 3600),
                    resolve_by=resolve_by, reason="escalated")
            t += 60
            accept_offset = t + 30  # accepted after the first respond_by: late
        if kind == "referred":
            sc.emit("referred", CaseReferred, t + 10, department="city-housing", reason="beyond the street")
            ex.open = False
            expected.append(ex)
            envelopes += sc.events
            continue
        accepted = kind != "escalated_open" or rng.random() < 0.5
        if accepted:
            at = sc.emit("accepted", CaseAccepted, accept_offset, by="s-1")
            ex.responded_on_time = at <= first_respond_by
            if rng.random() < 0.3:
                sc.emit("noted", CaseNoted, accept_offset + 5, by="s-1", text="visited")
        if kind == "escalated_open":
            expected.append(ex)
            envelopes += sc.events
            continue
        if kind == "accepted_open":
            ex.overdue = resolve_by < now
            expected.append(ex)
            envelopes += sc.events
            continue
        if kind == "paused":
            sc.emit("paused", CasePaused, accept_offset + 60, by="s-1", reason="waiting for parts")
            expected.append(ex)
            envelopes += sc.events
            continue
        # resolved (+ mediation / dispatch side events for some categories)
        on_time = rng.random() < 0.7
        r_at = accept_offset + 600
        sc.emit("resolved", CaseResolved, r_at, level=level, by="s-1", summary="done", on_time=on_time)
        ex.resolved, ex.resolved_on_time, ex.resolved_level, ex.open = True, on_time, level, False
        if category == "dispute.neighbour":
            mid = f"M-{i:05d}"
            base = dict(mediation_id=mid, case_id=cid, level=level)
            envelopes.append(_env(s.mediation_event("opened"), MediationOpened(**base, version=1, at=t0, due_by=far)))
            mediation["opened"] += 1
            if on_time:
                envelopes.append(_env(s.mediation_event("agreed"), MediationAgreed(**base, version=2, at=t0, terms="ok")))
                mediation["agreed"] += 1
            else:
                envelopes.append(_env(s.mediation_event("failed"), MediationFailed(**base, version=2, at=t0, reason="no_agreement")))
                mediation["failed"] += 1
        if category == "help.micro_wish":
            tid = f"T-{i:05d}"
            envelopes.append(_env(s.dispatch_event("task_opened"), TaskOpened(
                task_id=tid, case_id=cid, at=t0, community=community, grid=grid, skills=[], people=1, open_claim=True)))
            h = rng.choice([0.5, 1.0, 2.0])
            envelopes.append(_env(s.dispatch_event("completed"), TaskCompleted(
                task_id=tid, case_id=cid, version=2, at=t0, volunteer="v-1", hours=h)))
            hours += h
        fb_roll = rng.random()
        if fb_roll < 0.25:
            sc.emit("closed", CaseClosed, r_at + 3600, reason="feedback_timeout")
        else:
            fb = rng.choice(SATISFACTION)
            sc.emit("feedback_recorded", CaseFeedbackRecorded, r_at + 100, satisfaction=fb)
            ex.feedback = fb
            if fb == "dissatisfied":
                sc.emit("reopened", CaseReopened, r_at + 101, reason="dissatisfied")
                ex.resolved, ex.open = False, True
                if rng.random() < 0.5:
                    sc.emit("assigned", CaseAssigned, r_at + 102, level=level, unit=grid, assignee="s-1", handling="direct",
                            respond_by=far, resolve_by=far, reason="reopened")
                    on_time2 = rng.random() < 0.5
                    sc.emit("resolved", CaseResolved, r_at + 200, level=level, by="s-1", summary="again", on_time=on_time2)
                    ex.resolved, ex.resolved_on_time, ex.open = True, on_time2, False
                    fb2 = rng.choice(["satisfied", "basically_satisfied"])
                    sc.emit("feedback_recorded", CaseFeedbackRecorded, r_at + 300, satisfaction=fb2)
                    ex.feedback = fb2
                    sc.emit("closed", CaseClosed, r_at + 301, reason="satisfied")
                else:
                    # reopened, waiting for reassignment: open, no running clock (the old one was done)
                    pass
            else:
                sc.emit("closed", CaseClosed, r_at + 101, reason="satisfied")
        expected.append(ex)
        envelopes += sc.events
    return History(envelopes, expected, mediation, hours)


def _env(type_: str, model: Any) -> Envelope[Any]:
    return Envelope.new(type_, model.model_dump(mode="json"), source="/tests/history", subject=getattr(model, "case_id", None))


# ---- the independent computation -------------------------------------------------------------


def expected_reply(cases: Sequence[Expected], start: datetime, end: datetime, scope: dict[str, Any], group_by: Sequence[str]) -> dict[str, Any]:
    groups: dict[tuple[Any, ...], list[Expected]] = {}
    for c in cases:
        if c.excluded or not (start <= c.received_at < end):
            continue
        if any(v is not None and c.dims[k] != v for k, v in scope.items()):
            continue
        key = tuple(c.day if g == "day" else c.dims[g] for g in group_by)
        groups.setdefault(key, []).append(c)
    rows = [_row(dict(zip(group_by, k, strict=True)), v, True) for k, v in groups.items()]
    rows.sort(key=lambda r: tuple("" if r["key"][g] is None else str(r["key"][g]) for g in group_by))
    every = [c for v in groups.values() for c in v]
    return {"ok": True, "rows": rows, "totals": _row({}, every, False)}


def _row(key: dict[str, Any], cs: list[Expected], suppress: bool) -> dict[str, Any]:
    resolved = [c for c in cs if c.resolved]
    counts = {
        "received": len(cs),
        "assigned": sum(c.assigned for c in cs),
        "responded_on_time": sum(c.responded_on_time for c in cs),
        "resolved": len(resolved),
        "resolved_on_time": sum(c.resolved_on_time for c in resolved),
        "resolved_in_grid": sum(c.resolved_level in ("building", "grid") for c in resolved),
        "resolved_in_community": sum(c.resolved_level in ("building", "grid", "community") for c in resolved),
        "escalated": sum(bool(c.escalations) for c in cs),
        "feedback": sum(c.feedback is not None for c in cs),
        "satisfied": sum(c.feedback in ("satisfied", "basically_satisfied") for c in cs),
        "open": sum(c.open for c in cs),
        "overdue": sum(c.overdue for c in cs),
    }

    def rate(a: str, b: str) -> float | None:
        return counts[a] / counts[b] if counts[b] else None

    rates = {
        "response_rate": rate("responded_on_time", "assigned"),
        "resolution_rate": rate("resolved", "received"),
        "satisfaction_rate": rate("satisfied", "feedback"),
        "in_grid_rate": rate("resolved_in_grid", "resolved"),
        "in_community_rate": rate("resolved_in_community", "resolved"),
        "on_time_rate": rate("resolved_on_time", "resolved"),
    }
    three = [rates["response_rate"], rates["resolution_rate"], rates["satisfaction_rate"]]
    rates["score"] = None if None in three else 0.30 * three[0] + 0.35 * three[1] + 0.35 * three[2]
    if suppress and len(cs) < 5:
        return {"key": key, **{k: None for k in counts}, **{k: None for k in rates}, "suppressed": True}
    return {"key": key, **counts, **rates, "suppressed": False}


def escalations_in(cases: Sequence[Expected], start: datetime, end: datetime) -> dict[str, int]:
    out = {r: 0 for r in ("respond_overdue", "resolve_overdue", "requested", "mediation_failed", "dispatch_unfilled", "dissatisfied")}
    for c in cases:
        if not c.excluded and start <= c.received_at < end:
            for r in c.escalations:
                out[r] += 1
    return out
