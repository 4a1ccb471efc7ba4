"""Builders of the inputs mediation consumes (shared.contract models) and readers of its output."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from ulid import ULID

from shared.contract import subjects as s
from shared.contract.case import CaseAssigned, CaseClosed, CaseReceived, PartyRef
from shared.contract.common import Scope
from shared.contract.directory import DirectoryChanged, StaffEntry
from shared.contract.envelope import Envelope
from shared.contract.intake import Location

from ..support import eventually, stream_messages

COMMUNITY = "jl"  # 金路社区 (any directory code)
OTHER = "hs"
DIRECTOR = "dir-jl"


def new_case_id() -> str:
    return f"C-{ULID()}"


def staff(id: str, role: str = "mediator", community: str = COMMUNITY, languages: tuple[str, ...] = ("zh",)) -> StaffEntry:
    return StaffEntry(id=id, role=role, unit=community, community=community, languages=list(languages))


def directory(version: int, members: list[StaffEntry]) -> DirectoryChanged:
    return DirectoryChanged(
        version=version,
        districts=[],
        streets=[],
        communities=[],
        grids=[],
        buildings=[],
        staff=members,
        counts={"staff": len(members)},
        at=datetime.now(UTC),
    )


def scope(community: str = COMMUNITY) -> Scope:
    return Scope(district="linhe", community=community, grid=f"{community}-g1")


def received(case_id: str, languages: tuple[str | None, ...] = ("zh", "zh"), community: str = COMMUNITY) -> CaseReceived:
    roles = ["applicant", "respondent"]
    now = datetime.now(UTC)
    return CaseReceived(
        case_id=case_id,
        version=1,
        category="dispute.neighbour",
        scope=scope(community),
        at=now,
        channel="wechat",
        external_id=f"x-{case_id}",
        priority="normal",
        title="楼上漏水",
        description="",
        reported_at=now,
        location=Location(community=community),
        located=True,
        parties=[
            PartyRef(ref=f"p{i + 1}", role=roles[min(i, 1)], language=lang) for i, lang in enumerate(languages)
        ],
    )


def assigned(
    case_id: str,
    *,
    version: int = 2,
    level: str = "grid",
    reason: str = "new",
    handling: str = "mediation",
    community: str = COMMUNITY,
) -> CaseAssigned:
    now = datetime.now(UTC)
    return CaseAssigned(
        case_id=case_id,
        version=version,
        category="dispute.neighbour",
        scope=scope(community),
        at=now,
        level=level,
        unit=community if level == "community" else f"{community}-g1",
        assignee="gw-1",
        handling=handling,
        respond_by=now + timedelta(hours=2),
        resolve_by=now + timedelta(hours=24),
        reason=reason,
    )


def closed(case_id: str, version: int, reason: str = "withdrawn") -> CaseClosed:
    return CaseClosed(
        case_id=case_id, version=version, category="dispute.neighbour", scope=scope(), at=datetime.now(UTC), reason=reason
    )


SOURCE = {
    s.case_event("received"): "/gridcase/intake",
    s.DIRECTORY_CHANGED: "/gridcase/routing",
}


async def feed(js, subject: str, data: Any, *, id: str | None = None) -> None:
    """Publish an envelope as the owning service would."""
    payload = data.model_dump(mode="json")
    subject_id = payload.get("case_id")
    env = Envelope.new(subject, payload, source=SOURCE.get(subject, "/gridcase/routing"), id=id, subject=subject_id)
    await js.publish(subject, env.to_json(), headers={"Nats-Msg-Id": env.id})


async def mediation_events(js, case_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every mediation event now stored, in stream order."""
    out = []
    for m in await stream_messages(js, "GRIDCASE_MEDIATION"):
        env = json.loads(m.data)
        if case_id is None or env["data"]["case_id"] == case_id:
            assert env["type"] == m.subject and env["source"] == "/gridcase/mediation"
            assert m.headers["Nats-Msg-Id"] == env["id"]
            out.append((env["type"].split(".")[2], env["data"]))
    return out


async def wait_events(js, case_id: str, *names: str, timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
    """Wait until the case's mediation events include `names` (in this order as a subsequence)."""

    async def check():
        evs = await mediation_events(js, case_id)
        got = [n for n, _ in evs]
        it = iter(got)
        return evs if all(n in it for n in names) else None

    return await eventually(check, timeout=timeout, what=f"mediation events {names} for {case_id}")
