"""The grid directory: validation of a load (all-or-nothing upsert) and the in-memory index.

Pure: no I/O. `merge(current, loaded)` returns the new directory or raises `DomainError`;
`DirectoryIndex` answers the questions routing asks on every case: where is this building,
which grid/community/district is it in, who works this unit.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared.contract.common import Level, Role
from shared.contract.directory import Directory, StaffEntry
from shared.contract.intake import Location
from shared.errors import DomainError

KINDS = ("districts", "streets", "communities", "grids", "buildings", "staff")

# role → the kind of unit it belongs to
ROLE_UNIT = {
    Role.building_head: "buildings",
    Role.grid_worker: "grids",
    Role.community_director: "communities",
    Role.mediator: "communities",
    Role.street_officer: "streets",
}
LEVEL_ROLE = {
    Level.building: Role.building_head,
    Level.grid: Role.grid_worker,
    Level.community: Role.community_director,
    Level.street: Role.street_officer,
}

# ---- address normalisation ------------------------------------------------------------

_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_NUMERAL_RUN = re.compile(r"[零〇一二两三四五六七八九十百]+")


def _numeral(run: str) -> str:
    """一 → 1, 十二 → 12, 二十 → 20, 二十三 → 23, 一百零五 → 105, 三五 → 35; else unchanged."""
    if all(ch in _DIGITS for ch in run):
        return "".join(str(_DIGITS[ch]) for ch in run)
    total, current = 0, 0
    for ch in run:
        if ch in _DIGITS:
            current = _DIGITS[ch]
        elif ch == "十":
            total += (current or 1) * 10
            current = 0
        elif ch == "百":
            total += (current or 1) * 100
            current = 0
        else:  # pragma: no cover - the regex admits nothing else
            return run
    return str(total + current)


def normalise(text: str) -> str:
    """NFKC (full/half width), lowercase, Chinese numerals → digits, no spaces/punctuation/symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _NUMERAL_RUN.sub(lambda m: _numeral(m.group(0)), text)
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in ("P", "S", "Z", "C"))


# ---- merge and validation -------------------------------------------------------------


def _by_code(items: list[dict[str, Any]], key: str = "code") -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


def merge(current: Directory | None, loaded: Directory) -> Directory:
    """The directory after upserting `loaded` into `current`; refuses the whole load on any error."""
    problems: list[str] = []
    new = loaded.model_dump(mode="json")
    for kind in KINDS:
        key = "id" if kind == "staff" else "code"
        dupes = sorted(code for code, n in Counter(item[key] for item in new[kind]).items() if n > 1)
        if dupes:
            problems.append(f"{kind}: duplicate {key} {', '.join(dupes[:10])}")
    if problems:
        raise DomainError("invalid", "directory refused, nothing applied: " + "; ".join(problems))
    base = current.model_dump(mode="json") if current else {k: [] for k in KINDS}
    merged: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        key = "id" if kind == "staff" else "code"
        table = {item[key]: item for item in base.get(kind, [])}
        for item in new[kind]:
            table[item[key]] = item
        merged[kind] = list(table.values())
    d = {k: _by_code(merged[k]) for k in KINDS if k != "staff"}

    def check(kind: str, item: dict[str, Any], field_: str, target: str, optional: bool = False) -> None:
        ref = item.get(field_)
        if ref is None and optional:
            return
        if ref not in d[target]:
            problems.append(f"{kind} {item.get('code') or item.get('id')}: unknown {field_} {ref!r}")

    for item in merged["streets"]:
        check("street", item, "district", "districts")
    for item in merged["communities"]:
        check("community", item, "district", "districts")
        check("community", item, "street", "streets", optional=True)
    for item in merged["grids"]:
        check("grid", item, "community", "communities")
    for item in merged["buildings"]:
        check("building", item, "grid", "grids")
    for item in merged["staff"]:
        target = ROLE_UNIT[Role(item["role"])]
        if item["unit"] not in d[target]:
            problems.append(f"staff {item['id']}: unknown unit {item['unit']!r} for role {item['role']}")
    # one normalised address/alias may name one building only
    owner: dict[str, str] = {}
    for item in merged["buildings"]:
        for text in [item["address"], *item.get("aliases", [])]:
            key = normalise(text)
            if not key:
                problems.append(f"building {item['code']}: address or alias {text!r} is empty once normalised")
            elif owner.setdefault(key, item["code"]) != item["code"]:
                problems.append(f"building {item['code']}: address or alias also names building {owner[key]}")
    if problems:
        shown = problems[:20]
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise DomainError("invalid", "directory refused, nothing applied: " + "; ".join(shown) + more)
    return Directory.model_validate(merged)


def counts(directory: Directory) -> dict[str, int]:
    return {kind: len(getattr(directory, kind)) for kind in KINDS}


# ---- the index ------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where a case is: codes from the directory (None where unknown)."""

    district: str | None = None
    street: str | None = None
    community: str | None = None
    grid: str | None = None
    building: str | None = None

    @property
    def located(self) -> bool:
        return self.grid is not None


@dataclass
class DirectoryIndex:
    directory: Directory = field(default_factory=Directory)
    version: int = 0
    building_grid: dict[str, str] = field(default_factory=dict)
    grid_community: dict[str, str] = field(default_factory=dict)
    community_district: dict[str, str] = field(default_factory=dict)
    community_street: dict[str, str | None] = field(default_factory=dict)
    streets: set[str] = field(default_factory=set)
    addresses: dict[str, str] = field(default_factory=dict)  # normalised address/alias → building
    staff_by_unit: dict[tuple[Role, str], list[str]] = field(default_factory=dict)
    staff: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def build(cls, directory: Directory | None, version: int = 0) -> DirectoryIndex:
        ix = cls(directory=directory or Directory(), version=version)
        d = ix.directory
        ix.streets = {s.code for s in d.streets}
        for c in d.communities:
            ix.community_district[c.code] = c.district
            ix.community_street[c.code] = c.street
        for g in d.grids:
            ix.grid_community[g.code] = g.community
        for b in d.buildings:
            ix.building_grid[b.code] = b.grid
            for text in [b.address, *b.aliases]:
                ix.addresses.setdefault(normalise(text), b.code)
        for s in d.staff:
            ix.staff[s.id] = {"role": s.role, "unit": s.unit, "active": s.active}
            if s.active:
                ix.staff_by_unit.setdefault((s.role, s.unit), []).append(s.id)
        return ix

    # -- location ------------------------------------------------------------------------
    def place_of_grid(self, grid: str, building: str | None = None) -> Place:
        community = self.grid_community[grid]
        return Place(
            district=self.community_district.get(community),
            street=self.community_street.get(community),
            community=community,
            grid=grid,
            building=building,
        )

    def match_address(self, text: str) -> str | None:
        key = normalise(text)
        if not key:
            return None
        hit = self.addresses.get(key)
        if hit is not None:
            return hit
        # the report's text contains a known address (e.g. city and district written before it):
        # the longest known address inside it wins
        best: tuple[int, str] | None = None
        for known, building in self.addresses.items():
            if len(known) >= 4 and known in key and (best is None or len(known) > best[0]):
                best = (len(known), building)
        return best[1] if best else None

    def locate(self, location: Location) -> Place:
        """building code → grid code → free-text address → community (triage) → nothing."""
        if location.building and location.building in self.building_grid:
            return self.place_of_grid(self.building_grid[location.building], location.building)
        if location.grid and location.grid in self.grid_community:
            return self.place_of_grid(location.grid)
        for text in (location.address, location.building):
            if text:
                building = self.match_address(text)
                if building is not None:
                    return self.place_of_grid(self.building_grid[building], building)
        if location.community and location.community in self.community_district:
            c = location.community
            return Place(district=self.community_district.get(c), street=self.community_street.get(c), community=c)
        return Place()

    # -- staff ---------------------------------------------------------------------------
    def staff_of(self, role: Role, unit: str) -> list[str]:
        return self.staff_by_unit.get((role, unit), [])

    def directors(self, community: str | None) -> list[str]:
        return self.staff_of(Role.community_director, community) if community else []

    def is_active_staff(self, staff_id: str) -> bool:
        entry = self.staff.get(staff_id)
        return bool(entry and entry["active"])

    def street_of(self, community: str | None) -> str | None:
        return self.community_street.get(community) if community else None

    def announced_staff(self) -> list[StaffEntry]:
        out = []
        for s in self.directory.staff:
            community = None
            if s.role in (Role.community_director, Role.mediator):
                community = s.unit
            elif s.role == Role.grid_worker:
                community = self.grid_community.get(s.unit)
            elif s.role == Role.building_head:
                community = self.grid_community.get(self.building_grid.get(s.unit, ""))
            out.append(
                StaffEntry(id=s.id, role=s.role, unit=s.unit, community=community, languages=s.languages, active=s.active)
            )
        return out
