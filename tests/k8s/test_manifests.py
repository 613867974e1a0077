"""The manifests that deploy shipflow itself (`infra/kubernetes/`): schema-valid for a
recent Kubernetes (offline, with kubernetes-validate), wired together, and with RBAC that
is least privilege yet enough for every call the kubernetes target makes."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.base import JobRequest, RolloutRequest
from shipflow.activities.targets.kubernetes import KubernetesTarget
from shipflow.workflows.spec import Strategy
from tests.k8s.conftest import Cluster, RecordingProgress
from tests.k8s.emulator import KubeEmulator

MANIFESTS = Path(__file__).resolve().parents[2] / "infra" / "kubernetes"
K8S_VERSION = "1.34.0"

#: What the kubernetes target needs, and so exactly what the worker's Role grants.
NEEDED = {
    ("apps", "deployments"): {"get", "list", "watch", "patch", "create", "delete"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("batch", "jobs"): {"create", "get", "list", "delete"},
    ("", "pods"): {"get", "list"},
    ("", "pods/log"): {"get"},
    # secret/config groups: one immutable object per group version, collected when no
    # ReplicaSet, Deployment or Job refers to it (never read back: `get` is not needed)
    ("", "secrets"): {"create", "list", "delete"},
    ("", "configmaps"): {"create", "list", "delete"},
    ("apps", "replicasets"): {"list"},
    # canary and blue-green: the stable's HorizontalPodAutoscaler, if any (never changed)
    ("autoscaling", "horizontalpodautoscalers"): {"list"},
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


@pytest.mark.parametrize(("name", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_is_valid_for_a_recent_kubernetes(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk


def test_rbac_is_least_privilege() -> None:
    kinds = {doc["kind"] for _, doc in documents()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "no cluster-wide roles"
    (role,) = of_kind("Role")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        assert "resourceNames" not in rule or rule["resourceNames"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                # Secrets: only the objects of groups; never `get`/`watch` (no reading of
                # other secrets one by one), and no update (a group version is immutable).
                if resource == "secrets":
                    assert set(rule["verbs"]) <= {"create", "list", "delete"}
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == NEEDED
    (binding,) = of_kind("RoleBinding")
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    (subject,) = binding["subjects"]
    worker = next(d for d in of_kind("Deployment") if d["metadata"]["name"] == "shipflow-worker")
    assert subject["kind"] == "ServiceAccount"
    assert subject["name"] == worker["spec"]["template"]["spec"]["serviceAccountName"]
    assert subject["namespace"] == worker["metadata"]["namespace"]


def _request_rule(verb: str, path: str) -> tuple[tuple[str, str], str]:
    m = re.match(r"^/(?:api/v1|apis/(?P<group>[^/]+)/v\d+)/namespaces/[^/]+/(?P<res>[^/]+)(?:/[^/]+(?:/(?P<sub>[^/]+))?)?$", path)
    assert m, path
    resource = m["res"] + (f"/{m['sub']}" if m["sub"] else "")
    return (m["group"] or "", resource), verb


def test_the_role_allows_every_call_the_target_makes(cluster: Cluster, emulator: KubeEmulator) -> None:
    """Drive a rollout, a canary, a blue-green and a job; every request must be in the Role."""
    old, new = cluster.images
    cluster.create_deployment("api", old)
    emulator.add_service(cluster.namespace, "api", {"app": "api"})
    emulator.requests.clear()
    target = KubernetesTarget(cluster.spec, Settings(heartbeat_timeout_s=4))
    target.current_image("api")
    target.rollout(RolloutRequest(run_id="r", step_id="d", service="api", image=new), RecordingProgress())
    for image, strategy in (
        (old, {"canary": {"steps": [{"set_weight": 50}, {"pause": {"duration": "10ms"}}]}}),
        (new, {"blue_green": {"auto_promote_after": "0s", "scale_down_delay": "0s"}}),
    ):
        target.rollout(RolloutRequest(run_id="r", step_id="s", service="api", image=image,
                                      strategy=Strategy.model_validate(strategy)), RecordingProgress())
    target.run_job(JobRequest(run_id="r", step_id="m", name=f"m-{secrets.token_hex(3)}", command=["true"],
                              image="app:1"), RecordingProgress())
    used: dict[tuple[str, str], set[str]] = {}
    for verb, path in emulator.requests:
        rule, verb = _request_rule(verb, path)
        used.setdefault(rule, set()).add(verb)
    for rule, verbs in used.items():
        assert verbs <= NEEDED.get(rule, set()), (rule, verbs)


def test_api_has_health_probes_and_a_service() -> None:
    api = next(d for d in of_kind("Deployment") if d["metadata"]["name"] == "shipflow-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert container[probe]["httpGet"]["port"] in ("http", 8000)
    (service,) = of_kind("Service")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert api["spec"]["template"]["metadata"]["labels"].items() >= service["spec"]["selector"].items()
    # the API never talks to the Kubernetes API: no token mounted
    assert api["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_settings_come_from_the_secret_with_the_real_env_names() -> None:
    (secret,) = of_kind("Secret")
    keys = set(secret["stringData"])
    fields = {f"SHIPFLOW_{name.upper()}" for name in Settings.model_fields}
    shipflow_keys = {k for k in keys if k.startswith("SHIPFLOW_")}
    assert {"SHIPFLOW_TEMPORAL_ADDRESS", "SHIPFLOW_DATABASE_URL"} <= shipflow_keys
    assert shipflow_keys <= fields, shipflow_keys - fields
    for deployment in of_kind("Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
        for env in container.get("env", []):
            assert env["name"] in fields, env["name"]
            assert "valueFrom" in env or not re.search(r"(?i)password|secret|token", env["name"])


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The schema check is real: an unknown field and a wrong type are both caught."""
    _, api = next((n, d) for n, d in documents() if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(api))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(api))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
