"""Intake's pure rules: decoding and validating a report, normalisation, the idempotency key,
duplicate linking, case ids, the `received` event and who may see a reporter's contact.

No I/O here: the store and handlers call these functions.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from ulid import ULID

from shared.contract.case import CaseReceived, PartyRef
from shared.contract.common import Channel, Scope
from shared.contract.envelope import RawEvent
from shared.contract.intake import FieldError, Report, halfwidth
from shared.errors import field_errors

LINK_WINDOW = timedelta(hours=24)
"""A report links to an open case of the same place and category received this recently."""

# ---- ids ------------------------------------------------------------------------------


def new_case_id() -> str:
    """Short, opaque, time-sortable and unguessable: `C-` + a ULID (80 random bits)."""
    return f"C-{ULID()}"


def report_key(channel: str, external_id: str) -> str:
    """The idempotency key, used as the report document's `_id` (unique forever)."""
    return f"{channel}:{external_id}"


def quarantine_id(raw: bytes, envelope_id: str | None = None, subject: str = "") -> str:
    """One quarantine record per envelope id (per the raw bytes when no id is readable),
    however often it arrives: a retried command gets the same answer."""
    basis = f"{subject}\n{envelope_id}".encode() if envelope_id else raw
    return "Q-" + hashlib.sha256(basis).hexdigest()[:32].upper()


# ---- normalisation ----------------------------------------------------------------------

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise_address(address: str) -> str:
    """Full-width → half-width, lower case, no spaces or punctuation: `３号楼 ２单元` == `3号楼2单元`."""
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", address).casefold())


def canonical_phone(phone: str) -> str:
    """Digits only, with a leading `+` kept: the form phones are hashed and stored in."""
    text = unicodedata.normalize("NFKC", phone).strip()
    digits = re.sub(r"[^0-9]", "", text)
    return ("+" + digits) if text.startswith("+") else digits


def link_key(report: Report) -> str | None:
    """Same building (or, without one, the same normalised address) and same category."""
    loc = report.location
    if loc.building:
        place = f"b:{loc.building.casefold()}"
    elif loc.address and normalise_address(loc.address):
        place = f"a:{normalise_address(loc.address)}"
    else:
        return None
    return f"{place}|{report.category.value}"


# ---- decoding and validation ------------------------------------------------------------


@dataclass
class Parsed:
    """A decoded report, or the reason and field errors it was refused with (no input values)."""

    report: Report | None = None
    envelope_id: str | None = None
    reason: str | None = None  # undecodable | envelope | invalid
    errors: list[FieldError] = field(default_factory=list)
    channel: str | None = None
    external_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.report is not None


def _errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    return [
        FieldError(path=f"{prefix}{e['path']}" if e["path"] != "(body)" else (prefix.rstrip(".") or "(body)"), message=e["message"])
        for e in field_errors(exc)
    ]


def _readable(data: Any) -> tuple[str | None, str | None]:
    """`channel` and `external_id` of a refused report, when they are well-formed."""
    if not isinstance(data, Mapping):
        return None, None
    channel = data.get("channel")
    channel = channel if isinstance(channel, str) and channel in Channel._value2member_map_ else None
    external = data.get("external_id")
    external = halfwidth(external) if isinstance(external, str) else None
    if not external or len(external) > 128:
        external = None
    return channel, external


def parse_report(raw: bytes, subject: str) -> Parsed:
    """Raw message bytes → a valid `Report`, or the errors to answer, announce and quarantine."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return Parsed(reason="undecodable", errors=[FieldError(path="(body)", message="not a JSON document")])
    if not isinstance(doc, dict):
        return Parsed(reason="undecodable", errors=[FieldError(path="(body)", message="not a JSON object")])

    def refused(reason: str, errors: list[FieldError], envelope_id: str | None) -> Parsed:
        channel, external = _readable(doc.get("data"))  # only now: a valid report needs none of it
        return Parsed(reason=reason, errors=errors, envelope_id=envelope_id, channel=channel, external_id=external)

    try:
        envelope = RawEvent.model_validate(doc)
    except ValidationError as exc:
        readable_id = doc.get("id") if isinstance(doc.get("id"), str) and 0 < len(doc["id"]) <= 128 else None
        return refused("envelope", _errors(exc), readable_id)
    if envelope.type != subject:
        return refused("envelope", [FieldError(path="type", message=f"must be {subject}")], envelope.id)
    try:
        report = Report.model_validate(envelope.data)
    except ValidationError as exc:
        return refused("invalid", _errors(exc, "data."), envelope.id)
    return Parsed(report=report, envelope_id=envelope.id, channel=report.channel.value, external_id=report.external_id)


# ---- duplicate linking ------------------------------------------------------------------


@dataclass(frozen=True)
class OpenCase:
    case_id: str
    received_at: datetime


def duplicate_of(candidates: Iterable[OpenCase], now: datetime) -> str | None:
    """The earliest case still open and received within `LINK_WINDOW`, if any."""
    recent = [c for c in candidates if now - c.received_at <= LINK_WINDOW]
    if not recent:
        return None
    return min(recent, key=lambda c: (c.received_at, c.case_id)).case_id


# ---- the case that a report opens -------------------------------------------------------


@dataclass(frozen=True)
class DirectoryView:
    """What intake knows of the directory: community → district, grid → community, directors."""

    version: int = 0
    districts: Mapping[str, str] = field(default_factory=dict)  # community → district
    grid_community: Mapping[str, str] = field(default_factory=dict)  # grid → community
    directors: Mapping[str, frozenset[str]] = field(default_factory=dict)  # community → staff ids

    @classmethod
    def from_changed(cls, data: Any) -> DirectoryView:
        """From a `DirectoryChanged` payload: staff names never reach intake anyway."""
        directors: dict[str, set[str]] = {}
        for staff in data.staff:
            if staff.role.value == "community_director" and staff.active:
                directors.setdefault(staff.community or staff.unit, set()).add(staff.id)
        return cls(
            version=data.version,
            districts={c.code: c.district for c in data.communities},
            grid_community={g.code: g.community for g in data.grids},
            directors={k: frozenset(v) for k, v in directors.items()},
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "districts": dict(self.districts),
            "grid_community": dict(self.grid_community),
            "directors": {k: sorted(v) for k, v in self.directors.items()},
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> DirectoryView:
        if not doc:
            return cls()
        return cls(
            version=int(doc.get("version", 0)),
            districts=dict(doc.get("districts") or {}),
            grid_community=dict(doc.get("grid_community") or {}),
            directors={k: frozenset(v) for k, v in (doc.get("directors") or {}).items()},
        )


def scope_of(report: Report, directory: DirectoryView) -> Scope:
    """Scope as far as the report tells; routing locates the case properly."""
    loc = report.location
    community = loc.community or (directory.grid_community.get(loc.grid) if loc.grid else None)
    district = directory.districts.get(community) if community else None
    return Scope(district=district, community=community, grid=loc.grid)


def party_refs(report: Report) -> list[PartyRef]:
    """Parties as `p1`, `p2` … in report order: role and language only."""
    return [PartyRef(ref=f"p{i}", role=p.role, language=p.language) for i, p in enumerate(report.parties, 1)]


def case_received(
    report: Report, *, case_id: str, at: datetime, scope: Scope, duplicate_of: str | None
) -> CaseReceived:
    """`gridcase.case.received.v1` (version 1): no names, no phones, no reporter."""
    return CaseReceived(
        case_id=case_id,
        version=1,
        category=report.category,
        scope=scope,
        at=at,
        channel=report.channel,
        external_id=report.external_id,
        priority=report.priority,
        title=report.title,
        description=report.description,
        reported_at=report.reported_at,
        location=report.location,
        located=False,
        duplicate_of=duplicate_of,
        parties=party_refs(report),
        needs=report.needs,
    )


def contact_of(report: Report) -> dict[str, Any]:
    """The personal part of a report (to be encrypted): an anonymous reporter's details are not kept."""
    reporter = report.reporter
    return {
        "reporter": {
            "anonymous": reporter.anonymous,
            "name": None if reporter.anonymous else reporter.name,
            "phone": None if reporter.anonymous or not reporter.phone else canonical_phone(reporter.phone),
        },
        "parties": [
            {
                "ref": f"p{i}",
                "role": p.role.value,
                "name": p.name,
                "phone": canonical_phone(p.phone) if p.phone else None,
                "language": p.language.value if p.language else None,
            }
            for i, p in enumerate(report.parties, 1)
        ],
    }


def phones_of(contact: Mapping[str, Any]) -> list[str]:
    phones = [contact["reporter"].get("phone")] + [p.get("phone") for p in contact["parties"]]
    return [p for p in phones if p]


# ---- contact look-up ----------------------------------------------------------------------


@dataclass(frozen=True)
class ContactDecision:
    granted: bool
    reason: str  # assignee | community_director | unknown_case | not_assignee_or_director


def may_see_contact(
    *, case_known: bool, assignee: str | None, community: str | None, requested_by: str, directors: Sequence[str] | frozenset[str]
) -> ContactDecision:
    """Only the case's current assignee or a community director of its community."""
    if not case_known:
        return ContactDecision(False, "unknown_case")
    if assignee and requested_by == assignee:
        return ContactDecision(True, "assignee")
    if community and requested_by in directors:
        return ContactDecision(True, "community_director")
    return ContactDecision(False, "not_assignee_or_director")

