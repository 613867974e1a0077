"""Rollout strategies on the Kubernetes target: the Deployment's own strategy fields, set by
one patch, and the emulator's controller honouring them (as the real one does). Canary and
blue-green, which need more than one Deployment, are in test_progressive.py."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from kubernetes import client

from shipflow.activities.targets.base import RolloutRequest
from shipflow.activities.targets.kubernetes import KubernetesTarget
from shipflow.workflows.spec import Strategy
from tests.k8s.conftest import Cluster, RecordingProgress
from tests.k8s.emulator import KubeEmulator
from tests.k8s.test_target import SETTINGS


def roll(cluster: Cluster, image: str, strategy: dict[str, Any]) -> RecordingProgress:
    progress = RecordingProgress()
    request = RolloutRequest(
        run_id=f"run-{secrets.token_hex(3)}", step_id="deploy", service="api", image=image,
        strategy=Strategy.model_validate(strategy),
    )
    KubernetesTarget(cluster.spec, SETTINGS).rollout(request, progress)
    return progress


def statuses(cluster: Cluster) -> list[dict[str, int]]:
    """Every status the Deployment went through since the rollout's patch (generation 2 on),
    from the emulator's event history, as counts."""
    if cluster.emulator is None:
        pytest.skip("the pod counts of every moment are read from the emulator's history")
    out = []
    for _, resource, _, obj in cluster.emulator.events:
        meta = obj["metadata"]
        ours = resource == "deployments" and (meta["namespace"], meta["name"]) == (cluster.namespace, "api")
        if ours and meta.get("generation", 1) > 1:
            st = obj.get("status", {})
            out.append({"total": st.get("replicas", 0), "updated": st.get("updatedReplicas", 0),
                        "available": st.get("availableReplicas", 0)})
    return out


def test_rolling_surge_and_unavailable_go_to_the_deployment(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=4)
    roll(cluster, new, {"rolling": {"max_surge": 2, "max_unavailable": 0}})

    strategy = cluster.deployment("api").spec.strategy
    assert strategy.type == "RollingUpdate"
    assert (strategy.rolling_update.max_surge, strategy.rolling_update.max_unavailable) == (2, 0)
    (patch,) = emulator.patches_of(cluster.namespace, "api")
    assert patch["body"]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 2, "maxUnavailable": 0}
    beats = statuses(cluster)
    assert max(b["total"] for b in beats) == 6  # the surge of 2 was used
    assert min(b["available"] for b in beats) >= 4  # and no old pod left before a new one was ready
    assert cluster.deployment("api").status.updated_replicas == 4


def test_percentages_round_like_kubernetes_in_the_controller(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=4)
    roll(cluster, new, {"rolling": {"max_surge": "0%", "max_unavailable": "50%"}})
    beats = statuses(cluster)
    assert max(b["total"] for b in beats) <= 4  # no surge
    assert min(b["available"] for b in beats) == 2  # half down at most, and it was used


def test_recreate_removes_every_old_pod_before_a_new_one(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=3)
    roll(cluster, new, {"recreate": {}})
    strategy = cluster.deployment("api").spec.strategy
    assert strategy.type == "Recreate" and strategy.rolling_update is None
    beats = statuses(cluster)
    # Old pods are total - updated; never both old and new pods at the same moment.
    assert not any(b["total"] - b["updated"] > 0 and b["updated"] > 0 for b in beats), beats
    assert cluster.deployment("api").status.ready_replicas == 3


def test_the_api_refuses_both_zero_and_a_rolling_update_on_recreate(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, _ = cluster.images
    cluster.create_deployment("api", old)
    apps: Any = client.AppsV1Api(cluster.api)
    for body, message in (
        ({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}, "may not be 0 when `maxSurge` is 0"),
        ({"type": "Recreate"}, "may not be specified when strategy `type` is 'Recreate'"),
        ({"type": "Sideways"}, "Unsupported value"),
    ):
        with pytest.raises(client.ApiException) as caught:
            apps.patch_namespaced_deployment("api", cluster.namespace, {"spec": {"strategy": body}})
        assert caught.value.status == 422 and message in caught.value.body
