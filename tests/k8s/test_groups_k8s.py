"""Secret/config groups on the kubernetes target, through the emulator and the real client.

A group version becomes an immutable Secret/ConfigMap referenced with envFrom; a new
version alone rolls the Deployment out; values never appear in the Deployment or the Job;
objects are collected once no ReplicaSet, Deployment or Job refers to them.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from kubernetes import client

from shipflow.activities.core.group_select import GroupSource
from shipflow.activities.core.settings import Settings
from shipflow.activities.targets import k8s_groups
from shipflow.activities.targets.base import JobRequest, RolloutRequest
from shipflow.activities.targets.kubernetes import KubernetesTarget
from tests.k8s.conftest import Cluster, RecordingProgress
from tests.k8s.emulator import KubeEmulator

SECRET = "k8s-group-secret-" + secrets.token_hex(4)


def _sources(flags: int) -> list[GroupSource]:
    return [
        GroupSource(name="db", version=1, kind="secret", values={"DB_PASSWORD": SECRET}),
        GroupSource(name="flags", version=flags, kind="config", values={"MODE": f"m{flags}"}),
    ]


def _env_from(cluster: Cluster) -> list[dict[str, Any]]:
    dep = cluster.deployment("api")
    entries = dep.spec.template.spec.containers[0].env_from or []
    return [client.ApiClient().sanitize_for_serialization(e) for e in entries]


def test_groups_become_objects_referenced_rolled_out_and_collected(
    cluster: Cluster, emulator: KubeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(k8s_groups, "COLLECT_AFTER_S", 0.0)
    old, new = cluster.images
    cluster.create_deployment("api", old)
    apps = client.AppsV1Api(cluster.api)
    apps.patch_namespaced_deployment(
        "api", cluster.namespace, {"spec": {"revisionHistoryLimit": 1}}
    )
    target = KubernetesTarget(cluster.spec, Settings(heartbeat_timeout_s=4))

    def roll(flags: int) -> None:
        request = RolloutRequest(
            run_id="r", step_id=f"d{flags}", service="api", image=new, group_sources=_sources(flags)
        )
        target.rollout(request, RecordingProgress())

    roll(1)
    assert _env_from(cluster) == [
        {"secretRef": {"name": "shipflow-db-1"}},
        {"configMapRef": {"name": "shipflow-flags-1"}},
    ]
    core = client.CoreV1Api(cluster.api)
    secret = core.read_namespaced_secret("shipflow-db-1", cluster.namespace)
    assert secret.immutable and secret.metadata.labels["shipflow/group-version"] == "1"
    generation = cluster.deployment("api").metadata.generation
    roll(2)  # same image, a new config version: a real rollout of a new template
    assert cluster.deployment("api").metadata.generation > generation
    assert {"configMapRef": {"name": "shipflow-flags-2"}} in _env_from(cluster)
    roll(3)
    # History keeps the ReplicaSets of flags 2 and 3: version 1 is collected, db-1 stays.
    names = {c.metadata.name for c in core.list_namespaced_config_map(cluster.namespace).items}
    assert names == {"shipflow-flags-2", "shipflow-flags-3"}
    core.read_namespaced_secret("shipflow-db-1", cluster.namespace)
    dumped = json.dumps(client.ApiClient().sanitize_for_serialization(cluster.deployment("api")))
    assert SECRET not in dumped

    job = JobRequest(
        run_id="r",
        step_id="m",
        name=f"m-{secrets.token_hex(3)}",
        command=["true"],
        image="app:1",
        group_sources=_sources(3)[:1],
    )
    target.run_job(job, RecordingProgress())
    (created,) = [
        obj
        for _, resource, kind, obj in emulator.events
        if resource == "jobs" and kind == "ADDED" and obj["metadata"]["name"] == job.name
    ]
    container = created["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "shipflow-db-1"}}]
    assert SECRET not in json.dumps(created)


def test_a_failed_group_rollout_puts_the_previous_env_from_back(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old)
    target = KubernetesTarget(cluster.spec, Settings(heartbeat_timeout_s=4))
    first = RolloutRequest(
        run_id="r", step_id="a", service="api", image=old, group_sources=_sources(1)
    )
    target.rollout(first, RecordingProgress())
    before = _env_from(cluster)
    emulator.never_ready = lambda image: image == new
    broken = RolloutRequest(
        run_id="r",
        step_id="b",
        service="api",
        image=new,
        group_sources=_sources(2),
        progress_deadline_s=1,
    )
    with pytest.raises(Exception, match="set back to"):
        target.rollout(broken, RecordingProgress())
    assert _env_from(cluster) == before
    assert cluster.deployment("api").spec.template.spec.containers[0].image == old
