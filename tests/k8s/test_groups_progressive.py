"""Secret/config groups under a canary or blue-green rollout on the kubernetes target.

What a canary (or the green side of a blue-green) must run is the new release: the new
image *and* the new group versions, so that the canary tests the configuration that will
be promoted (issue 16). A change of group versions alone takes the strategy too, and an
abort deletes the group objects made for the failed canary.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from shipflow.activities.core.group_select import GroupSource
from shipflow.activities.targets.base import RolloutRequest
from shipflow.activities.targets.k8s_errors import Cancelled
from shipflow.activities.targets.k8s_progressive import STATE
from shipflow.activities.targets.kubernetes import KubernetesTarget
from shipflow.workflows.spec import Strategy
from tests.k8s.conftest import Cluster, RecordingProgress, SimulatedCrash
from tests.k8s.emulator import KubeEmulator
from tests.k8s.test_target import SETTINGS


def _flags(version: int) -> list[GroupSource]:
    return [
        GroupSource(name="flags", version=version, kind="config", values={"MODE": f"m{version}"})
    ]


def _request(image: str, version: int, strategy: dict[str, Any] | None) -> RolloutRequest:
    return RolloutRequest(
        run_id=f"run-{version}",
        step_id="deploy",
        service="api",
        image=image,
        group_sources=_flags(version),
        strategy=Strategy.model_validate(strategy) if strategy else None,
    )


def _extra_env_from(emulator: KubeEmulator, namespace: str, name: str) -> list[list[Any]]:
    """Every envFrom the extra Deployment `name` was created or patched with, in order."""
    seen: list[list[Any]] = []
    for _, resource, _, obj in emulator.events:
        meta = obj["metadata"]
        if resource == "deployments" and (meta["namespace"], meta["name"]) == (namespace, name):
            seen.append(obj["spec"]["template"]["spec"]["containers"][0].get("envFrom") or [])
    return seen


def _stable_env_from(cluster: Cluster) -> list[Any]:
    dep = cluster.deployment("api")
    entries = dep.spec.template.spec.containers[0].env_from or []
    return [client.ApiClient().sanitize_for_serialization(e) for e in entries]


def _started(cluster: Cluster) -> KubernetesTarget:
    old, _ = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    target = KubernetesTarget(cluster.spec, SETTINGS)
    target.rollout(_request(old, 1, None), RecordingProgress())  # flags v1, plain
    assert _stable_env_from(cluster) == [{"configMapRef": {"name": "shipflow-flags-1"}}]
    return target


CANARY = {"canary": {"steps": [{"set_weight": 50}, {"pause": {"duration": "50ms"}}]}}


def test_after_a_canary_the_stable_runs_the_new_group_versions(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    target = _started(cluster)
    _, new = cluster.images
    target.rollout(_request(new, 2, CANARY), RecordingProgress())
    # The promotion is the plain rolling update, which materialises and references v2.
    assert _stable_env_from(cluster) == [{"configMapRef": {"name": "shipflow-flags-2"}}]


def test_canary_pods_run_the_new_group_versions(cluster: Cluster, emulator: KubeEmulator) -> None:
    target = _started(cluster)
    _, new = cluster.images
    target.rollout(_request(new, 2, CANARY), RecordingProgress())
    created = _extra_env_from(emulator, cluster.namespace, "api-canary")
    assert created, "no canary Deployment was made"
    assert created[0] == [{"configMapRef": {"name": "shipflow-flags-2"}}], created[0]


def test_a_group_change_alone_is_canaried(cluster: Cluster, emulator: KubeEmulator) -> None:
    target = _started(cluster)
    old, _ = cluster.images
    target.rollout(_request(old, 2, CANARY), RecordingProgress())
    assert _extra_env_from(emulator, cluster.namespace, "api-canary"), "no canary Deployment"


def test_blue_green_preview_runs_the_new_group_versions(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    target = _started(cluster)
    emulator.add_service(cluster.namespace, "api", {"app": "api"})
    _, new = cluster.images
    strategy = {"blue_green": {"auto_promote_after": "0s", "scale_down_delay": "50ms"}}
    target.rollout(_request(new, 2, strategy), RecordingProgress())
    assert _stable_env_from(cluster) == [{"configMapRef": {"name": "shipflow-flags-2"}}]
    created = _extra_env_from(emulator, cluster.namespace, "api-green")
    assert created and created[0] == [{"configMapRef": {"name": "shipflow-flags-2"}}], created


def _config_maps(cluster: Cluster) -> set[str]:
    found = client.CoreV1Api(cluster.api).list_namespaced_config_map(cluster.namespace).items
    return {c.metadata.name for c in found}


def test_a_lost_worker_resumes_the_group_canary_and_an_abort_deletes_its_objects(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    """A group change alone, killed in its pause: the next attempt resumes it; its cancel
    aborts, and the ConfigMap made for the canary goes at once (not after 5 minutes),
    while the version the stable runs stays."""
    target = _started(cluster)
    old, _ = cluster.images
    strategy = {"canary": {"steps": [{"set_weight": 50}, {"pause": {}}]}}
    first = RecordingProgress(crash_when=lambda d: d.get("paused"))  # the worker dies
    with pytest.raises(SimulatedCrash):
        target.rollout(_request(old, 2, strategy), first)
    canary = cluster.deployment("api-canary")
    state = json.loads(canary.metadata.annotations[STATE])
    assert state["groups_made"] == ["shipflow-flags-2"] and state["weight"] == 50
    assert _config_maps(cluster) >= {"shipflow-flags-1", "shipflow-flags-2"}
    second = RecordingProgress(resume=first.beats[-1], cancel_when=lambda d: d.get("paused"))
    with pytest.raises(Cancelled) as cancelled:
        KubernetesTarget(cluster.spec, SETTINGS).rollout(_request(old, 2, strategy), second)
    assert "all traffic is on the stable version" in str(cancelled.value)
    creates = [e for e in emulator.events if e[1] == "deployments" and e[2] == "ADDED"]
    assert [e[3]["metadata"]["name"] for e in creates].count("api-canary") == 1  # adopted
    assert _stable_env_from(cluster) == [{"configMapRef": {"name": "shipflow-flags-1"}}]
    assert cluster.deployment("api").spec.replicas == 2
    assert "shipflow-flags-2" not in _config_maps(cluster)
    assert "shipflow-flags-1" in _config_maps(cluster)


def test_a_blue_green_abort_never_fails_on_the_group_objects(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    """A group change alone previews on green; cancelled there, the abort switches nothing
    and succeeds even though the Role cannot delete the ConfigMap (left for a later run)."""
    target = _started(cluster)
    emulator.add_service(cluster.namespace, "api", {"app": "api"})
    old, _ = cluster.images
    emulator.fail("delete", r"/configmaps/", 403, times=5)
    progress = RecordingProgress(cancel_when=lambda d: d.get("paused"))
    with pytest.raises(Cancelled) as cancelled:
        target.rollout(_request(old, 2, {"blue_green": {}}), progress)
    assert "blue_green aborted: all traffic is on the stable version" in str(cancelled.value)
    created = _extra_env_from(emulator, cluster.namespace, "api-green")
    assert created and created[0] == [{"configMapRef": {"name": "shipflow-flags-2"}}], created
    assert _stable_env_from(cluster) == [{"configMapRef": {"name": "shipflow-flags-1"}}]
    assert {"shipflow-flags-1", "shipflow-flags-2"} <= _config_maps(cluster)
    assert ("delete", f"/api/v1/namespaces/{cluster.namespace}/configmaps/shipflow-flags-2") in (
        emulator.requests
    )
