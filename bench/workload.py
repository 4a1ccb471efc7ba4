"""Synthetic, contract-valid workload: the directory, report envelopes and `case.received` events.

The directory is the demo's (`demo/directory.yaml`, all people fictional) when it loads, else a
generated one. Bodies are built as plain dicts and serialised with `json` (fast enough for
thousands per second); one of each kind is validated against the contract models at start.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.contract.case import CaseReceived
from shared.contract.directory import Directory
from shared.contract.envelope import Envelope, new_id
from shared.contract.intake import Report
from shared.contract.subjects import INTAKE_REPORT, case_event

from .common import REPO

CASE_RECEIVED = case_event("received")

# (category, weight, kind) — mostly direct handling, some disputes and help requests
CATEGORY_MIX: list[tuple[str, float]] = [
    ("facility.parking", 14),
    ("facility.utilities", 12),
    ("environment.sanitation", 14),
    ("enquiry.policy", 10),
    ("safety.hazard", 5),
    ("service.social_security", 6),
    ("service.enrollment", 3),
    ("service.employment", 3),
    ("facility.housing", 4),
    ("other", 4),
    ("dispute.neighbour", 9),
    ("dispute.family", 3),
    ("dispute.property", 3),
    ("help.home_service", 6),
    ("help.micro_wish", 4),
]
CHANNELS = ["hotline_12345", "wechat", "service_window", "grid_patrol", "mini_program"]


def synthetic_directory(communities: int = 4, grids: int = 8, buildings: int = 6) -> Directory:
    d: dict[str, list[dict[str, Any]]] = {
        "districts": [{"code": "bd1", "name": "Bench District"}],
        "streets": [{"code": "bs1", "name": "Bench Street", "district": "bd1"}],
        "communities": [],
        "grids": [],
        "buildings": [],
        "staff": [{"id": "s-bs1-so", "name": "Bench Officer", "role": "street_officer", "unit": "bs1", "languages": ["zh"]}],
    }
    for c in range(communities):
        cc = f"bc{c}"
        d["communities"].append({"code": cc, "name": f"Bench Community {c}", "district": "bd1", "street": "bs1"})
        d["staff"] += [
            {"id": f"s-{cc}-dir", "name": "Director", "role": "community_director", "unit": cc, "languages": ["zh"]},
            {"id": f"s-{cc}-med", "name": "Mediator", "role": "mediator", "unit": cc, "languages": ["zh", "mn"]},
        ]
        for g in range(grids):
            gc = f"{cc}-g{g}"
            d["grids"].append({"code": gc, "name": f"Grid {g}", "community": cc})
            d["staff"].append({"id": f"s-{gc}-gw", "name": "Grid worker", "role": "grid_worker", "unit": gc, "languages": ["zh"]})
            for b in range(buildings):
                bc = f"{gc}-b{b}"
                d["buildings"].append({"code": bc, "grid": gc, "address": f"Bench {c}-{g}-{b}"})
                d["staff"].append({"id": f"s-{bc}-bh", "name": "Building head", "role": "building_head", "unit": bc, "languages": ["zh"]})
    return Directory.model_validate(d)


def load_directory() -> tuple[Directory, str]:
    path = REPO / "demo" / "directory.yaml"
    try:
        import yaml

        return Directory.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8"))), "demo/directory.yaml"
    except Exception:
        return synthetic_directory(), "synthetic"


@dataclass
class Place:
    building: str
    grid: str
    community: str
    district: str


class Workload:
    """Deterministic generator of reports and received events over one directory."""

    def __init__(self, directory: Directory, source: str, seed: int = 10) -> None:
        self.directory = directory
        self.source = source
        self.run = new_id()[-8:]  # external ids unique per run: idempotency is forever
        rng = random.Random(seed)
        grid_comm = {g.code: g.community for g in directory.grids}
        comm_dist = {c.code: c.district for c in directory.communities}
        self.places = [
            Place(b.code, b.grid, grid_comm.get(b.grid, ""), comm_dist.get(grid_comm.get(b.grid, ""), ""))
            for b in directory.buildings
            if b.grid in grid_comm
        ]
        if not self.places:
            raise ValueError("directory has no buildings")
        cats = [c for c, _ in CATEGORY_MIX]
        weights = [w for _, w in CATEGORY_MIX]
        self._cats = [rng.choices(cats, weights)[0] for _ in range(997)]
        self._validate()

    @classmethod
    def default(cls) -> Workload:
        d, src = load_directory()
        return cls(d, src)

    # ---- reports ----------------------------------------------------------------------------
    def external_id(self, n: int, prefix: str = "b") -> str:
        return f"bench-{prefix}-{self.run}-{n}"

    def report_data(self, n: int, prefix: str = "b", category: str | None = None) -> dict[str, Any]:
        place = self.places[n % len(self.places)]
        cat = category or self._cats[n % len(self._cats)]
        data: dict[str, Any] = {
            "channel": CHANNELS[n % len(CHANNELS)],
            "external_id": self.external_id(n, prefix),
            "reported_at": datetime.now(UTC).isoformat(),
            "category": cat,
            "priority": "urgent" if cat == "safety.hazard" else "normal",
            "title": f"bench report {n}",
            "description": "楼道灯不亮，晚上出入不便，请尽快处理。Bench workload text of a typical length for a resident report.",
            # Distinct problems, located by grid: a report naming a building (or address) with the
            # category of a case still open there is linked as a duplicate and merged, never
            # assigned — at bench rates over ~200 buildings that would be nearly every report.
            "location": {"grid": place.grid, "community": place.community},
            "reporter": {"name": "测试居民（虚构）", "phone": f"1380000{n % 10000:04d}", "anonymous": False},
        }
        if cat.startswith("dispute."):
            data["parties"] = [
                {"role": "applicant", "name": "甲（虚构）", "phone": "13900000001", "language": "zh"},
                {"role": "respondent", "name": "乙（虚构）", "language": "mn"},
            ]
        if cat.startswith("help."):
            data["needs"] = {"skills": ["escort"], "people": 1}
        return data

    def report_envelope(self, n: int, prefix: str = "b", category: str | None = None) -> tuple[str, bytes]:
        eid = new_id()
        env = {
            "specversion": "1.0",
            "id": eid,
            "source": "/bench/platform",
            "type": INTAKE_REPORT,
            "time": datetime.now(UTC).isoformat(),
            "subject": None,
            "datacontenttype": "application/json",
            "data": self.report_data(n, prefix, category),
        }
        return eid, json.dumps(env, ensure_ascii=False).encode()

    # ---- case.received straight to routing (scenario 3) -------------------------------------------
    def received_envelope(self, n: int, *, category: str = "facility.parking", prefix: str = "r") -> tuple[str, str, bytes]:
        place = self.places[n % len(self.places)]
        case_id = "C-" + new_id()
        now = datetime.now(UTC).isoformat()
        data = {
            "case_id": case_id,
            "version": 1,
            "category": category,
            "scope": {"district": place.district, "community": place.community, "grid": place.grid},
            "at": now,
            "channel": "grid_patrol",
            "external_id": self.external_id(n, prefix),
            "priority": "normal",
            "title": f"bench case {n}",
            "description": "bench",
            "reported_at": now,
            "location": {"building": place.building, "grid": place.grid, "community": place.community},
            "located": True,
            "duplicate_of": None,
            "parties": [],
            "needs": None,
        }
        eid = new_id()
        env = {
            "specversion": "1.0",
            "id": eid,
            "source": "/gridcase/intake",
            "type": CASE_RECEIVED,
            "time": now,
            "subject": case_id,
            "datacontenttype": "application/json",
            "data": data,
        }
        return case_id, eid, json.dumps(env, ensure_ascii=False).encode()

    def _validate(self) -> None:
        for cat, _ in CATEGORY_MIX:
            _, body = self.report_envelope(0, category=cat)
            Envelope[Report].model_validate_json(body)
        _, _, body = self.received_envelope(0)
        Envelope[CaseReceived].model_validate_json(body)

    def directory_json(self) -> dict[str, Any]:
        return self.directory.model_dump(mode="json")
