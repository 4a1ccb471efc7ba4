"""Builders for routing tests: a directory of N communities × grids × buildings, policies, received events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.contract import subjects as s
from shared.contract.case import CaseReceived
from shared.contract.envelope import Envelope, new_id
from shared.contract.intake import Location

CN = "零一二三四五六七八九"
COMMUNITY_NAMES = ["民族团结社区", "金川社区", "先锋社区", "新华社区", "胜利社区", "团结社区"]


def chinese(n: int) -> str:
    """12 → 十二, 30 → 三十, 7 → 七."""
    if n < 10:
        return CN[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else CN[tens]) + "十" + (CN[ones] if ones else "")


def address(c: int, g: int, b: int) -> str:
    return f"{COMMUNITY_NAMES[c - 1]}第{g}片区{b}号楼"


def build_directory(communities: int = 4, grids: int = 11, buildings: int = 30, *, staff: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {
        "districts": [{"code": "linhe", "name": "临河区"}],
        "streets": [{"code": "s1", "name": "一街道", "district": "linhe"}, {"code": "s2", "name": "二街道", "district": "linhe"}],
        "communities": [],
        "grids": [],
        "buildings": [],
        "staff": [{"id": "so-1", "name": "街道干部", "role": "street_officer", "unit": "s1"}],
    }
    for c in range(1, communities + 1):
        cc = f"c{c}"
        d["communities"].append({"code": cc, "name": COMMUNITY_NAMES[c - 1], "district": "linhe", "street": "s1"})
        if staff:
            d["staff"].append({"id": f"dir-{cc}", "name": "主任", "role": "community_director", "unit": cc})
            d["staff"].append({"id": f"med-{cc}", "name": "调解员", "role": "mediator", "unit": cc})
        for g in range(1, grids + 1):
            gc = f"{cc}-g{g:02d}"
            d["grids"].append({"code": gc, "name": f"第{g}网格", "community": cc})
            if staff:
                d["staff"].append({"id": f"gw-{gc}-a", "name": "网格员甲", "role": "grid_worker", "unit": gc})
                d["staff"].append({"id": f"gw-{gc}-b", "name": "网格员乙", "role": "grid_worker", "unit": gc})
            for b in range(1, buildings + 1):
                bc = f"{gc}-b{b:02d}"
                d["buildings"].append(
                    {
                        "code": bc,
                        "grid": gc,
                        "address": address(c, g, b),
                        "aliases": [f"{COMMUNITY_NAMES[c - 1]}{chinese(g)}区{chinese(b)}栋"],
                    }
                )
    if not staff:
        d["staff"] = []
    return d


def write_policy(tmp_path: Path, **clocks: Any) -> Path:
    """A policy with second-scale clocks: `grid=(respond_s, resolve_s)` etc.; defaults are short."""
    base = {"building": (2, 6), "grid": (2, 5), "community": (3, 8), "street": (3, 8)}
    extra = clocks.pop("extra", {})
    base.update(clocks)
    policy = {
        "clocks": {
            lv: {
                "normal": {"respond": f"PT{r}S", "resolve": f"PT{z}S"},
                "urgent": {"respond": f"PT{r}S", "resolve": f"PT{z}S"},
            }
            for lv, (r, z) in base.items()
        },
        "feedback_window": "PT3S",
        "triage_unit": "s1",
        **extra,
    }
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps(policy), encoding="utf-8")  # JSON is valid YAML
    return path


def received(
    case_id: str | None = None,
    *,
    category: str = "facility.parking",
    priority: str = "normal",
    duplicate_of: str | None = None,
    **location: Any,
) -> CaseReceived:
    case_id = case_id or "C-" + new_id()
    now = datetime.now(UTC)
    return CaseReceived(
        case_id=case_id,
        version=1,
        category=category,
        scope={"district": None, "community": None, "grid": None},
        at=now,
        channel="wechat",
        external_id="x-" + case_id,
        priority=priority,
        title="楼道灯坏了",
        description="",
        reported_at=now,
        location=Location(**(location or {"community": "c1"})),
        located=False,
        duplicate_of=duplicate_of,
        parties=[],
        needs=None,
    )


async def publish_received(js, data: CaseReceived) -> None:
    env = Envelope.new(s.case_event("received"), data.model_dump(mode="json"), source="/gridcase/intake", subject=data.case_id)
    await js.publish(env.type, env.to_json(), headers={"Nats-Msg-Id": env.id})


async def publish_event(js, subject: str, data: dict[str, Any], *, id: str | None = None, source: str = "/gridcase/mediation") -> str:
    env = Envelope.new(subject, data, source=source, subject=data.get("case_id"), id=id)
    await js.publish(env.type, env.to_json(), headers={"Nats-Msg-Id": env.id})
    return env.id
