"""Pure dispatch rules: the volunteer registry, the Matcher and the Task state machine.

No I/O here. Every operation mutates a `Task` in place and returns an `Outcome`: the events
to emit (name, contract model) and the `Effect`s on volunteers' counters (outstanding offers,
open tasks, hours). The store persists both; the in-memory `Registry` mirrors the counters.

Decisions (see README of the service in `app.py`'s docstring):
- capacity: a volunteer is *busy* with every outstanding offer and every accepted task not
  yet completed; eligible while `busy < max_tasks`.
- offers: one outstanding offer per open place; `max_offers` is counted per place, so a
  3-person task may make up to 3 × `max_offers` offers before it is `unfilled`.
- completion: each accepted volunteer completes on their own; every completion emits
  `completed` (volunteer, hours) and credits the hours. The task's state becomes `completed`
  when all accepted volunteers have completed. Routing resolves the case on the first
  `completed` (for the usual one-person task that is the same thing).
- `unfilled` (nobody eligible or offers exhausted, no offer outstanding) releases volunteers
  who had already accepted a place of a multi-person task.
- open claims (`help.micro_wish`) are never offered and stay open until claimed, cancelled or
  escalated by routing's clocks.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from shared.contract.case import CaseAssigned, CaseClosed, CaseReceived
from shared.contract.common import Category, Handling
from shared.contract.dispatch import (
    OfferAccepted,
    OfferDeclined,
    Offered,
    OfferExpired,
    TaskCancelled,
    TaskCompleted,
    TaskOpened,
    TaskUnfilledV2,
    Volunteer,
)
from shared.errors import DomainError

HOURS_WINDOW = timedelta(days=30)
WAIT_FOR_RECEIVED = 3  # deliveries of `assigned` that wait for `received` before using defaults

# category → (skills, people) when the report carries no needs
DEFAULT_NEEDS: dict[str, tuple[tuple[str, ...], int]] = {
    Category.help_home_service.value: (("elderly_care",), 1),
    Category.help_micro_wish.value: ((), 1),
}
OPEN_CLAIM_CATEGORIES = frozenset({Category.help_micro_wish.value})


def needs_for(category: str, needs: dict[str, Any] | None) -> tuple[tuple[str, ...], int]:
    """Skills and people for a task: the report's needs, else the category's defaults."""
    skills, people = DEFAULT_NEEDS.get(category, ((), 1))
    if needs:
        if needs.get("skills"):
            skills = tuple(dict.fromkeys(needs["skills"]))  # de-duplicated, order kept
        people = int(needs.get("people") or people)
    return tuple(skills), max(1, people)


# ---- the registry ----------------------------------------------------------------------


@dataclass(slots=True)
class VolunteerState:
    """What matching needs to know about one volunteer (no name, no contact)."""

    id: str
    community: str
    grid: str | None
    skills: frozenset[str]
    languages: frozenset[str]
    kind: str
    max_tasks: int
    active: bool
    offers: int = 0  # outstanding offers
    tasks: int = 0  # accepted, not yet completed
    hours_log: list[tuple[datetime, float]] = field(default_factory=list)
    _hours_sum: float = 0.0
    _hours_valid_until: datetime | None = None  # cache of hours_recent (None = stale)
    _hours_since: datetime | None = None

    @property
    def busy(self) -> int:
        return self.offers + self.tasks

    @property
    def has_room(self) -> bool:
        return self.busy < self.max_tasks

    def hours_recent(self, now: datetime, window: timedelta = HOURS_WINDOW) -> float:
        """Hours credited in (now - window, now]; cached until the oldest entry leaves the window."""
        if not self.hours_log:
            return 0.0
        if self._hours_valid_until is not None and self._hours_since is not None and self._hours_since <= now < self._hours_valid_until:
            return self._hours_sum
        since = now - window
        live = [(at, h) for at, h in self.hours_log if at > since]
        self.hours_log = live
        self._hours_sum = sum(h for _, h in live)
        self._hours_since = now
        self._hours_valid_until = min((at for at, _ in live), default=now) + window if live else now + window
        return self._hours_sum

    def credit(self, at: datetime, hours: float) -> None:
        self.hours_log.append((at, hours))
        self._hours_valid_until = None

    @classmethod
    def from_volunteer(cls, v: Volunteer) -> VolunteerState:
        return cls(
            id=v.id,
            community=v.community,
            grid=v.grid,
            skills=frozenset(v.skills),
            languages=frozenset(lang.value for lang in v.languages),
            kind=v.kind.value,
            max_tasks=v.max_tasks,
            active=v.active,
        )


class Registry:
    """Volunteers by id, with set indexes for matching.

    Per community: every volunteer, those *available* (active and `busy < max_tasks`), and
    by skill, grid and language. Matching is then set algebra (done in C) plus one `min` over
    a dict of precomputed `(hours in the last 30 days, id)` keys — fast at 10,000 volunteers.
    """

    HOURS_KEY_MAX_AGE = timedelta(minutes=1)

    def __init__(self, window: timedelta = HOURS_WINDOW) -> None:
        self.window = window
        self.by_id: dict[str, VolunteerState] = {}
        self._community: dict[str, set[str]] = {}
        self._available: dict[str, set[str]] = {}
        self._skill: dict[tuple[str, str], set[str]] = {}
        self._grid: dict[tuple[str, str], set[str]] = {}
        self._language: dict[tuple[str, str], set[str]] = {}
        self._hours_key: dict[str, tuple[float, str]] = {}
        self._hours_key_at: datetime | None = None

    def __len__(self) -> int:
        return len(self.by_id)

    def reset(self, states: Iterable[VolunteerState]) -> None:
        """Replace every entry (a load from the database) in one step."""
        fresh = Registry(self.window)
        for state in states:
            fresh.upsert(state)
        self.__dict__.update(fresh.__dict__)

    def get(self, volunteer_id: str) -> VolunteerState | None:
        return self.by_id.get(volunteer_id)

    def upsert(self, state: VolunteerState) -> VolunteerState:
        """Add or replace a profile; counters and hours of an existing entry are kept."""
        old = self.by_id.get(state.id)
        if old is not None:
            self._unindex(old)
            state.offers, state.tasks = old.offers, old.tasks
            if not state.hours_log:
                state.hours_log = old.hours_log
        self.by_id[state.id] = state
        c = state.community
        self._community.setdefault(c, set()).add(state.id)
        for skill in state.skills:
            self._skill.setdefault((c, skill), set()).add(state.id)
        if state.grid is not None:
            self._grid.setdefault((c, state.grid), set()).add(state.id)
        for lang in state.languages:
            self._language.setdefault((c, lang), set()).add(state.id)
        self._update_available(state)
        if self._hours_key_at is not None:
            self._hours_key[state.id] = (state.hours_recent(self._hours_key_at, self.window), state.id)
        return state

    def _unindex(self, v: VolunteerState) -> None:
        c = v.community
        self._community.get(c, set()).discard(v.id)
        self._available.get(c, set()).discard(v.id)
        for skill in v.skills:
            self._skill.get((c, skill), set()).discard(v.id)
        if v.grid is not None:
            self._grid.get((c, v.grid), set()).discard(v.id)
        for lang in v.languages:
            self._language.get((c, lang), set()).discard(v.id)

    def _update_available(self, v: VolunteerState) -> None:
        available = self._available.setdefault(v.community, set())
        if v.active and v.has_room:
            available.add(v.id)
        else:
            available.discard(v.id)

    def in_community(self, community: str, skills: Iterable[str] = ()) -> set[str] | frozenset[str]:
        """Ids of the community's volunteers having every skill (smallest skill set first)."""
        skills = tuple(skills)
        if not skills:
            return self._community.get(community, frozenset())
        sets = sorted((self._skill.get((community, s), frozenset()) for s in skills), key=len)
        if not sets[0]:
            return frozenset()
        return sets[0].intersection(*sets[1:]) if len(sets) > 1 else sets[0]

    def available(self, community: str, skills: Iterable[str] = ()) -> set[str]:
        """Active volunteers of the community with room and every skill."""
        avail = self._available.get(community, set())
        with_skills = self.in_community(community, skills)
        return avail & with_skills if len(avail) <= len(with_skills) else with_skills & avail

    def in_grid(self, community: str, grid: str | None) -> set[str] | frozenset[str]:
        return self._grid.get((community, grid), frozenset()) if grid is not None else frozenset()

    def speaking(self, community: str, languages: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for lang in languages:
            out |= self._language.get((community, lang), set())
        return out

    def hours_key(self, now: datetime) -> dict[str, tuple[float, str]]:
        """`id → (hours in the window ending now, id)`, recomputed at most once a minute."""
        at = self._hours_key_at
        if at is None or abs(now - at) > self.HOURS_KEY_MAX_AGE:
            self._hours_key = {vid: (v.hours_recent(now, self.window), vid) for vid, v in self.by_id.items()}
            self._hours_key_at = now
        return self._hours_key

    def apply(self, effects: Iterable[Effect], *, sign: int = 1) -> None:
        """Mirror the counter part of effects (`sign=-1` undoes them)."""
        for e in effects:
            v = self.by_id.get(e.volunteer)
            if v is not None and (e.offers or e.tasks):
                v.offers = max(0, v.offers + sign * e.offers)
                v.tasks = max(0, v.tasks + sign * e.tasks)
                self._update_available(v)

    def credit(self, effects: Iterable[Effect]) -> None:
        """Mirror the hours part of effects (after they are stored)."""
        for e in effects:
            v = self.by_id.get(e.volunteer)
            if v is not None and e.hours and e.at is not None:
                v.credit(e.at, e.hours)
                if self._hours_key_at is not None:
                    self._hours_key[v.id] = (v.hours_recent(self._hours_key_at, self.window), v.id)


# ---- matching --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Need:
    """What a task asks of a volunteer."""

    community: str | None
    grid: str | None = None
    skills: tuple[str, ...] = ()
    languages: frozenset[str] = frozenset()  # the residents' languages, when known


class Matcher:
    """Eligibility and ranking over the in-memory registry.

    Eligible: active, same community, every required skill, `busy < max_tasks`, not excluded
    (already offered, declined, accepted … for this task). Rank: same grid first, then a
    shared language with the residents (when their languages are known), then fewest hours in
    the last 30 days, then id. The rank is taken tier by tier (grid × language), so only the
    best non-empty tier is ever scanned.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def why_not(self, v: VolunteerState | None, need: Need, exclude: Iterable[str] = ()) -> str | None:
        """Why a volunteer is not eligible (an error code), or None if eligible."""
        if v is None:
            return "unknown_volunteer"
        if not v.active:
            return "volunteer_inactive"
        if need.community is None or v.community != need.community:
            return "other_community"
        if not v.skills.issuperset(need.skills):
            return "missing_skill"
        if not v.has_room:
            return "at_capacity"
        if v.id in set(exclude):
            return "already_offered"
        return None

    def _tiers(self, need: Need, exclude: Iterable[str]) -> Iterator[set[str]]:
        """Eligible ids, tier by tier in rank order; later tiers are only built when needed."""
        if need.community is None:
            return
        reg = self.registry
        c = need.community
        required: list[AbstractSet[str]] = [reg._available.get(c, set())]
        required += [reg._skill.get((c, s), frozenset()) for s in need.skills]
        excluded = set(exclude)

        def narrowed(*extra: AbstractSet[str]) -> set[str]:
            sets = sorted((*required, *extra), key=len)  # intersect from the smallest set
            out = set(sets[0]).intersection(*sets[1:]) if sets[0] else set()
            out.difference_update(excluded)
            return out

        speak: AbstractSet[str] = frozenset()
        if need.languages:
            langs = [reg._language.get((c, lang), set()) for lang in need.languages]
            speak = langs[0] if len(langs) == 1 else set().union(*langs)
        grid = reg.in_grid(c, need.grid)
        near = narrowed(grid) if grid else set()
        if need.languages:
            yield near & speak
            yield near - speak
        else:
            yield near
        far = narrowed()
        far.difference_update(near)
        if need.languages:
            yield far & speak
            yield far - speak
        else:
            yield far

    def eligible(self, need: Need, exclude: Iterable[str] = ()) -> list[VolunteerState]:
        by_id = self.registry.by_id
        return [by_id[vid] for tier in self._tiers(need, exclude) for vid in tier]

    def rank_key(self, v: VolunteerState, need: Need, now: datetime) -> tuple[int, int, float, str]:
        other_grid = 0 if (need.grid is not None and v.grid == need.grid) else 1
        no_language = 0 if (not need.languages or not v.languages.isdisjoint(need.languages)) else 1
        return (other_grid, no_language, v.hours_recent(now, self.registry.window), v.id)

    def best(self, need: Need, *, now: datetime, k: int = 1, exclude: Iterable[str] = ()) -> list[VolunteerState]:
        """The `k` best eligible volunteers, best first. This is what the benchmark times."""
        if k <= 0:
            return []
        key = self.registry.hours_key(now).__getitem__
        by_id = self.registry.by_id
        picked: list[VolunteerState] = []
        for tier in self._tiers(need, exclude):
            want = k - len(picked)
            if not tier:
                continue
            if want == 1:
                ids = [min(tier, key=key)]
            elif want >= len(tier):
                ids = sorted(tier, key=key)
            else:
                ids = heapq.nsmallest(want, tier, key=key)
            picked.extend(by_id[vid] for vid in ids)
            if len(picked) >= k:
                break
        return picked

    def rank(self, need: Need, *, now: datetime, exclude: Iterable[str] = ()) -> list[VolunteerState]:
        """Every eligible volunteer, best first."""
        key = self.registry.hours_key(now).__getitem__
        by_id = self.registry.by_id
        return [by_id[vid] for tier in self._tiers(need, exclude) for vid in sorted(tier, key=key)]


# ---- tasks -----------------------------------------------------------------------------


class TaskState(StrEnum):
    open = "open"  # places to fill
    filled = "filled"  # every place accepted, work under way
    completed = "completed"
    unfilled = "unfilled"
    cancelled = "cancelled"


ACTIVE = frozenset({TaskState.open, TaskState.filled})


class OfferState(StrEnum):
    offered = "offered"
    accepted = "accepted"
    declined = "declined"
    expired = "expired"
    withdrawn = "withdrawn"  # the task was cancelled while the offer was outstanding
    completed = "completed"
    released = "released"  # accepted, then the task was cancelled or unfilled


@dataclass
class Offer:
    volunteer: str
    state: OfferState
    offered_at: datetime
    expires_at: datetime | None = None  # None for a claim
    answered_at: datetime | None = None
    claim: bool = False
    hours: float | None = None

    def to_doc(self) -> dict[str, Any]:
        return {
            "volunteer": self.volunteer,
            "state": self.state.value,
            "offered_at": self.offered_at,
            "expires_at": self.expires_at,
            "answered_at": self.answered_at,
            "claim": self.claim,
            "hours": self.hours,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Offer:
        return cls(
            volunteer=d["volunteer"],
            state=OfferState(d["state"]),
            offered_at=d["offered_at"],
            expires_at=d.get("expires_at"),
            answered_at=d.get("answered_at"),
            claim=bool(d.get("claim")),
            hours=d.get("hours"),
        )


@dataclass(frozen=True, slots=True)
class Effect:
    """A change to one volunteer's counters: outstanding offers, open tasks, hours credited."""

    volunteer: str
    offers: int = 0
    tasks: int = 0
    hours: float = 0.0
    at: datetime | None = None


@dataclass
class Outcome:
    events: list[tuple[str, BaseModel]] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    accept_delays: list[float] = field(default_factory=list)  # seconds from offer to accept

    def extend(self, other: Outcome) -> Outcome:
        self.events.extend(other.events)
        self.effects.extend(other.effects)
        self.accept_delays.extend(other.accept_delays)
        return self

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@dataclass
class Task:
    id: str
    case_id: str
    level: str
    category: str
    community: str | None
    grid: str | None
    skills: tuple[str, ...]
    people: int
    open_claim: bool
    languages: frozenset[str]
    opened_at: datetime
    offer_limit: int
    state: TaskState = TaskState.open
    offers: list[Offer] = field(default_factory=list)
    seq: int = 0  # version of the last event emitted (per task, from 1)
    version: int = 0  # document version for guarded writes (0 = not stored yet)

    # -- views --
    @property
    def need(self) -> Need:
        return Need(self.community, self.grid, self.skills, self.languages)

    @property
    def pending(self) -> list[Offer]:
        return [o for o in self.offers if o.state is OfferState.offered]

    @property
    def taken(self) -> list[Offer]:
        """Places taken: accepted (and completed) offers or claims."""
        return [o for o in self.offers if o.state in (OfferState.accepted, OfferState.completed)]

    @property
    def places_left(self) -> int:
        return self.people - len(self.taken)

    @property
    def offers_made(self) -> int:
        return sum(1 for o in self.offers if not o.claim)

    @property
    def wake_at(self) -> datetime | None:
        if self.state is not TaskState.open:
            return None
        return min((o.expires_at for o in self.pending if o.expires_at is not None), default=None)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def _offer_of(self, volunteer: str) -> Offer | None:
        for o in reversed(self.offers):
            if o.volunteer == volunteer:
                return o
        return None

    def _event(self, name: str, model: type[BaseModel], now: datetime, **fields: Any) -> tuple[str, BaseModel]:
        self.seq += 1
        return name, model(task_id=self.id, case_id=self.case_id, version=self.seq, at=now, **fields)

    # -- transitions --
    @classmethod
    def open(
        cls,
        *,
        task_id: str,
        case_id: str,
        level: str,
        category: str,
        community: str | None,
        grid: str | None,
        needs: dict[str, Any] | None,
        languages: Iterable[str],
        now: datetime,
        max_offers: int,
    ) -> tuple[Task, Outcome]:
        skills, people = needs_for(category, needs)
        task = cls(
            id=task_id,
            case_id=case_id,
            level=level,
            category=category,
            community=community,
            grid=grid,
            skills=skills,
            people=people,
            open_claim=category in OPEN_CLAIM_CATEGORIES,
            languages=frozenset(languages),
            opened_at=now,
            offer_limit=max_offers * people,
        )
        out = Outcome()
        out.events.append(
            task._event(
                "task_opened",
                TaskOpened,
                now,
                community=community,
                grid=grid,
                skills=list(skills),
                people=people,
                open_claim=task.open_claim,
            )
        )
        return task, out

    def offer_next(self, matcher: Matcher, now: datetime, ttl: timedelta) -> Outcome:
        """Offer each open place that has no outstanding offer; `unfilled` when that is impossible."""
        out = Outcome()
        if self.state is not TaskState.open or self.open_claim:
            return out
        to_offer = self.places_left - len(self.pending)
        if to_offer > 0 and self.offers_made < self.offer_limit:
            k = min(to_offer, self.offer_limit - self.offers_made)
            seen = {o.volunteer for o in self.offers}
            for v in matcher.best(self.need, now=now, k=k, exclude=seen):
                expires = now + ttl
                self.offers.append(Offer(v.id, OfferState.offered, now, expires_at=expires))
                out.events.append(self._event("offered", Offered, now, volunteer=v.id, expires_at=expires))
                out.effects.append(Effect(v.id, offers=1))
        if self.places_left > 0 and not self.pending:
            reason = "offers_exhausted" if self.offers_made >= self.offer_limit else "no_volunteer"
            out.extend(self._end(TaskState.unfilled, now, reason))
        return out

    def respond(self, volunteer: str, accept: bool, now: datetime, matcher: Matcher, ttl: timedelta) -> Outcome:
        self._require_active()
        if self.open_claim:
            raise DomainError("open_claim", "this task is an open claim: use claim")
        offer = self._offer_of(volunteer)
        if offer is None:
            raise DomainError("no_offer", "this volunteer has no offer for this task")
        if offer.state is not OfferState.offered:
            raise DomainError(
                f"offer_{offer.state.value}" if offer.state is not OfferState.accepted else "already_accepted",
                f"the offer is already {offer.state.value}",
            )
        if offer.expires_at is not None and offer.expires_at <= now:
            raise DomainError("offer_expired", "the offer has expired")
        out = Outcome()
        offer.answered_at = now
        if accept:
            offer.state = OfferState.accepted
            out.events.append(self._event("accepted", OfferAccepted, now, volunteer=volunteer))
            out.effects.append(Effect(volunteer, offers=-1, tasks=1))
            out.accept_delays.append(max(0.0, (now - offer.offered_at).total_seconds()))
            if self.places_left == 0:
                self.state = TaskState.filled
            return out
        offer.state = OfferState.declined
        out.events.append(self._event("declined", OfferDeclined, now, volunteer=volunteer))
        out.effects.append(Effect(volunteer, offers=-1))
        return out.extend(self.offer_next(matcher, now, ttl))  # the decliner is excluded

    def claim(self, volunteer: VolunteerState | None, now: datetime, matcher: Matcher) -> Outcome:
        if self.state is TaskState.filled or (self.active and self.places_left <= 0):
            raise DomainError("taken", "this task has already been claimed")
        self._require_active()
        if not self.open_claim:
            raise DomainError("not_open_claim", "this task is offered, not open to claims")
        vid = volunteer.id if volunteer is not None else ""
        if volunteer is not None and self._offer_of(vid) is not None:
            raise DomainError("already_claimed", "this volunteer has already claimed this task")
        reason = matcher.why_not(volunteer, self.need)
        if reason is not None:
            raise DomainError(reason, _REASONS.get(reason, reason))
        assert volunteer is not None
        self.offers.append(Offer(vid, OfferState.accepted, now, answered_at=now, claim=True))
        out = Outcome()
        out.events.append(self._event("accepted", OfferAccepted, now, volunteer=vid))
        out.effects.append(Effect(vid, tasks=1))
        out.accept_delays.append(max(0.0, (now - self.opened_at).total_seconds()))
        if self.places_left == 0:
            self.state = TaskState.filled
        return out

    def complete(self, volunteer: str, hours: float, now: datetime) -> Outcome:
        if self.state is TaskState.completed:
            raise DomainError("already_completed", "this task is already completed")
        self._require_active()
        offer = self._offer_of(volunteer)
        if offer is None or offer.state not in (OfferState.accepted, OfferState.completed):
            raise DomainError("not_assigned", "this volunteer has not taken this task")
        if offer.state is OfferState.completed:
            raise DomainError("already_completed", "this volunteer has already completed this task")
        if self.state is not TaskState.filled:
            raise DomainError("not_filled", "the task still has places to fill")
        offer.state = OfferState.completed
        offer.hours = hours
        out = Outcome()
        out.events.append(self._event("completed", TaskCompleted, now, volunteer=volunteer, hours=hours))
        out.effects.append(Effect(volunteer, tasks=-1, hours=hours, at=now))
        if all(o.state is OfferState.completed for o in self.taken):
            self.state = TaskState.completed
        return out

    def expire(self, now: datetime, matcher: Matcher, ttl: timedelta) -> Outcome:
        """Offers past `expires_at` expire; their places go to the next candidates."""
        out = Outcome()
        if self.state is not TaskState.open:
            return out
        freed = []
        for o in self.pending:
            if o.expires_at is not None and o.expires_at <= now:
                o.state = OfferState.expired
                o.answered_at = now
                out.events.append(self._event("expired", OfferExpired, now, volunteer=o.volunteer))
                freed.append(Effect(o.volunteer, offers=-1))
        if not freed:
            return out
        out.effects.extend(freed)
        return out.extend(self.offer_next(matcher, now, ttl))  # those who let it expire are excluded

    def cancel(self, now: datetime, reason: str = "case_closed") -> Outcome:
        """Cancel an active task: outstanding offers withdrawn, accepted places released."""
        if not self.active:
            return Outcome()
        return self._end(TaskState.cancelled, now, reason)

    def _end(self, state: TaskState, now: datetime, reason: str) -> Outcome:
        out = Outcome()
        for o in self.offers:
            if o.state is OfferState.offered:
                o.state = OfferState.withdrawn
                o.answered_at = now
                out.effects.append(Effect(o.volunteer, offers=-1))
            elif o.state is OfferState.accepted:
                o.state = OfferState.released
                out.effects.append(Effect(o.volunteer, tasks=-1))
        self.state = state
        if state is TaskState.cancelled:
            out.events.append(self._event(state.value, TaskCancelled, now, reason=reason))
        else:  # v2 carries the level the task served (published beside v1: see the catalogue)
            out.events.append(self._event(state.value, TaskUnfilledV2, now, reason=reason, level=self.level))
        return out

    def _require_active(self) -> None:
        if self.state is TaskState.cancelled:
            raise DomainError("task_cancelled", "this task has been cancelled")
        if self.state is TaskState.unfilled:
            raise DomainError("task_unfilled", "this task went unfilled and is closed")
        if self.state is TaskState.completed:
            raise DomainError("task_completed", "this task is completed")

    # -- persistence shape (plain dict; the store adds nothing but `_id`) --
    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "case_id": self.case_id,
            "level": self.level,
            "category": self.category,
            "community": self.community,
            "grid": self.grid,
            "skills": list(self.skills),
            "people": self.people,
            "open_claim": self.open_claim,
            "languages": sorted(self.languages),
            "opened_at": self.opened_at,
            "offer_limit": self.offer_limit,
            "state": self.state.value,
            "offers": [o.to_doc() for o in self.offers],
            "seq": self.seq,
            "version": self.version,
            "wake_at": self.wake_at,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Task:
        return cls(
            id=d["_id"],
            case_id=d["case_id"],
            level=d["level"],
            category=d["category"],
            community=d.get("community"),
            grid=d.get("grid"),
            skills=tuple(d.get("skills") or ()),
            people=int(d["people"]),
            open_claim=bool(d["open_claim"]),
            languages=frozenset(d.get("languages") or ()),
            opened_at=d["opened_at"],
            offer_limit=int(d["offer_limit"]),
            state=TaskState(d["state"]),
            offers=[Offer.from_doc(o) for o in d.get("offers") or ()],
            seq=int(d.get("seq", 0)),
            version=int(d.get("version", 0)),
        )


_REASONS = {
    "unknown_volunteer": "no such volunteer is registered",
    "volunteer_inactive": "this volunteer is not active",
    "other_community": "this volunteer belongs to another community",
    "missing_skill": "this volunteer lacks a required skill",
    "at_capacity": "this volunteer already has as many tasks as allowed",
    "already_offered": "this volunteer was already offered this task",
}


# ---- per-case knowledge (from case events) ---------------------------------------------


@dataclass
class CaseInfo:
    """What dispatch keeps about a case: needs, languages, its tasks by level."""

    case_id: str
    category: str | None = None
    community: str | None = None
    grid: str | None = None
    needs: dict[str, Any] | None = None
    languages: list[str] = field(default_factory=list)
    received: bool = False
    closed_version: int = 0
    assigned_version: int = 0  # version of the latest `assigned` applied
    # level → {"task_id": str, "assigned_version": int}
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 0  # document version (0 = not stored yet)

    @property
    def task_ids(self) -> list[str]:
        return [ref["task_id"] for ref in self.tasks.values()]

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.case_id,
            "category": self.category,
            "community": self.community,
            "grid": self.grid,
            "needs": self.needs,
            "languages": self.languages,
            "received": self.received,
            "closed_version": self.closed_version,
            "assigned_version": self.assigned_version,
            "tasks": self.tasks,
            "version": self.version,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> CaseInfo:
        return cls(
            case_id=d["_id"],
            category=d.get("category"),
            community=d.get("community"),
            grid=d.get("grid"),
            needs=d.get("needs"),
            languages=list(d.get("languages") or []),
            received=bool(d.get("received")),
            closed_version=int(d.get("closed_version") or 0),
            assigned_version=int(d.get("assigned_version") or 0),
            tasks=dict(d.get("tasks") or {}),
            version=int(d.get("version", 0)),
        )


# ---- case events -----------------------------------------------------------------------


class NeedsPending(Exception):
    """`assigned` came before `received`: retried with back-off (transient)."""


@dataclass
class CaseRules:
    """What dispatch does with a case event, on a case and its tasks already loaded.

    One event or a batch of them (applied in order to the same objects) takes the same rules.
    `decided(task, outcome)` is called the moment a task's outcome is decided: the caller
    mirrors the volunteer counters at once, so the next match — in this event or a later one
    of the batch — sees every offer made before it. Each method returns whether the case
    document changed.
    """

    matcher: Matcher
    ttl: timedelta
    max_offers: int
    now: datetime
    new_task_id: Callable[[], str]
    decided: Callable[[Task, Outcome], None]

    def received(self, case: CaseInfo, ev: CaseReceived) -> bool:
        if case.received:
            return False
        case.received = True
        case.category = ev.category.value
        case.needs = ev.needs.model_dump(mode="json") if ev.needs is not None else None
        case.languages = sorted({p.language.value for p in ev.parties if p.language is not None})
        if case.assigned_version == 0:
            case.community, case.grid = ev.scope.community, ev.scope.grid
        return True

    def assigned(self, case: CaseInfo, ev: CaseAssigned, tasks: Mapping[str, Task], delivered: int = 1) -> bool:
        if ev.version <= case.assigned_version or ev.version < case.closed_version:
            return False  # stale or repeated
        level = ev.level.value
        dispatch = ev.handling is Handling.dispatch
        ref = case.tasks.get(level) if dispatch else None
        existing = tasks.get(ref["task_id"]) if ref else None
        carry_on = existing is not None and (existing.active or ev.reason.value != "reopened")
        if dispatch and not carry_on and not case.received and delivered < WAIT_FOR_RECEIVED:
            # checked before any change, so the event leaves no trace until it is retried
            raise NeedsPending(f"case {ev.case_id}: waiting for received")
        case.assigned_version = ev.version
        case.category = case.category or ev.category.value
        case.community, case.grid = ev.scope.community, ev.scope.grid
        # a newer assignment elsewhere (or not by dispatch) supersedes open tasks
        for other, other_ref in case.tasks.items():
            if other == level and dispatch:
                continue
            self._cancel(tasks.get(other_ref["task_id"]), "superseded")
        if carry_on:
            assert ref is not None
            ref["assigned_version"] = ev.version  # same task carries on
        elif dispatch:
            task = self._open(case, ev)
            case.tasks[level] = {"task_id": task.id, "assigned_version": ev.version}
        return True

    def closed(self, case: CaseInfo, ev: CaseClosed, tasks: Mapping[str, Task]) -> bool:
        if ev.version <= case.closed_version:
            return False
        case.closed_version = ev.version
        for ref in case.tasks.values():
            self._cancel(tasks.get(ref["task_id"]), "case_closed")
        return True

    def _cancel(self, task: Task | None, reason: str) -> None:
        if task is not None and task.active:
            self.decided(task, task.cancel(self.now, reason))

    def _open(self, case: CaseInfo, ev: CaseAssigned) -> Task:
        task, outcome = Task.open(
            task_id=self.new_task_id(),
            case_id=ev.case_id,
            level=ev.level.value,
            category=ev.category.value,
            community=ev.scope.community,
            grid=ev.scope.grid,
            needs=case.needs,
            languages=case.languages,
            now=self.now,
            max_offers=self.max_offers,
        )
        outcome.extend(task.offer_next(self.matcher, self.now, self.ttl))
        self.decided(task, outcome)
        return task
