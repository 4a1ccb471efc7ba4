"""Volunteer dispatch events (`gridcase.dispatch.<event>.v1`) and commands (DESIGN §3)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BeforeValidator, Field

from .common import CaseId, Code, ContractModel, Language, Level, UtcDatetime
from .intake import halfwidth

VolunteerId = Annotated[Code, BeforeValidator(halfwidth)]
TaskId = Annotated[str, Field(min_length=3, max_length=64, pattern=r"^T-[0-9A-Z]+$")]
Skill = Annotated[str, BeforeValidator(halfwidth), Field(min_length=1, max_length=64)]


class VolunteerKind(StrEnum):
    volunteer = "volunteer"
    party_member = "party_member"
    partner_unit = "partner_unit"


class Answer(StrEnum):
    accept = "accept"
    decline = "decline"


class Volunteer(ContractModel):
    """A registry entry. `name` is a display name and stays inside dispatch."""

    id: VolunteerId
    name: Annotated[str, Field(min_length=1, max_length=100)]
    community: Code
    grid: Code | None = None
    skills: list[Skill] = Field(default_factory=list, max_length=50)
    languages: list[Language] = Field(default_factory=list)
    kind: VolunteerKind = VolunteerKind.volunteer
    max_tasks: int = Field(default=2, ge=0, le=50)
    active: bool = True


class DispatchEventData(ContractModel):
    task_id: TaskId | None = None
    case_id: CaseId | None = None
    version: int = Field(default=1, ge=1)
    at: UtcDatetime


class VolunteerRegistered(ContractModel):
    """Carries no display name or contact: only what other services may count on."""

    volunteer: VolunteerId
    community: Code
    grid: Code | None = None
    skills: list[Skill]
    languages: list[Language]
    kind: VolunteerKind
    max_tasks: int
    active: bool
    at: UtcDatetime


class TaskOpened(DispatchEventData):
    community: Code | None = None
    grid: Code | None = None
    skills: list[Skill]
    people: int = Field(ge=1)
    open_claim: bool


class Offered(DispatchEventData):
    volunteer: VolunteerId
    expires_at: UtcDatetime


class OfferAccepted(DispatchEventData):
    volunteer: VolunteerId


class OfferDeclined(DispatchEventData):
    volunteer: VolunteerId


class OfferExpired(DispatchEventData):
    volunteer: VolunteerId


class TaskCompleted(DispatchEventData):
    volunteer: VolunteerId
    hours: float = Field(gt=0, le=1000)


class TaskUnfilled(DispatchEventData):
    reason: str = "no_volunteer"


class TaskUnfilledV2(TaskUnfilled):
    """`unfilled.v2`: v1 plus the level of the assignment the task served. Routing escalates
    only if the case is still at that level: a task opened for an earlier assignment can run
    out of volunteers after the case has moved on, before dispatch has cancelled it."""

    level: Level


class TaskCancelled(DispatchEventData):
    reason: str = "case_closed"


# ---- commands: gridcase.cmd.dispatch.<verb>.v1 ---------------------------------------


class RegisterVolunteer(ContractModel):
    volunteer: Volunteer


class RespondToOffer(ContractModel):
    task_id: TaskId
    volunteer: VolunteerId
    answer: Answer


class ClaimTask(ContractModel):
    task_id: TaskId
    volunteer: VolunteerId


class CompleteTask(ContractModel):
    task_id: TaskId
    volunteer: VolunteerId
    hours: float = Field(gt=0, le=1000)
