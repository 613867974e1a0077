"""The emulator itself, through the official client: the API behaviours the target's
tests rely on are checked here, so a green target test means something."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.helpers import wait_until_sync
from tests.k8s.emulator import KubeEmulator, merge_patch, strategic_merge_patch

NS = "emu"


@pytest.fixture
def api(emulator: KubeEmulator, kubeconfig: str, tmp_path: Path) -> Any:
    import os

    api_client = config.new_client_from_config(config_file=os.environ["KUBECONFIG"], context=kubeconfig,
                                               persist_config=False)
    yield api_client
    api_client.close()


def test_strategic_merge_patch_merges_containers_and_env_by_name() -> None:
    base = {"containers": [{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                           {"name": "b", "image": "b:1"}]}
    patch = {"containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "3"},
                                                                   {"name": "X", "$patch": "delete"}]}]}
    out = strategic_merge_patch(base, patch)
    assert out["containers"][0] == {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "3"}]}
    assert out["containers"][1] == {"name": "b", "image": "b:1"}
    replaced = strategic_merge_patch({"p": {"httpGet": {"path": "/"}, "periodSeconds": 1}},
                                     {"p": {"$patch": "replace", "tcpSocket": {"port": 1}}})
    assert replaced == {"p": {"tcpSocket": {"port": 1}}}
    # a JSON merge patch replaces lists wholesale
    assert merge_patch(base, {"containers": [{"name": "c"}]}) == {"containers": [{"name": "c"}]}


def test_patch_bumps_generation_only_when_the_spec_changes(emulator: KubeEmulator, api: Any) -> None:
    emulator.add_deployment(NS, "api", "app:1")
    apps: Any = client.AppsV1Api(api)
    smp = "application/strategic-merge-patch+json"
    before = apps.read_namespaced_deployment("api", NS).metadata.generation
    apps.patch_namespaced_deployment("api", NS, {"metadata": {"labels": {"x": "y"}}}, _content_type=smp)
    assert apps.read_namespaced_deployment("api", NS).metadata.generation == before
    patch: Any = {"spec": {"template": {"spec": {"containers": [
        {"name": "api", "env": [{"name": "MODE", "value": "fast"}]}]}}}}
    dep = apps.patch_namespaced_deployment("api", NS, patch, _content_type=smp)
    assert dep.metadata.generation == before + 1
    assert dep.spec.template.spec.containers[0].env[0].value == "fast"
    assert dep.spec.template.spec.containers[0].image == "app:1"
    apps.patch_namespaced_deployment_status("api", NS, {"status": {"replicas": 7}},
                                            _content_type="application/merge-patch+json")
    assert apps.read_namespaced_deployment_status("api", NS).metadata.generation == before + 1
    assert len(emulator.patches_of(NS, "api")) == 3
    with pytest.raises(client.ApiException) as info:
        apps.patch_namespaced_deployment("api", NS, [{"op": "add"}])  # JSON patch: not emulated
    assert info.value.status == 415


def test_rollout_is_simulated_one_replica_per_tick(emulator: KubeEmulator, api: Any) -> None:
    emulator.add_deployment(NS, "api", "app:1", replicas=3)
    apps: Any = client.AppsV1Api(api)
    apps.patch_namespaced_deployment("api", NS, {"spec": {"template": {"spec": {"containers": [
        {"name": "api", "image": "app:2"}]}}}}, _content_type="application/strategic-merge-patch+json")
    seen = []
    w = watch.Watch()
    for event in w.stream(apps.list_namespaced_deployment, NS, field_selector="metadata.name=api", timeout_seconds=5):
        status = event["object"].status
        seen.append((status.updated_replicas or 0, status.replicas or 0, status.available_replicas or 0))
        if seen[-1] == (3, 3, 3) and event["object"].status.observed_generation == 2:
            w.stop()
    assert seen[-1] == (3, 3, 3)
    assert max(total for _, total, _ in seen) <= 4  # one surge pod at a time
    assert all(available >= 2 for _, _, available in seen[1:])  # old ones go as new ones get ready


def test_watch_honours_selector_resource_version_and_timeout(emulator: KubeEmulator, api: Any) -> None:
    emulator.add_deployment(NS, "a", "a:1")
    emulator.add_deployment(NS, "b", "b:1")
    emulator.add_deployment("other", "a", "a:1")
    apps: Any = client.AppsV1Api(api)
    listed = apps.list_namespaced_deployment(NS, field_selector="metadata.name=a")
    assert [d.metadata.name for d in listed.items] == ["a"]
    for name in ("a", "b"):
        apps.patch_namespaced_deployment(name, NS, {"metadata": {"labels": {"v": "2"}}},
                                         _content_type="application/merge-patch+json")
    started = time.monotonic()
    events = list(watch.Watch().stream(apps.list_namespaced_deployment, NS, field_selector="metadata.name=a",
                                       resource_version=listed.metadata.resource_version, timeout_seconds=1))
    assert time.monotonic() - started >= 0.9  # ends at timeoutSeconds
    assert events and {e["object"].metadata.name for e in events} == {"a"}
    assert events[0]["type"] == "MODIFIED" and events[0]["object"].metadata.labels["v"] == "2"
    assert int(events[0]["object"].metadata.resource_version) > int(listed.metadata.resource_version)


def test_watch_from_a_too_old_version_is_gone(api: Any, emulator: KubeEmulator) -> None:
    emulator.history = 5
    for i in range(10):
        emulator.add_deployment(NS, f"d{i}", "x:1")
    with pytest.raises(client.ApiException) as info:
        list(watch.Watch().stream(client.AppsV1Api(api).list_namespaced_deployment, NS,
                                  resource_version="2", timeout_seconds=1))
    assert info.value.status == 410


def test_errors_are_kubernetes_status_objects(emulator: KubeEmulator, api: Any) -> None:
    apps: Any = client.AppsV1Api(api)
    with pytest.raises(client.ApiException) as info:
        apps.read_namespaced_deployment("nope", NS)
    body = json.loads(info.value.body or "{}")
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["code"] == 404
    assert body["message"] == 'deployments.apps "nope" not found'
    emulator.fail("get", r"/deployments/x$", 403)
    with pytest.raises(client.ApiException) as info:
        apps.read_namespaced_deployment("x", NS)
    assert json.loads(info.value.body or "{}")["reason"] == "Forbidden"
    # and without the token, as on a real cluster
    anonymous = client.ApiClient(client.Configuration(host=emulator.url))
    with pytest.raises(client.ApiException) as info:
        client.AppsV1Api(anonymous).read_namespaced_deployment("x", NS)
    assert info.value.status == 401


def test_job_runs_a_pod_with_a_log_and_is_deleted_with_its_pods(emulator: KubeEmulator, api: Any) -> None:
    batch: Any = client.BatchV1Api(api)
    core: Any = client.CoreV1Api(api)
    emulator.job_outcome("mig", log="one\ntwo\nthree\n", exit_code=0)
    body: Any = {"metadata": {"name": "mig"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "job", "image": "x", "command": ["migrate"]}]}}}}
    batch.create_namespaced_job(NS, body)
    with pytest.raises(client.ApiException) as info:
        batch.create_namespaced_job(NS, body)
    assert info.value.status == 409 and json.loads(info.value.body or "{}")["reason"] == "AlreadyExists"
    wait_until_sync(
        lambda: any(c.type == "Complete" for c in batch.read_namespaced_job("mig", NS).status.conditions or []),
        timeout=5,
        what="job mig completes",
    )
    (pod,) = core.list_namespaced_pod(NS, label_selector="job-name=mig").items
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    log = core.read_namespaced_pod_log(pod.metadata.name, NS, tail_lines=2, _preload_content=False)
    assert log.data.decode() == "two\nthree\n"
    batch.delete_namespaced_job("mig", NS, body=client.V1DeleteOptions(propagation_policy="Background"))
    assert core.list_namespaced_pod(NS, label_selector="job-name=mig").items == []


def test_services_and_the_deployment_selector_rules_of_the_api(emulator: KubeEmulator, api: Any) -> None:
    """What canary and blue-green rely on, as the real API behaves: a Service's selector is
    patched in place (a map, merged key by key), its delete answers with the object, a
    Deployment's selector must match its template's labels and never changes."""
    core: Any = client.CoreV1Api(api)
    apps: Any = client.AppsV1Api(api)
    created = core.create_namespaced_service(NS, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    assert created.spec.type == "ClusterIP" and created.spec.cluster_ip and created.spec.ports[0].protocol == "TCP"
    patched = core.patch_namespaced_service("web", NS, {"spec": {"selector": {"app": "web-green"}}})
    assert patched.spec.selector == {"app": "web-green"} and patched.spec.cluster_ip == created.spec.cluster_ip
    with pytest.raises(client.ApiException) as no_ports:
        core.create_namespaced_service(NS, {"metadata": {"name": "bad"}, "spec": {"selector": {"app": "x"}}})
    assert no_ports.value.status == 422 and "spec.ports: Required value" in no_ports.value.body
    gone = core.delete_namespaced_service("web", NS)
    assert gone.metadata.name == "web"
    with pytest.raises(client.ApiException) as missing:
        core.read_namespaced_service("web", NS)
    assert missing.value.status == 404

    emulator.add_deployment(NS, "api", "app:1")
    body = {"metadata": {"name": "api-canary"}, "spec": {
        "replicas": 0, "selector": {"matchLabels": {"app": "api", "shipflow/track": "canary"}},
        "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "a", "image": "app:2"}]}}}}
    with pytest.raises(client.ApiException) as mismatch:
        apps.create_namespaced_deployment(NS, body)
    assert mismatch.value.status == 422 and "`selector` does not match template `labels`" in mismatch.value.body
    body["spec"]["template"]["metadata"]["labels"]["shipflow/track"] = "canary"
    apps.create_namespaced_deployment(NS, body)
    with pytest.raises(client.ApiException) as immutable:
        apps.patch_namespaced_deployment("api-canary", NS, {"spec": {"selector": {"matchLabels": {"app": "x"}},
                                                                      "template": {"metadata": {"labels": {"app": "x"}}}}})
    assert immutable.value.status == 422 and "field is immutable" in immutable.value.body


def test_horizontal_pod_autoscalers_in_autoscaling_v2(emulator: KubeEmulator, api: Any) -> None:
    """HPAs as the official client sends and reads them (typed models both ways), and a
    controller that keeps the target Deployment's size within its bounds."""
    scaling: Any = client.AutoscalingV2Api(api)
    apps: Any = client.AppsV1Api(api)
    emulator.add_deployment(NS, "api", "app:1", replicas=1)
    body = client.V2HorizontalPodAutoscaler(
        metadata=client.V1ObjectMeta(name="api"),
        spec=client.V2HorizontalPodAutoscalerSpec(
            scale_target_ref=client.V2CrossVersionObjectReference(api_version="apps/v1", kind="Deployment", name="api"),
            min_replicas=3,
            max_replicas=6,
            metrics=[client.V2MetricSpec(type="Resource", resource=client.V2ResourceMetricSource(
                name="cpu", target=client.V2MetricTarget(type="Utilization", average_utilization=70)))],
        ),
    )
    created = scaling.create_namespaced_horizontal_pod_autoscaler(NS, body)
    assert created.kind == "HorizontalPodAutoscaler" and created.api_version == "autoscaling/v2"
    assert created.spec.scale_target_ref.name == "api" and created.status.desired_replicas == 0
    # The controller scales the Deployment up to minReplicas, and says so in the status.
    assert wait_until_sync(lambda: apps.read_namespaced_deployment("api", NS).spec.replicas == 3, what="scaled to min")
    assert wait_until_sync(
        lambda: scaling.read_namespaced_horizontal_pod_autoscaler("api", NS).status.desired_replicas == 3,
        what="status",
    )
    emulator.hpa_wants[(NS, "api")] = 9  # load: it wants more than it may have
    assert wait_until_sync(lambda: apps.read_namespaced_deployment("api", NS).spec.replicas == 6, what="scaled to max")

    def listed() -> list[tuple[str, str, int]]:
        items = scaling.list_namespaced_horizontal_pod_autoscaler(NS).items
        return [(h.metadata.name, h.spec.scale_target_ref.kind, h.status.current_replicas) for h in items]

    assert wait_until_sync(lambda: listed() == [("api", "Deployment", 6)], what="listed at its new size")
    with pytest.raises(client.ApiException) as invalid:
        scaling.create_namespaced_horizontal_pod_autoscaler(NS, {"metadata": {"name": "bad"}, "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "api"}, "minReplicas": 5, "maxReplicas": 2}})
    assert invalid.value.status == 422 and "spec.maxReplicas: Invalid value: 2" in invalid.value.body
