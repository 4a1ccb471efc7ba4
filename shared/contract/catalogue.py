"""One table from subject to payload model, for events and commands.

Decoding goes through `parse_event`, the one place where older versions are upcast
(`UPCASTERS`), so handlers only ever see current models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from . import case, directory, dispatch, intake, mediation, stats
from . import subjects as s
from .envelope import Envelope

EVENTS: dict[str, type[BaseModel]] = {
    s.INTAKE_REPORT: intake.Report,
    s.INTAKE_REJECTED: intake.ReportRejected,
    s.case_event("received"): case.CaseReceived,
    s.case_event("assigned"): case.CaseAssigned,
    s.case_event("accepted"): case.CaseAccepted,
    s.case_event("noted"): case.CaseNoted,
    s.case_event("paused"): case.CasePaused,
    s.case_event("resumed"): case.CaseResumed,
    s.case_event("sla_warning"): case.CaseSlaWarning,
    s.case_event("escalated"): case.CaseEscalated,
    s.case_event("resolved"): case.CaseResolved,
    s.case_event("feedback_recorded"): case.CaseFeedbackRecorded,
    s.case_event("reopened"): case.CaseReopened,
    s.case_event("referred"): case.CaseReferred,
    s.case_event("closed"): case.CaseClosed,
    s.mediation_event("opened"): mediation.MediationOpened,
    s.mediation_event("mediator_assigned"): mediation.MediatorAssigned,
    s.mediation_event("consent_recorded"): mediation.ConsentRecorded,
    s.mediation_event("session_recorded"): mediation.SessionRecorded,
    s.mediation_event("agreed"): mediation.MediationAgreed,
    s.mediation_event("failed"): mediation.MediationFailed,
    s.mediation_event("followed_up"): mediation.MediationFollowedUp,
    s.mediation_event("closed"): mediation.MediationClosed,
    s.dispatch_event("volunteer_registered"): dispatch.VolunteerRegistered,
    s.dispatch_event("task_opened"): dispatch.TaskOpened,
    s.dispatch_event("offered"): dispatch.Offered,
    s.dispatch_event("accepted"): dispatch.OfferAccepted,
    s.dispatch_event("declined"): dispatch.OfferDeclined,
    s.dispatch_event("expired"): dispatch.OfferExpired,
    s.dispatch_event("completed"): dispatch.TaskCompleted,
    s.dispatch_event("unfilled"): dispatch.TaskUnfilled,
    s.DISPATCH_UNFILLED_V2: dispatch.TaskUnfilledV2,
    s.dispatch_event("cancelled"): dispatch.TaskCancelled,
    s.DIRECTORY_CHANGED: directory.DirectoryChanged,
}

COMMANDS: dict[str, type[BaseModel]] = {
    s.INTAKE_SUBMIT: intake.Report,
    s.INTAKE_CONTACT: intake.ContactRequest,
    s.command("case", "accept"): case.AcceptCase,
    s.command("case", "note"): case.NoteCase,
    s.command("case", "pause"): case.PauseCase,
    s.command("case", "resume"): case.ResumeCase,
    s.command("case", "resolve"): case.ResolveCase,
    s.command("case", "escalate"): case.EscalateCase,
    s.command("case", "refer"): case.ReferCase,
    s.command("case", "feedback"): case.RecordFeedback,
    s.command("case", "reassign"): case.ReassignCase,
    s.command("case", "withdraw"): case.WithdrawCase,
    s.command("mediation", "assign_mediator"): mediation.AssignMediator,
    s.command("mediation", "record_consent"): mediation.RecordConsent,
    s.command("mediation", "record_session"): mediation.RecordSession,
    s.command("mediation", "record_agreement"): mediation.RecordAgreement,
    s.command("mediation", "record_failure"): mediation.RecordFailure,
    s.command("mediation", "record_follow_up"): mediation.RecordFollowUp,
    s.command("dispatch", "register_volunteer"): dispatch.RegisterVolunteer,
    s.command("dispatch", "respond"): dispatch.RespondToOffer,
    s.command("dispatch", "claim"): dispatch.ClaimTask,
    s.command("dispatch", "complete"): dispatch.CompleteTask,
    s.DIRECTORY_LOAD: directory.Directory,
    s.STATS_QUERY: stats.KpiQuery,
}

# (old type) -> (new type, function upgrading the data dict). None yet: v1 is current.
UPCASTERS: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {}


# A newer version → the older one still published beside it, and the older payload's model.
# The producer emits the newer model; `published_as` adds the older copy (the newer payload
# minus what it added), so consumers of the older subject keep working. A consumer that reads
# every version (`gridcase.dispatch.>`) takes each fact once, from the older copy, which streams
# from before the newer version existed hold as well (`is_newer_copy`).
DOWNCASTS: dict[str, tuple[str, type[BaseModel]]] = {
    s.DISPATCH_UNFILLED_V2: (s.dispatch_event("unfilled"), dispatch.TaskUnfilled),
}
# The current version of an event a producer names by its v1 subject.
CURRENT: dict[str, str] = {old: new for new, (old, _) in DOWNCASTS.items()}


def published_as(subject: str, data: BaseModel) -> list[tuple[str, BaseModel]]:
    """The subjects and payloads one event goes out as: its current version, then any older
    version still published beside it."""
    subject = CURRENT.get(subject, subject)
    if not isinstance(data, EVENTS[subject]):
        raise TypeError(f"{subject} carries {EVENTS[subject].__name__}, not {type(data).__name__}")
    out = [(subject, data)]
    if subject in DOWNCASTS:
        older, model = DOWNCASTS[subject]
        out.append((older, model.model_validate(data.model_dump(include=set(model.model_fields)))))
    return out


def is_newer_copy(type_: str) -> bool:
    """Whether an event of this type has an older copy beside it (count that one instead)."""
    return type_ in DOWNCASTS


class UnknownType(ValueError):
    """The envelope's type names no subject of the contract."""


def model_for(type_: str) -> type[BaseModel]:
    model = EVENTS.get(type_) or COMMANDS.get(type_)
    if model is None:
        raise UnknownType(f"unknown event or command type {type_!r}")
    return model


def parse_event(raw: bytes | str | dict[str, Any]) -> tuple[Envelope[Any], BaseModel]:
    """Decode an envelope and type its data; raises `pydantic.ValidationError`/`UnknownType`."""
    env = (
        Envelope[dict[str, Any]].model_validate(raw)
        if isinstance(raw, dict)
        else Envelope[dict[str, Any]].model_validate_json(raw)
    )
    type_, data = env.type, env.data
    while type_ in UPCASTERS:
        type_, upgrade = UPCASTERS[type_]
        data = upgrade(data)
    return env, model_for(type_).model_validate(data)
