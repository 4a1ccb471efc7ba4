"""The demo directory and the minutes policy (issue 8)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import isodate
import pytest
import yaml

from shared.contract.common import Category, Role
from shared.contract.directory import Directory

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[2] / "demo"


@pytest.fixture(scope="module")
def directory() -> Directory:
    with open(DEMO / "directory.yaml", encoding="utf-8") as fh:
        return Directory.model_validate(yaml.safe_load(fh))


def test_directory_has_the_four_communities(directory: Directory) -> None:
    names = {c.code: c.name for c in directory.communities}
    assert names == {
        "jianglin": "江林社区",
        "zhongshan": "中山社区",
        "fuyuan": "富原社区",
        "nankai": "南开社区",
    }
    districts = {d.code: d.name for d in directory.districts}
    assert set(districts.values()) == {"临河区", "杭锦后旗", "五原县", "磴口县"}
    streets = {s.code: s for s in directory.streets}
    assert streets["jinchuan"].name == "金川街道" and streets["jinchuan"].district == "linhe"
    for c in directory.communities:
        assert c.district in districts
        assert c.street in streets and streets[c.street].district == c.district
    jianglin = next(c for c in directory.communities if c.code == "jianglin")
    assert jianglin.street == "jinchuan"


def test_grid_counts(directory: Directory) -> None:
    grids = Counter(g.community for g in directory.grids)
    assert grids["fuyuan"] == 11
    assert grids["nankai"] == 11
    assert grids["jianglin"] == 11  # one per residential compound
    assert grids["zhongshan"] >= 3


def test_buildings_per_grid_and_addresses(directory: Directory) -> None:
    grids = {g.code for g in directory.grids}
    per_grid = Counter(b.grid for b in directory.buildings)
    assert set(per_grid) == grids
    assert all(3 <= n <= 6 for n in per_grid.values())
    for b in directory.buildings:
        assert b.code.startswith(b.grid + "-b")
        assert "号楼" in b.address and b.address.split()[0].endswith("社区")
        assert 1 <= len(b.aliases) <= 2
    assert any(b.address == "江林社区 丽景苑小区 3号楼" for b in directory.buildings)


def test_codes_are_unique_ascii_and_referenced(directory: Directory) -> None:
    codes = (
        [d.code for d in directory.districts]
        + [s.code for s in directory.streets]
        + [c.code for c in directory.communities]
        + [g.code for g in directory.grids]
        + [b.code for b in directory.buildings]
    )
    staff_ids = [s.id for s in directory.staff]
    assert len(codes) == len(set(codes))
    assert len(staff_ids) == len(set(staff_ids))
    for code in codes + staff_ids:
        assert code.isascii() and code == code.lower(), code
    communities = {c.code for c in directory.communities}
    assert all(g.community in communities for g in directory.grids)
    aliases = [a for b in directory.buildings for a in b.aliases]
    addresses = [b.address for b in directory.buildings]
    assert len(set(aliases + addresses)) == len(aliases) + len(addresses)


def test_every_role_and_unit(directory: Directory) -> None:
    units = {
        Role.building_head: {b.code for b in directory.buildings},
        Role.grid_worker: {g.code for g in directory.grids},
        Role.community_director: {c.code for c in directory.communities},
        Role.mediator: {c.code for c in directory.communities},
        Role.street_officer: {s.code for s in directory.streets},
    }
    by_role: dict[Role, list] = {r: [] for r in Role}
    for s in directory.staff:
        assert s.unit in units[s.role], (s.id, s.role, s.unit)
        assert "zh" in s.languages
        by_role[s.role].append(s)
    assert all(by_role[r] for r in Role)
    assert {s.unit for s in by_role[Role.grid_worker]} == units[Role.grid_worker]
    assert {s.unit for s in by_role[Role.street_officer]} == units[Role.street_officer]
    directors = Counter(s.unit for s in by_role[Role.community_director])
    mediators = Counter(s.unit for s in by_role[Role.mediator])
    for c in units[Role.community_director]:
        assert 1 <= directors[c] <= 2
        assert 3 <= mediators[c] <= 5
    heads = {s.unit for s in by_role[Role.building_head]}
    assert 0 < len(heads) < len(units[Role.building_head])  # some buildings, not all


def test_some_staff_speak_mongolian(directory: Directory) -> None:
    mn = [s for s in directory.staff if "mn" in s.languages]
    assert len(mn) >= 10
    for c in directory.communities:  # every mediation team can work in Mongolian
        assert any(s.role == Role.mediator and s.unit == c.code for s in mn)


def test_names_are_marked_fictional(directory: Directory) -> None:
    for s in directory.staff:
        assert s.name.endswith("（虚构）") and s.name.startswith(("示例·", "测试员·")), s.name
    assert len({s.name for s in directory.staff}) == len(directory.staff)


def test_policy_minutes_has_the_design_shape() -> None:
    with open(DEMO / "policy-minutes.yaml", encoding="utf-8") as fh:
        policy = yaml.safe_load(fh)
    allowed = {
        "ladder",
        "clocks",
        "warning_fraction",
        "feedback_window",
        "mediation_norm",
        "dispatch",
        "triage_unit",
        "categories",
    }
    assert set(policy) == allowed
    assert policy["ladder"] == ["building", "grid", "community", "street"]
    for level, prios in policy["clocks"].items():
        assert level in policy["ladder"]
        for prio, clocks in prios.items():
            assert prio in ("normal", "urgent")
            assert set(clocks) == {"respond", "resolve"}
            for value in clocks.values():
                d = isodate.parse_duration(value)
                assert d.total_seconds() <= 3600  # minutes, not hours
            assert isodate.parse_duration(clocks["respond"]) < isodate.parse_duration(
                clocks["resolve"]
            )
    assert policy["clocks"]["grid"]["normal"] == {"respond": "PT2M", "resolve": "PT6M"}
    assert policy["clocks"]["community"]["normal"] == {"respond": "PT3M", "resolve": "PT10M"}
    assert 0 < policy["warning_fraction"] < 1
    assert policy["feedback_window"] == "PT5M"
    assert policy["mediation_norm"] == "PT15M"
    assert policy["dispatch"]["offer_ttl"] == "PT1M" and policy["dispatch"]["max_offers"] == 5
    assert policy["triage_unit"] == "jinchuan"
    assert set(policy["categories"]) == {c.value for c in Category}
    for rule in policy["categories"].values():
        assert set(rule) <= {"handling", "start", "priority"}
        assert rule["handling"] in ("direct", "mediation", "dispatch")
        assert rule["start"] in policy["ladder"]
    assert policy["categories"]["safety.hazard"]["priority"] == "urgent"
