"""Case lifecycle events (`gridcase.case.<event>.v1`) and case commands (DESIGN §3)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from .common import (
    CaseId,
    Category,
    Channel,
    Code,
    ContractModel,
    Handling,
    Language,
    Level,
    PartyRole,
    Priority,
    Satisfaction,
    Scope,
    UtcDatetime,
)
from .intake import Location, Needs, halfwidth

Text = Annotated[str, BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v)]
Staff = Annotated[Code, BeforeValidator(halfwidth)]


class AssignReason(StrEnum):
    new = "new"
    escalated = "escalated"
    reassigned = "reassigned"
    reopened = "reopened"


class EscalationReason(StrEnum):
    respond_overdue = "respond_overdue"
    resolve_overdue = "resolve_overdue"
    requested = "requested"
    mediation_failed = "mediation_failed"
    dispatch_unfilled = "dispatch_unfilled"
    dissatisfied = "dissatisfied"


class Clock(StrEnum):
    respond = "respond"
    resolve = "resolve"


class CloseReason(StrEnum):
    satisfied = "satisfied"
    feedback_timeout = "feedback_timeout"
    merged = "merged"
    withdrawn = "withdrawn"


class CaseEventData(ContractModel):
    """Fields every case event carries."""

    case_id: CaseId
    version: int = Field(ge=1)
    category: Category
    scope: Scope
    at: UtcDatetime


class PartyRef(ContractModel):
    ref: Annotated[str, Field(pattern=r"^p[0-9]+$")]
    role: PartyRole
    language: Language | None = None


class CaseReceived(CaseEventData):
    channel: Channel
    external_id: str = Field(min_length=1, max_length=128)
    priority: Priority
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(max_length=5000)
    reported_at: UtcDatetime
    location: Location
    located: bool
    duplicate_of: CaseId | None = None
    parties: list[PartyRef] = Field(default_factory=list)
    needs: Needs | None = None


class CaseAssigned(CaseEventData):
    level: Level
    unit: Code
    assignee: Code | None = None
    handling: Handling
    respond_by: UtcDatetime
    resolve_by: UtcDatetime
    reason: AssignReason


class CaseAccepted(CaseEventData):
    by: Staff


class CaseNoted(CaseEventData):
    by: Staff
    text: str = Field(min_length=1, max_length=5000)


class CasePaused(CaseEventData):
    by: Staff
    reason: str = Field(min_length=1, max_length=500)


class CaseResumed(CaseEventData):
    by: Staff
    reason: str = Field(default="resumed", max_length=500)


class CaseSlaWarning(CaseEventData):
    clock: Clock
    due_at: UtcDatetime


class CaseEscalated(CaseEventData):
    from_level: Level
    to_level: Level
    reason: EscalationReason


class CaseResolved(CaseEventData):
    level: Level
    by: Staff
    summary: str = Field(min_length=1, max_length=5000)
    on_time: bool


class CaseFeedbackRecorded(CaseEventData):
    satisfaction: Satisfaction


class CaseReopened(CaseEventData):
    reason: str = Field(min_length=1, max_length=500)


class CaseReferred(CaseEventData):
    department: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=500)


class CaseClosed(CaseEventData):
    reason: CloseReason


# ---- commands: gridcase.cmd.case.<verb>.v1 -------------------------------------------


class CaseCommand(ContractModel):
    case_id: CaseId
    by: Staff


class AcceptCase(CaseCommand):
    pass


class NoteCase(CaseCommand):
    text: Annotated[Text, Field(min_length=1, max_length=5000)]


class PauseCase(CaseCommand):
    reason: Annotated[Text, Field(min_length=1, max_length=500)]


class ResumeCase(CaseCommand):
    reason: Annotated[Text, Field(min_length=1, max_length=500)] = "resumed"


class ResolveCase(CaseCommand):
    summary: Annotated[Text, Field(min_length=1, max_length=5000)]


class EscalateCase(CaseCommand):
    reason: Annotated[Text, Field(min_length=1, max_length=500)]


class ReferCase(CaseCommand):
    department: Annotated[Text, Field(min_length=1, max_length=200)]
    reason: Annotated[Text, Field(min_length=1, max_length=500)]


class RecordFeedback(CaseCommand):
    satisfaction: Satisfaction


class ReassignCase(CaseCommand):
    assignee: Staff


class WithdrawCase(CaseCommand):
    reason: Annotated[Text, Field(min_length=1, max_length=500)]


def case_reply(case_id: str, version: int, state: str, **extra: Any) -> dict[str, Any]:
    return {"ok": True, "case_id": case_id, "version": version, "state": state, **extra}
