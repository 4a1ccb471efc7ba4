"""Every subject and stream of DESIGN §3, and who may publish or subscribe to what.

`SERVICE_ACCESS` is the single source for NATS permissions (deploy/nats is rendered from it)
and for each service's AsyncAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "gridcase"


@dataclass(frozen=True)
class Stream:
    name: str
    subjects: tuple[str, ...]
    description: str


INTAKE = Stream("GRIDCASE_INTAKE", ("gridcase.intake.>",), "inbound reports; intake's rejections")
CASES = Stream("GRIDCASE_CASES", ("gridcase.case.>",), "case lifecycle events")
MEDIATION = Stream("GRIDCASE_MEDIATION", ("gridcase.mediation.>",), "mediation events")
DISPATCH = Stream("GRIDCASE_DISPATCH", ("gridcase.dispatch.>",), "volunteer dispatch events")
DIRECTORY = Stream("GRIDCASE_DIRECTORY", ("gridcase.directory.>",), "directory changes")
DLQ = Stream("GRIDCASE_DLQ", ("gridcase.dlq.>",), "messages that could not be processed")

STREAMS: tuple[Stream, ...] = (INTAKE, CASES, MEDIATION, DISPATCH, DIRECTORY, DLQ)


def stream_for(subject: str) -> Stream:
    for stream in STREAMS:
        if any(subject.startswith(s[:-1]) for s in stream.subjects):
            return stream
    raise KeyError(f"no stream holds {subject!r}")


# ---- inbound -------------------------------------------------------------------------
INTAKE_REPORT = "gridcase.intake.report.v1"
INTAKE_REJECTED = "gridcase.intake.rejected.v1"


def case_event(name: str) -> str:
    return f"gridcase.case.{name}.v1"


def mediation_event(name: str) -> str:
    return f"gridcase.mediation.{name}.v1"


def dispatch_event(name: str, version: int = 1) -> str:
    return f"gridcase.dispatch.{name}.v{version}"


# `unfilled` gained the level of the assignment its task served (routing must not escalate a
# case on a task it has already moved past). v1 is still published beside it: see
# `catalogue.DOWNCASTS`.
DISPATCH_UNFILLED_V2 = dispatch_event("unfilled", 2)


def command(service: str, verb: str) -> str:
    return f"gridcase.cmd.{service}.{verb}.v1"


def dlq_subject(stream: str, consumer: str) -> str:
    return f"gridcase.dlq.{stream}.{consumer}"


CASE_EVENTS = (
    "received",
    "assigned",
    "accepted",
    "noted",
    "paused",
    "resumed",
    "sla_warning",
    "escalated",
    "resolved",
    "feedback_recorded",
    "reopened",
    "referred",
    "closed",
)
CASE_COMMANDS = (
    "accept",
    "note",
    "pause",
    "resume",
    "resolve",
    "escalate",
    "refer",
    "feedback",
    "reassign",
    "withdraw",
)
MEDIATION_EVENTS = (
    "opened",
    "mediator_assigned",
    "consent_recorded",
    "session_recorded",
    "agreed",
    "failed",
    "followed_up",
    "closed",
)
MEDIATION_COMMANDS = (
    "assign_mediator",
    "record_consent",
    "record_session",
    "record_agreement",
    "record_failure",
    "record_follow_up",
)
DISPATCH_EVENTS = (
    "volunteer_registered",
    "task_opened",
    "offered",
    "accepted",
    "declined",
    "expired",
    "completed",
    "unfilled",
    "cancelled",
)
DISPATCH_COMMANDS = ("register_volunteer", "respond", "claim", "complete")

DIRECTORY_CHANGED = "gridcase.directory.changed.v1"
DIRECTORY_LOAD = command("directory", "load")
INTAKE_SUBMIT = command("intake", "submit")
INTAKE_CONTACT = command("intake", "contact")
STATS_QUERY = command("stats", "query")


def durable_name(service: str, subject: str, instance: str = "") -> str:
    """`routing` + `gridcase.case.received.v1` → `routing-case-received`; `>` → `all`; a later
    version keeps its suffix (`routing-dispatch-unfilled-v2`): a durable's filter cannot be
    changed in place, so a new version must get a durable of its own.

    An `instance` (a replicated read model's instance id) is appended: `stats-case-all-stats-0`.
    """
    parts = subject.split(".")[1:]
    if parts and parts[-1] == "v1":
        parts = parts[:-1]
    name = "-".join([service, *[("all" if p == ">" else p) for p in parts]]).replace("_", "-")
    return f"{name}-{instance}" if instance else name


@dataclass(frozen=True)
class ServiceAccess:
    """What one service publishes, consumes (JetStream durables) and serves (commands)."""

    service: str
    publishes: tuple[str, ...]
    consumes: tuple[str, ...]
    serves: tuple[str, ...]
    # core (non-durable) subscriptions every replica gets, e.g. a nudge to reload a cache
    listens: tuple[str, ...] = ()
    # A replicated read model: each replica is an independent instance (`GRIDCASE_INSTANCE`)
    # that reads every event through durables of its own and keeps a database of its own,
    # instead of sharing the durables and the database with the other replicas.
    replicated: bool = False
    # the instance ids deployments give its replicas (k8s: the StatefulSet's pod names);
    # NACK consumers and NATS permissions are rendered for each
    instances: tuple[str, ...] = ()

    @property
    def durables(self) -> tuple[tuple[str, str], ...]:
        """(stream, durable name) for each consumed subject: one durable per subject."""
        return self.durables_of("")

    def durables_of(self, instance: str) -> tuple[tuple[str, str], ...]:
        """The durables one instance reads through (`""`: the default, unsuffixed names)."""
        return tuple((stream_for(s).name, durable_name(self.service, s, instance)) for s in self.consumes)

    @property
    def instance_durables(self) -> tuple[tuple[str, str], ...]:
        """Every declared instance's durables (none unless `replicated`)."""
        return tuple(d for i in self.instances for d in self.durables_of(i))


SERVICE_ACCESS: dict[str, ServiceAccess] = {
    "intake": ServiceAccess(
        service="intake",
        publishes=(case_event("received"), INTAKE_REJECTED),
        consumes=(INTAKE_REPORT, case_event("assigned"), case_event("closed"), DIRECTORY_CHANGED),
        serves=(INTAKE_SUBMIT, INTAKE_CONTACT),
    ),
    "routing": ServiceAccess(
        service="routing",
        publishes=tuple(case_event(e) for e in CASE_EVENTS if e != "received")
        + (DIRECTORY_CHANGED,),
        consumes=(
            case_event("received"),
            mediation_event("opened"),
            mediation_event("agreed"),
            mediation_event("failed"),
            dispatch_event("completed"),
            DISPATCH_UNFILLED_V2,
        ),
        serves=tuple(command("case", v) for v in CASE_COMMANDS) + (DIRECTORY_LOAD,),
        listens=(DIRECTORY_CHANGED,),
    ),
    "mediation": ServiceAccess(
        service="mediation",
        publishes=tuple(mediation_event(e) for e in MEDIATION_EVENTS),
        consumes=(case_event("received"), case_event("assigned"), case_event("closed"), DIRECTORY_CHANGED),
        serves=tuple(command("mediation", v) for v in MEDIATION_COMMANDS),
    ),
    "dispatch": ServiceAccess(
        service="dispatch",
        publishes=tuple(dispatch_event(e) for e in DISPATCH_EVENTS) + (DISPATCH_UNFILLED_V2,),
        consumes=(case_event("received"), case_event("assigned"), case_event("closed")),
        serves=tuple(command("dispatch", v) for v in DISPATCH_COMMANDS),
        # every replica keeps the volunteer registry in memory: it hears each registration
        listens=(dispatch_event("volunteer_registered"),),
    ),
    "stats": ServiceAccess(
        service="stats",
        publishes=(),
        consumes=("gridcase.case.>", "gridcase.mediation.>", "gridcase.dispatch.>", DIRECTORY_CHANGED),
        serves=(STATS_QUERY,),
        # in-memory KPI rollups: every replica must see every event to hold the whole picture
        replicated=True,
        instances=("stats-0", "stats-1"),
    ),
}

SERVICES: tuple[str, ...] = tuple(SERVICE_ACCESS)


def instance_of(service: str, instance: str) -> str:
    """The instance id a service's durables and database carry: `instance` for a replicated
    read model, `""` (shared durables and database) for every other service."""
    access = SERVICE_ACCESS.get(service)
    return instance if access is not None and access.replicated else ""


SERVICE_PORTS: dict[str, int] = {
    "intake": 8101,
    "routing": 8102,
    "mediation": 8103,
    "dispatch": 8104,
    "stats": 8105,
}
