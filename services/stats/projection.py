"""Pure per-case fact folding (no I/O).

A case's *fact document* is folded from its case events. Every field is chosen by the
event's per-case `version` (first/last wins, or a dict keyed by version), so the result does
not depend on the order events arrive in, and `applied` (the versions already folded) makes a
repeated event a no-op: redeliveries and replays never double-count.

`contribution(fact, now)` turns a fact into the one rollup cell it counts in and its counter
vector (see `COUNTERS`); the rollups subtract a case's old contribution and add its new one.
All times are stored as epoch seconds (UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any

from shared.contract.case import EscalationReason
from shared.contract.stats import COUNT_FIELDS  # the KPI counts of a row, in contract order

LEVELS = ("building", "grid", "community", "street")
IN_GRID = {"building", "grid"}
IN_COMMUNITY = {"building", "grid", "community"}
SATISFIED = {"satisfied", "basically_satisfied"}
EXCLUDED = {"merged", "withdrawn"}
NOT_OPEN = {"resolved", "closed", "referred"}
ESCALATION_REASONS = tuple(r.value for r in EscalationReason)

# dimensions of a rollup cell besides the local day (grid determines community → district)
DIMS = ("district", "community", "grid", "category", "channel", "level")
# the counter vector of a cell: the KPI counts, then escalation *events* by reason
COUNTERS = COUNT_FIELDS + tuple(f"esc_{r}" for r in ESCALATION_REASONS)
N = len(COUNTERS)
IDX = {name: i for i, name in enumerate(COUNTERS)}

# case event short names that set the case's state
STATE_OF = {
    "received": "new",
    "assigned": "assigned",
    "accepted": "accepted",
    "paused": "paused",
    "resumed": "accepted",
    "escalated": "escalated",
    "resolved": "resolved",
    "reopened": "reopened",
    "referred": "referred",
    "closed": "closed",
}


def ts(value: datetime) -> float:
    return value.timestamp()


def local_day(epoch: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(epoch, UTC).astimezone(tz).date().isoformat()


def new_fact(case_id: str) -> dict[str, Any]:
    return {"_id": case_id, "v": 0, "applied": []}


def short_type(type_: str) -> str:
    """`gridcase.case.assigned.v1` → `assigned`."""
    return type_.split(".")[2]


def apply(fact: dict[str, Any], name: str, data: Any, tz: tzinfo) -> bool:
    """Fold one case event (`name` = short type, `data` = its typed model) into `fact`.

    Mutates `fact`; returns False (and changes nothing) when this version was applied before.
    """
    v = int(data.version)
    if v in fact["applied"]:
        return False
    fact["applied"] = sorted([*fact["applied"], v])
    at = ts(data.at)
    sv = str(v)
    # the latest event names the case's current scope and category (cases get located later)
    if v >= fact.get("scope_v", 0):
        fact["scope_v"] = v
        fact["scope"] = {
            "district": data.scope.district,
            "community": data.scope.community,
            "grid": data.scope.grid,
        }
        fact["category"] = str(data.category)
    fact["v"] = max(fact["v"], v)
    if name == "received":
        fact["received"] = True
        fact["channel"] = str(data.channel)
        fact["priority"] = str(data.priority)
        fact["received_at"] = at
        fact["day"] = local_day(at, tz)
    elif name == "assigned":
        entry = [v, str(data.level), ts(data.respond_by), ts(data.resolve_by), at]
        if fact.get("first_assigned") is None or v < fact["first_assigned"][0]:
            fact["first_assigned"] = entry
        if fact.get("cur_assigned") is None or v > fact["cur_assigned"][0]:
            fact["cur_assigned"] = entry
        _set_level(fact, v, str(data.level))
    elif name == "accepted":
        fact.setdefault("accepted", {})[sv] = at
    elif name in ("paused", "resumed"):
        fact.setdefault("clock", {})[sv] = [name, at]
    elif name == "escalated":
        fact.setdefault("escalations", {})[sv] = [str(data.reason), str(data.from_level)]
        _set_level(fact, v, str(data.to_level))
    elif name == "resolved":
        if fact.get("resolution") is None or v > fact["resolution"][0]:
            fact["resolution"] = [v, str(data.level), bool(data.on_time), at]
    elif name == "feedback_recorded":
        if fact.get("feedback") is None or v > fact["feedback"][0]:
            fact["feedback"] = [v, str(data.satisfaction)]
    if name == "reopened":
        fact["reopened_v"] = max(fact.get("reopened_v", 0), v)
    if name == "closed":
        reason = str(data.reason)
        if reason in EXCLUDED:
            fact["excluded"] = reason
    if name in STATE_OF and (fact.get("state") is None or v > fact["state"][0]):
        fact["state"] = [v, STATE_OF[name], str(data.reason) if name == "closed" else None]
    return True


def _set_level(fact: dict[str, Any], v: int, level: str) -> None:
    if fact.get("level") is None or v > fact["level"][0]:
        fact["level"] = [v, level]


# ---- derived facts ---------------------------------------------------------------------


def state(fact: dict[str, Any]) -> str:
    s = fact.get("state")
    return s[1] if s else "new"


def is_open(fact: dict[str, Any]) -> bool:
    return state(fact) not in NOT_OPEN


def is_resolved(fact: dict[str, Any]) -> bool:
    return state(fact) in ("resolved", "closed") and fact.get("resolution") is not None


def responded_on_time(fact: dict[str, Any]) -> bool:
    """Accepted by the first assignment's `respond_by` (DESIGN §6 response rate)."""
    first = fact.get("first_assigned")
    accepted = fact.get("accepted") or {}
    if first is None:
        return False
    times = [at for sv, at in accepted.items() if int(sv) > first[0]]
    return bool(times) and min(times) <= first[2]


def due_at(fact: dict[str, Any]) -> float | None:
    """When the current assignment's running clock is due (None: no clock running).

    Respond clock until the case is accepted after its current assignment, then the resolve
    clock; paused time (pause → resume after the assignment) moves the deadline on; a paused
    case has no running clock, nor one resolved or reopened since its assignment.
    """
    cur = fact.get("cur_assigned")
    if cur is None or not is_open(fact):
        return None
    resolution = fact.get("resolution")
    if (resolution and resolution[0] > cur[0]) or fact.get("reopened_v", 0) > cur[0]:
        return None  # the assignment's clocks ended; a reopened case waits for its new one
    accepted = fact.get("accepted") or {}
    responded = any(int(sv) > cur[0] for sv in accepted)
    base = cur[3] if responded else cur[2]
    shift = 0.0
    paused_at: float | None = None
    for sv, (kind, at) in sorted((fact.get("clock") or {}).items(), key=lambda kv: int(kv[0])):
        if int(sv) <= cur[0]:
            continue
        if kind == "paused" and paused_at is None:
            paused_at = at
        elif kind == "resumed" and paused_at is not None:
            shift += max(0.0, at - paused_at)
            paused_at = None
    if paused_at is not None:
        return None
    return base + shift


def level(fact: dict[str, Any]) -> str | None:
    lv = fact.get("level")
    return lv[1] if lv else None


def cell_key(fact: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    scope = fact.get("scope") or {}
    return fact["day"], (
        scope.get("district"),
        scope.get("community"),
        scope.get("grid"),
        fact.get("category"),
        fact.get("channel"),
        level(fact),
    )


def contribution(fact: dict[str, Any], now: float) -> tuple[str, tuple[Any, ...], tuple[int, ...]] | None:
    """(day, dims, counters) this case adds to the rollups, or None when it counts nowhere
    (not received yet, or closed as merged/withdrawn)."""
    if not fact.get("received") or fact.get("excluded"):
        return None
    c = [0] * N
    c[0] = 1
    c[1] = int(fact.get("first_assigned") is not None)
    c[2] = int(responded_on_time(fact))
    if is_resolved(fact):
        _, lv, on_time, _ = fact["resolution"]
        c[3] = 1
        c[4] = int(on_time)
        c[5] = int(lv in IN_GRID)
        c[6] = int(lv in IN_COMMUNITY)
    escalations = fact.get("escalations") or {}
    c[7] = int(bool(escalations))
    fb = fact.get("feedback")
    if fb is not None:
        c[8] = 1
        c[9] = int(fb[1] in SATISFIED)
    if is_open(fact):
        c[10] = 1
        due = due_at(fact)
        c[11] = int(due is not None and due <= now)
    for reason, _from in escalations.values():
        c[IDX[f"esc_{reason}"]] += 1
    day, dims = cell_key(fact)
    return day, dims, tuple(c)


def wake_at(fact: dict[str, Any], now: float) -> float | None:
    """When this case's overdue flag will flip next (None: never without a new event)."""
    due = due_at(fact)
    if due is None or due <= now or fact.get("excluded") or not fact.get("received"):
        return None
    return due
