"""deploy/: compose file against the compose-spec schema (vendored by check-jsonschema,
offline), and the pieces it wires together: NATS config, Mongo init scripts, Prometheus,
alerts and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

from shared.contract.subjects import SERVICE_ACCESS, SERVICE_PORTS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
METRICS = {
    "gridcase_cases_received_total",
    "gridcase_cases_assigned_total",
    "gridcase_cases_escalated_total",
    "gridcase_cases_resolved_total",
    "gridcase_cases_open",
    "gridcase_cases_overdue",
    "gridcase_time_to_accept_seconds",
    "gridcase_time_to_resolve_seconds",
    "gridcase_mediation_outcomes_total",
    "gridcase_dispatch_outcomes_total",
    "gridcase_volunteer_hours_total",
    "gridcase_dlq_messages_total",
}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def test_compose_matches_compose_spec(compose):
    schema = get_builtin_schema("vendor.compose-spec")
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    errors = sorted(validator.iter_errors(compose), key=str)
    assert not errors, [e.message for e in errors]
    broken = json.loads(json.dumps(compose))
    broken["services"]["intake"]["restart_policy"] = "always"  # not a compose key
    assert list(validator.iter_errors(broken)), "schema must reject unknown keys"


def test_compose_topology(compose):
    services = compose["services"]
    nats = [n for n in services if re.fullmatch(r"nats-\d", n)]
    mongo = [n for n in services if re.fullmatch(r"mongo-\d", n)]
    assert len(nats) == 3 and len(mongo) == 3
    for n in nats:
        assert services[n]["image"].startswith("nats:")
        assert "./nats/nats-server.conf:/etc/nats/nats-server.conf:ro" in services[n]["volumes"]
        assert services[n]["environment"]["NATS_SERVER_NAME"] == n
    for m in mongo:
        assert "--replSet" in services[m]["command"]
    assert "init-replica-set.js" in " ".join(services["mongo-init"]["command"])
    for name in SERVICE_ACCESS:
        svc = services[name]
        env = svc["environment"]
        assert svc["command"] == [name] and svc["image"] == "gridcase:dev"
        assert env["GRIDCASE_DECLARE_STREAMS"] == "false"
        assert env["GRIDCASE_NATS_URL"].startswith(
            f"nats://{name}:${{GRIDCASE_NATS_{name.upper()}_PASSWORD"
        )
        assert env["GRIDCASE_MONGODB_URL"].startswith(
            f"mongodb://{name}:${{GRIDCASE_MONGO_{name.upper()}_PASSWORD"
        )
        assert "replicaSet=rs0" in env["GRIDCASE_MONGODB_URL"]
        assert svc["read_only"] is True and svc["user"] == "10001:10001"
        assert svc["ports"] == [f"{SERVICE_PORTS[name]}:{SERVICE_PORTS[name]}"]
    assert {"prometheus", "grafana", "nats-exporter", "nats-init"} <= set(services)


def test_no_secret_in_deploy_files():
    text = (DEPLOY / "compose.yaml").read_text()
    # every password is an interpolation of deploy/.env, never a literal
    for m in re.finditer(r"^\s*[A-Z_]*(PASSWORD|_KEY):\s*(\S+)", text, flags=re.M):
        assert m.group(2).startswith("${"), m.group(0)
    assert "change-me" in (DEPLOY / ".env.example").read_text()


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("FROM python:3.11-slim") == 2
    assert "pip install ." in text
    assert re.search(r"^USER 10001", text, flags=re.M)
    assert 'ENTRYPOINT ["gridcase", "run"]' in text


def test_prometheus_scrapes_all_services_and_loads_alerts():
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert {f"{s}:{p}" for s, p in SERVICE_PORTS.items()} <= targets
    assert "/etc/prometheus/alerts.yml" in prom["rule_files"]
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = " ".join(r["expr"] for g in alerts["groups"] for r in g["rules"])
    for metric in (
        "gridcase_cases_overdue",
        "gridcase_dlq_messages_total",
        "gridcase_consumer_pending",
        "gridcase_routing_timer_lateness_seconds_bucket",
    ):
        assert metric in exprs
    for g in alerts["groups"]:
        for r in g["rules"]:
            assert r["alert"] and r["expr"] and r["annotations"]["summary"]


def test_grafana_dashboard_and_provisioning():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "gridcase.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    used = set(re.findall(r"gridcase_[a-z_]+", exprs))
    used = {re.sub(r"_bucket$", "", m) for m in used}
    assert METRICS <= used, METRICS - used
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    ds = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    assert ds["datasources"][0]["uid"] == dash["panels"][0]["datasource"]["uid"]
    prov = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "gridcase.yaml").read_text()
    )
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_mongo_scripts():
    users = (DEPLOY / "mongo" / "init-users.js").read_text()
    assert 'role: "readWrite", db: `${PREFIX}_${service}`' in users
    for service in SERVICE_ACCESS:
        assert f'"{service}"' in users
    rs = (DEPLOY / "mongo" / "init-replica-set.js").read_text()
    assert "rs.initiate" in rs and "init-users.js" in rs
    node = shutil.which("node")
    assert node, "node (Debian nodejs) is needed to syntax-check the mongosh scripts"
    for script in ("init-users.js", "init-replica-set.js"):
        done = subprocess.run(
            [node, "--check", str(DEPLOY / "mongo" / script)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
