"""Mediation events (`gridcase.mediation.<event>.v1`) and commands (DESIGN §3)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BeforeValidator, Field

from .common import CaseId, Code, ContractModel, Level, PartyRole, UtcDatetime
from .intake import halfwidth

Staff = Annotated[Code, BeforeValidator(halfwidth)]
MediationId = Annotated[str, Field(min_length=3, max_length=64, pattern=r"^M-[0-9A-Z]+$")]
PartyRefCode = Annotated[str, Field(pattern=r"^p[0-9]+$")]
Text = Annotated[str, BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v)]


class FailureReason(StrEnum):
    party_declined = "party_declined"
    no_agreement = "no_agreement"
    overdue = "overdue"


class MediationEventData(ContractModel):
    mediation_id: MediationId
    case_id: CaseId
    level: Level
    version: int = Field(default=1, ge=1)
    at: UtcDatetime


class MediationOpened(MediationEventData):
    mediator: Code | None = None
    due_by: UtcDatetime


class MediatorAssigned(MediationEventData):
    mediator: Code


class ConsentRecorded(MediationEventData):
    party: PartyRefCode
    consented: bool


class SessionRecorded(MediationEventData):
    n: int = Field(ge=1)
    held_at: UtcDatetime
    summary: str = Field(min_length=1, max_length=5000)
    attendees: list[PartyRole | str] = Field(default_factory=list)


class MediationAgreed(MediationEventData):
    terms: str = Field(min_length=1, max_length=10000)


class MediationFailed(MediationEventData):
    reason: FailureReason


class MediationFollowedUp(MediationEventData):
    fulfilled: bool


class MediationClosed(MediationEventData):
    pass


# ---- commands: gridcase.cmd.mediation.<verb>.v1 --------------------------------------


class MediationCommand(ContractModel):
    mediation_id: MediationId
    by: Staff


class AssignMediator(MediationCommand):
    mediator: Staff


class RecordConsent(MediationCommand):
    party: PartyRefCode
    consented: bool


class RecordSession(MediationCommand):
    held_at: UtcDatetime
    attendees: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=50
    )
    summary: Annotated[Text, Field(min_length=1, max_length=5000)]


class RecordAgreement(MediationCommand):
    terms: Annotated[Text, Field(min_length=1, max_length=10000)]


class RecordFailure(MediationCommand):
    reason: FailureReason = FailureReason.no_agreement


class RecordFollowUp(MediationCommand):
    fulfilled: bool
