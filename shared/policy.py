"""The operator's policy file (DESIGN §5): ladder, SLA clocks, windows and the category catalogue.

Every key is optional; a key left out keeps its built-in default; partial clock entries merge.
A wrong key or value stops the service at start with a message naming it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import isodate
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .contract.common import Category, Handling, Level, Priority


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = isodate.parse_duration(value)
        except (isodate.ISO8601Error, ValueError) as exc:
            raise ValueError(f"{value!r} is not an ISO 8601 duration") from exc
        if not isinstance(parsed, timedelta):  # years/months are ambiguous
            raise ValueError(f"{value!r}: use days, hours, minutes or seconds")
        value = parsed
    if isinstance(value, timedelta) and value <= timedelta(0):
        raise ValueError("duration must be positive")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClockPair(_Strict):
    respond: Duration
    resolve: Duration


class CategoryRule(_Strict):
    handling: Handling
    start: Level
    priority: Priority | None = None


class DispatchRules(_Strict):
    offer_ttl: Duration = timedelta(minutes=30)
    max_offers: int = Field(default=5, ge=1, le=100)


H = timedelta(hours=1)
M = timedelta(minutes=1)

DEFAULT_CLOCKS: dict[Level, dict[Priority, ClockPair]] = {
    Level.building: {
        Priority.normal: ClockPair(respond=H, resolve=24 * H),
        Priority.urgent: ClockPair(respond=15 * M, resolve=4 * H),
    },
    Level.grid: {
        Priority.normal: ClockPair(respond=2 * H, resolve=24 * H),
        Priority.urgent: ClockPair(respond=30 * M, resolve=4 * H),
    },
    Level.community: {
        Priority.normal: ClockPair(respond=4 * H, resolve=72 * H),
        Priority.urgent: ClockPair(respond=H, resolve=24 * H),
    },
    Level.street: {
        Priority.normal: ClockPair(respond=8 * H, resolve=7 * 24 * H),
        Priority.urgent: ClockPair(respond=2 * H, resolve=72 * H),
    },
}

_C = CategoryRule
DEFAULT_CATEGORIES: dict[Category, CategoryRule] = {
    Category.dispute_neighbour: _C(handling=Handling.mediation, start=Level.grid),
    Category.dispute_family: _C(handling=Handling.mediation, start=Level.grid),
    Category.dispute_property: _C(handling=Handling.mediation, start=Level.community),
    Category.help_home_service: _C(handling=Handling.dispatch, start=Level.grid),
    Category.help_micro_wish: _C(handling=Handling.dispatch, start=Level.grid),
    Category.service_enrollment: _C(handling=Handling.direct, start=Level.community),
    Category.service_employment: _C(handling=Handling.direct, start=Level.community),
    Category.service_social_security: _C(handling=Handling.direct, start=Level.community),
    Category.facility_parking: _C(handling=Handling.direct, start=Level.grid),
    Category.facility_utilities: _C(handling=Handling.direct, start=Level.grid),
    Category.facility_housing: _C(handling=Handling.direct, start=Level.community),
    Category.safety_hazard: _C(handling=Handling.direct, start=Level.grid, priority=Priority.urgent),
    Category.environment_sanitation: _C(handling=Handling.direct, start=Level.grid),
    Category.enquiry_policy: _C(handling=Handling.direct, start=Level.grid),
    Category.other: _C(handling=Handling.direct, start=Level.community),
}


class Policy(_Strict):
    ladder: list[Level] = Field(
        default_factory=lambda: [Level.building, Level.grid, Level.community, Level.street],
        min_length=1,
    )
    clocks: dict[Level, dict[Priority, ClockPair]] = Field(
        default_factory=lambda: {lv: dict(p) for lv, p in DEFAULT_CLOCKS.items()}
    )
    warning_fraction: float = Field(default=0.8, gt=0, lt=1)
    feedback_window: Duration = timedelta(days=3)
    mediation_norm: Duration = timedelta(days=30)
    dispatch: DispatchRules = Field(default_factory=DispatchRules)
    triage_unit: str = Field(default="jinchuan", min_length=1, max_length=64)
    categories: dict[Category, CategoryRule] = Field(
        default_factory=lambda: dict(DEFAULT_CATEGORIES)
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, raw: Any) -> Any:
        """Partial `clocks` and `categories` entries merge into the built-in defaults."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        if isinstance(raw.get("clocks"), dict):
            merged: dict[str, Any] = {
                lv.value: {p.value: c.model_dump() for p, c in by_p.items()}
                for lv, by_p in DEFAULT_CLOCKS.items()
            }
            for level, by_priority in raw["clocks"].items():
                if level not in merged:
                    merged[level] = by_priority  # let validation name the bad key
                    continue
                if not isinstance(by_priority, dict):
                    merged[level] = by_priority
                    continue
                for prio, pair in by_priority.items():
                    base = merged[level].get(prio, {})
                    merged[level][prio] = {**base, **pair} if isinstance(pair, dict) else pair
            raw["clocks"] = merged
        if isinstance(raw.get("categories"), dict):
            cats = {c.value: r.model_dump() for c, r in DEFAULT_CATEGORIES.items()}
            for code, rule in raw["categories"].items():
                cats[code] = {**cats.get(code, {}), **rule} if isinstance(rule, dict) else rule
            raw["categories"] = cats
        return raw

    @model_validator(mode="after")
    def _ladder_has_clocks(self) -> Policy:
        if len(set(self.ladder)) != len(self.ladder):
            raise ValueError("ladder names a level twice")
        for level in self.ladder:
            for prio in Priority:
                if prio not in self.clocks.get(level, {}):
                    raise ValueError(f"clocks.{level.value}.{prio.value} is missing")
        return self

    def clock(self, level: Level, priority: Priority) -> ClockPair:
        return self.clocks[level][priority]

    def rule(self, category: Category) -> CategoryRule:
        return self.categories.get(category, DEFAULT_CATEGORIES[Category.other])

    def concerns(self, handling: Handling, category: str, assigned: str | None = None) -> bool:
        """Whether the service doing `handling` ever has work on this case: only cases whose
        category starts in that handling reach mediation or dispatch, so they skip every other
        case's events without touching their database (most of the traffic)."""
        if assigned == handling:
            return True
        try:
            return self.rule(Category(category)).handling == handling
        except ValueError:
            return False

    def next_level(self, level: Level) -> Level | None:
        idx = self.ladder.index(level) if level in self.ladder else -1
        return self.ladder[idx + 1] if 0 <= idx < len(self.ladder) - 1 else None


class PolicyError(ValueError):
    """A bad policy file; the message names each bad key."""


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return Policy()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"policy file {path}: {exc.strerror}") from exc
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise PolicyError(f"policy file {path}: not valid YAML/JSON: {exc}") from exc
    try:
        return Policy.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise PolicyError(f"policy file {path}: {problems}") from exc
