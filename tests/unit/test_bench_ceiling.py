"""The bench's CPU ceiling: the rate the CPU spent per item allows, on the machine's cores and on
the one core a database process can use."""

import pytest

from bench.common import CpuCeiling

pytestmark = pytest.mark.unit


def test_cpu_per_item_is_what_each_process_spent_over_the_items_done() -> None:
    c = CpuCeiling.measure({"routing": 10.0, "secantusdb": 20.0}, {"routing": 10.5, "secantusdb": 21.0}, 1000, cores=2)
    assert c is not None
    assert c.ms_per_item == {"routing": 0.5, "secantusdb": 1.0}
    assert c.system_ms == pytest.approx(1.5)


def test_the_busiest_database_bounds_the_rate_when_its_one_core_is_the_tighter_limit() -> None:
    # 2 cores / 1.5 ms = 1,333/s for the whole system; the database's one core / 1.0 ms = 1,000/s
    c = CpuCeiling({"routing": 0.5, "secantusdb": 1.0, "secantusdb-2": 0.2}, cores=2)
    assert c.busiest_database == "secantusdb"
    assert c.per_s == pytest.approx(1000)
    assert "secantusdb 1.00 ms per escalation → its one core allows 1,000/s" in c.describe("escalation")


def test_the_machine_bounds_the_rate_when_the_services_cost_more_than_the_databases() -> None:
    c = CpuCeiling({"intake": 3.0, "routing": 3.0, "secantusdb": 1.0, "secantusdb-2": 1.0}, cores=2)
    assert c.per_s == pytest.approx(250)  # 2,000 ms of CPU a second / 8 ms a report


def test_no_items_or_no_common_processes_give_no_ceiling() -> None:
    assert CpuCeiling.measure({"routing": 1.0}, {"routing": 2.0}, 0) is None
    assert CpuCeiling.measure({"routing": 1.0}, {"intake": 2.0}, 10) is None
    assert CpuCeiling({"routing": 0.0}, cores=2).per_s is None
