"""What a `case.received/assigned/closed` does to mediation: pure decisions, no I/O.

Both paths use these rules: the per-event path (one transaction per event, the fallback) and
the batched one (one transaction per batch, events applied in arrival order in memory). Each
function takes the case file and the case's dossiers concerned, changes the case file in
place and returns the dossier changes — or `None` when the event changes nothing (a
redelivery or a stale event), in which case nothing is saved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from shared.contract.case import CaseAssigned, CaseClosed, CaseReceived
from shared.contract.common import Handling, Level

from . import domain
from .domain import CaseFile, CloseReason, Dossier, Emitted, Mediator, MediatorChoice

Done = tuple[Dossier | None, Dossier, list[Emitted]]  # a change: before (None: new), after, its events
CaseEvent = CaseReceived | CaseAssigned | CaseClosed
# (community, parties) → the choice and the community's mediators by id
Choose = Callable[[str | None, list[dict[str, Any]] | None], tuple[MediatorChoice, Mapping[str, Mediator]]]


def received(cf: CaseFile, r: CaseReceived, missing: Iterable[Dossier], choose: Choose, t: datetime) -> list[Done] | None:
    """The parties become known; dossiers opened without them learn them (`missing`: the
    case's dossiers with `parties_known` false)."""
    if cf.parties is not None:
        return None  # already known (redelivery)
    parties = [p.model_dump(mode="json") for p in r.parties]
    langs = domain.party_languages(parties)
    cf.parties = parties
    cf.community = cf.community or r.scope.community
    cf.category = cf.category or r.category
    done: list[Done] = []
    for d in missing:
        better, known = choose(d.community, parties)
        current = known.get(d.mediator) if d.mediator else None
        covered = len(current.languages & langs) if current else 0
        nd, events = domain.learn_parties(d, parties, better, covered, t)
        done.append((d, nd, events))
    return done


def assigned(
    cf: CaseFile, a: CaseAssigned, open_: Iterable[Dossier], choose: Choose, t: datetime, norm: timedelta
) -> list[Done] | None:
    """A newer assignment closes open dossiers it supersedes and, for `handling: mediation`,
    opens one unless one stays open (`open_`: the case's open dossiers)."""
    if not cf.newer_assignment(a.version):
        return None  # repeated or stale assignment
    is_mediation = a.handling == Handling.mediation
    level = Level(a.level)
    cf.assigned_version = a.version
    cf.community = a.scope.community or cf.community
    cf.category = a.category
    done: list[Done] = []
    keep = []
    for d in open_:
        if domain.supersedes(d, level, is_mediation):
            done.append((d, *domain.close_quietly(d, t, CloseReason.superseded)))
        else:
            keep.append(d)
    if is_mediation and not keep:
        choice, _ = choose(cf.community, cf.parties)
        d, events = domain.open_dossier(
            case_id=a.case_id,
            level=level,
            case_version=a.version,
            community=cf.community,
            category=str(a.category),
            parties=cf.parties,
            choice=choice,
            now=t,
            norm=norm,
            assigned_at=a.at,
        )
        done.append((None, d, events))
    return done


def closed(cf: CaseFile, c: CaseClosed, open_: Iterable[Dossier], t: datetime) -> list[Done] | None:
    """The case closed: its open dossiers opened for an earlier assignment close."""
    if c.version <= cf.closed_version:
        return None
    cf.closed_version = c.version
    return [
        (d, *domain.close_quietly(d, t, CloseReason.case_closed))
        for d in open_
        if d.assigned_version < c.version
    ]


class Working:
    """A batch in memory: the case files and dossiers as loaded, changed event by event.

    Dossiers opened or changed by an earlier event of the batch are what later events see,
    exactly as if each had been loaded again after the previous one was saved. `writes` then
    says what to save, each existing document guarded by the version it was loaded with.
    """

    def __init__(self, cases: Mapping[str, CaseFile], dossiers: Iterable[Dossier]) -> None:
        self.cases = dict(cases)
        self.stored: dict[str, int] = {}  # mediation_id → version as loaded: the write guard
        self.by_case: dict[str, dict[str, Dossier]] = {}
        for d in dossiers:
            if d.mediation_id not in self.stored:  # the two queries may both return it
                self.stored[d.mediation_id] = d.version
                self.by_case.setdefault(d.case_id, {})[d.mediation_id] = d
        self.changed_cases: dict[str, CaseFile] = {}
        self.changed: dict[str, Dossier] = {}
        self.done: list[Done] = []

    def case(self, case_id: str) -> CaseFile:
        return self.cases.setdefault(case_id, CaseFile(case_id=case_id))

    def open_of(self, case_id: str) -> list[Dossier]:
        return [d for d in self.by_case.get(case_id, {}).values() if d.is_open]

    def missing_parties_of(self, case_id: str) -> list[Dossier]:
        return [d for d in self.by_case.get(case_id, {}).values() if not d.parties_known]

    def apply(self, cf: CaseFile, done: list[Done] | None) -> None:
        """Keep the outcome of one event (nothing when it changed nothing)."""
        if done is None:
            return
        self.changed_cases[cf.case_id] = cf
        for _, after, _ in done:
            self.by_case.setdefault(after.case_id, {})[after.mediation_id] = after
            self.changed[after.mediation_id] = after
        self.done.extend(done)

    def writes(self) -> tuple[list[CaseFile], list[Dossier], list[tuple[Dossier, int]]]:
        """Case files to save, new dossiers, and changed dossiers with their stored version."""
        new = [d for mid, d in self.changed.items() if mid not in self.stored]
        replaced = [(d, self.stored[mid]) for mid, d in self.changed.items() if mid in self.stored]
        return list(self.changed_cases.values()), new, replaced
