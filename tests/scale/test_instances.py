"""Stats instances (`GRIDCASE_INSTANCE`): a replicated read model's durables and database carry
the instance id; every other service, and stats without an instance, keep today's names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.app import build_app
from shared.contract.subjects import SERVICE_ACCESS, durable_name, instance_of
from shared.settings import Settings

pytestmark = pytest.mark.unit


def durables(service: str, **settings) -> set[str]:
    _, rt = build_app(service, Settings(service=service, **settings))
    return {c.durable for c in rt.messaging.consumers}


def test_default_names_are_unchanged() -> None:
    st = Settings(service="stats")
    assert st.instance == "" and st.database_name() == "gridcase_stats"
    assert durables("stats") == {"stats-case-all", "stats-mediation-all", "stats-dispatch-all", "stats-directory-changed"}
    assert durables("stats") == {d for _, d in SERVICE_ACCESS["stats"].durables}
    assert durable_name("routing", "gridcase.case.received.v1") == "routing-case-received"
    # a later version gets a durable of its own (an existing durable's filter cannot change)
    assert durable_name("routing", "gridcase.dispatch.unfilled.v2") == "routing-dispatch-unfilled-v2"


def test_a_stats_instance_has_durables_and_a_database_of_its_own() -> None:
    st = Settings(service="stats", instance="stats-1", database_prefix="x")
    assert st.database_name() == "x_stats_stats-1"
    assert durables("stats", instance="stats-1") == {
        "stats-case-all-stats-1",
        "stats-mediation-all-stats-1",
        "stats-dispatch-all-stats-1",
        "stats-directory-changed-stats-1",
    }
    assert durables("stats", instance="stats-1") == {d for _, d in SERVICE_ACCESS["stats"].durables_of("stats-1")}
    _, rt = build_app("stats", st)
    assert rt.db.name == "x_stats_stats-1"


@pytest.mark.parametrize("service", ["intake", "routing", "mediation", "dispatch"])
def test_scaled_services_ignore_the_instance(service: str) -> None:
    """They share durables and a database between replicas, whatever GRIDCASE_INSTANCE says."""
    st = Settings(service=service, instance="pod-7")
    assert instance_of(service, "pod-7") == "" and not SERVICE_ACCESS[service].replicated
    assert st.database_name() == f"gridcase_{service}"
    assert durables(service, instance="pod-7") == durables(service)
    # and stats' instance does not leak into another service's database name
    assert Settings(service="stats", instance="stats-0").database_name(service) == f"gridcase_{service}"


def test_instance_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDCASE_INSTANCE", "stats-0")
    assert Settings(service="stats").database_name() == "gridcase_stats_stats-0"


@pytest.mark.parametrize("bad", ["Stats-0", "stats_0", "stats.0", "-stats", "stats-", "a/b", "x" * 64])
def test_instance_must_be_a_dns_label(bad: str) -> None:
    """It ends up in durable names (no dots) and database names (no slashes): a pod name fits."""
    with pytest.raises(ValidationError):
        Settings(service="stats", instance=bad)


def test_declared_instances_are_the_statefulset_pod_names() -> None:
    from deploy.k8s import render

    assert render.instances("stats") == ("stats-0", "stats-1") == SERVICE_ACCESS["stats"].instances
    assert {a.service for a in SERVICE_ACCESS.values() if a.replicated} == {"stats"}
