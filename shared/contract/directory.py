"""The grid directory document, its load command and change event (DESIGN §3)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

from .common import Code, ContractModel, Language, Role, UtcDatetime
from .intake import halfwidth

HalfCode = Annotated[Code, BeforeValidator(halfwidth)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class District(ContractModel):
    code: HalfCode
    name: Name


class Street(ContractModel):
    code: HalfCode
    name: Name
    district: HalfCode


class Community(ContractModel):
    code: HalfCode
    name: Name
    district: HalfCode
    street: HalfCode | None = None


class Grid(ContractModel):
    code: HalfCode
    name: Name
    community: HalfCode


class Building(ContractModel):
    code: HalfCode
    grid: HalfCode
    address: Annotated[str, Field(min_length=1, max_length=500)]
    aliases: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(default_factory=list)


class StaffMember(ContractModel):
    id: HalfCode
    name: Name
    role: Role
    unit: HalfCode
    languages: list[Language] = Field(default_factory=list)
    active: bool = True


class Directory(ContractModel):
    """The document loaded by `gridcase.cmd.directory.load.v1` (an all-or-nothing upsert)."""

    districts: list[District] = Field(default_factory=list)
    streets: list[Street] = Field(default_factory=list)
    communities: list[Community] = Field(default_factory=list)
    grids: list[Grid] = Field(default_factory=list)
    buildings: list[Building] = Field(default_factory=list)
    staff: list[StaffMember] = Field(default_factory=list)


class StaffEntry(ContractModel):
    """Staff as announced to other services: id, role, unit, languages; no name."""

    id: str
    role: Role
    unit: str
    community: str | None = None
    languages: list[Language] = Field(default_factory=list)
    active: bool = True


class DirectoryChanged(ContractModel):
    """`gridcase.directory.changed.v1`: the whole current directory, minus staff names."""

    version: int = Field(ge=1)
    districts: list[District]
    streets: list[Street]
    communities: list[Community]
    grids: list[Grid]
    buildings: list[Building]
    staff: list[StaffEntry]
    counts: dict[str, int]
    at: UtcDatetime
