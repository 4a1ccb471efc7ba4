"""Report factories and event payloads shared by intake's integration tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.contract import subjects as s

# Personal data that must never leave intake: grepped for in everything intake publishes and logs.
NAMES = ("测试姓名甲", "Bataar Testname", "测试姓名乙")
PHONE = "1398765{:04d}"  # 13987650000 … 13987659999


def report(i: int, *, channel: str = "wechat", category: str = "facility.utilities", building: str | None = None, **over: Any) -> dict[str, Any]:
    data = {
        "channel": channel,
        "external_id": f"ext-{i}",
        "reported_at": "2026-11-30T08:00:00+08:00",
        "category": category,
        "title": f"report {i}",
        "description": "water pipe leaking in the stairwell",
        "location": {"community": "jl", "building": building or f"jl-b{i}"},
        "reporter": {"name": NAMES[i % 2], "phone": PHONE.format(i % 10000), "anonymous": False},
        "parties": [{"role": "applicant", "name": NAMES[2], "phone": PHONE.format((i + 5000) % 10000), "language": "mn"}],
    }
    data.update(over)
    return data


def invalid_report(i: int) -> dict[str, Any]:
    """Invalid in several fields, personal data included (it must not be echoed)."""
    data = report(i)
    data["title"] = ""
    data["reporter"] = {"name": NAMES[0], "phone": f"{NAMES[1]} {PHONE.format(i)}"}
    if i % 2:
        data["channel"] = "fax"
    return data


def secrets() -> list[bytes]:
    """Byte patterns of every test name and phone (all 10,000 test phones share the prefix)."""
    out = [n.encode() for n in NAMES] + [json.dumps(n).encode() for n in NAMES]
    out.append(b"1398765")
    return out


def leaks(blob: bytes) -> list[bytes]:
    return [p for p in secrets() if p in blob]


def directory_changed(version: int, directors: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "version": version,
        "districts": [{"code": "linhe", "name": "临河区"}],
        "streets": [],
        "communities": [{"code": c, "name": c, "district": "linhe"} for c in ("jl", "xh")],
        "grids": [{"code": "jl-g1", "name": "一网格", "community": "jl"}],
        "buildings": [],
        "staff": [
            {"id": sid, "role": "community_director", "unit": community, "community": community}
            for community, ids in directors.items()
            for sid in ids
        ]
        + [{"id": "gw-1", "role": "grid_worker", "unit": "jl-g1", "community": "jl"}],
        "counts": {},
        "at": datetime.now(UTC).isoformat(),
    }


def case_assigned(case_id: str, version: int, assignee: str | None, community: str = "jl") -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "case_id": case_id,
        "version": version,
        "category": "facility.utilities",
        "scope": {"district": "linhe", "community": community, "grid": "jl-g1"},
        "at": now.isoformat(),
        "level": "grid",
        "unit": "jl-g1",
        "assignee": assignee,
        "handling": "direct",
        "respond_by": (now + timedelta(hours=2)).isoformat(),
        "resolve_by": (now + timedelta(hours=24)).isoformat(),
        "reason": "new",
    }


def case_closed(case_id: str, version: int) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "version": version,
        "category": "facility.utilities",
        "scope": {"district": None, "community": "jl", "grid": None},
        "at": datetime.now(UTC).isoformat(),
        "reason": "satisfied",
    }


RECEIVED = s.case_event("received")


async def stream_messages(js, stream: str, subject: str | None = None) -> list[Any]:
    """Like `tests.support.stream_messages`, but also stops on the plain `TimeoutError` that
    nats-py raises from `fetch` when its deadline ran out before the request (seen under load)."""
    import nats.errors
    from nats.js import api

    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(
        subject or ">",
        stream=stream,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL, inactive_threshold=30),
    )
    out: list[Any] = []
    try:
        while len(out) < info.state.messages:
            try:
                batch = await sub.fetch(500, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            out.extend(batch)
    finally:
        await sub.unsubscribe()
    return out
