"""Inbound reports, intake's rejections, and the submit / contact commands (DESIGN §3)."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from .common import (
    CaseId,
    Category,
    Channel,
    Code,
    ContractModel,
    Language,
    PartyRole,
    Priority,
    UtcDatetime,
)


def halfwidth(value: Any) -> Any:
    """Full-width digits and letters (ＡＢ１２) become half-width; text is trimmed."""
    if isinstance(value, str):
        return unicodedata.normalize("NFKC", value).strip()
    return value


def trimmed(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def category_or_other(value: Any) -> Any:
    """A missing or unknown category becomes `other` (community triage), never an error."""
    if value is None:
        return Category.other
    if isinstance(value, str):
        value = unicodedata.normalize("NFKC", value).strip()
        return value if value in Category._value2member_map_ else Category.other
    return value


HalfCode = Annotated[Code, BeforeValidator(halfwidth)]
Text = Annotated[str, BeforeValidator(trimmed)]
Phone = Annotated[
    str, BeforeValidator(halfwidth), Field(min_length=3, max_length=32, pattern=r"^\+?[0-9 ()-]+$")
]


class Location(ContractModel):
    community: HalfCode | None = None
    grid: HalfCode | None = None
    building: HalfCode | None = None
    address: Annotated[Text | None, Field(max_length=500)] = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Location:
        if not any((self.community, self.grid, self.building, self.address)):
            raise ValueError("location needs at least one of community, grid, building, address")
        return self


class Reporter(ContractModel):
    name: Annotated[Text | None, Field(max_length=100)] = None
    phone: Phone | None = None
    anonymous: bool = False


class Party(ContractModel):
    role: PartyRole
    name: Annotated[Text | None, Field(max_length=100)] = None
    phone: Phone | None = None
    language: Language | None = None


class Needs(ContractModel):
    skills: list[Annotated[str, BeforeValidator(halfwidth), Field(min_length=1, max_length=64)]] = (
        Field(default_factory=list, max_length=20)
    )
    people: int = Field(default=1, ge=1, le=50)


class Report(ContractModel):
    """`gridcase.intake.report.v1` data and `gridcase.cmd.intake.submit.v1` data."""

    channel: Channel
    external_id: Annotated[str, BeforeValidator(halfwidth), Field(min_length=1, max_length=128)]
    reported_at: UtcDatetime
    category: Annotated[Category, BeforeValidator(category_or_other)] = Category.other
    priority: Priority = Priority.normal
    title: Annotated[Text, Field(min_length=1, max_length=200)]
    description: Annotated[Text, Field(max_length=5000)] = ""
    location: Location
    reporter: Reporter = Field(default_factory=Reporter)
    parties: list[Party] = Field(default_factory=list, max_length=20)
    needs: Needs | None = None


class FieldError(ContractModel):
    path: str
    message: str


class ReportRejected(ContractModel):
    """`gridcase.intake.rejected.v1`: never carries the raw report or any personal data."""

    channel: str | None = None
    external_id: str | None = None
    errors: list[FieldError]
    quarantine_id: str
    at: UtcDatetime


class SubmitReply(ContractModel):
    ok: Literal[True] = True
    status: Literal["accepted", "duplicate"]
    case_id: CaseId


class ContactRequest(ContractModel):
    """`gridcase.cmd.intake.contact.v1`."""

    case_id: CaseId
    requested_by: Code
    purpose: Annotated[Text, Field(min_length=1, max_length=500)]

    @field_validator("requested_by", mode="before")
    @classmethod
    def _half(cls, v: Any) -> Any:
        return halfwidth(v)


class Contact(ContractModel):
    anonymous: bool
    name: str | None = None
    phone: str | None = None


class ContactReply(ContractModel):
    ok: Literal[True] = True
    case_id: CaseId
    reporter: Contact
    parties: list[dict[str, Any]] = Field(default_factory=list)
