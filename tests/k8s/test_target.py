"""The kubernetes target against the API emulator (and a real cluster with `-m k8s`)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.base import (
    Conflict,
    Forbidden,
    Invalid,
    JobFailed,
    JobRequest,
    NotFound,
    RolloutFailed,
    RolloutRequest,
    Transient,
)
from shipflow.activities.targets.k8s_errors import Cancelled
from shipflow.activities.targets.kubernetes import KubernetesTarget, probe_to_k8s
from shipflow.workflows.spec import Probe, Probes
from tests.k8s.conftest import Cluster, RecordingProgress, SimulatedCrash
from tests.k8s.emulator import KubeEmulator

SETTINGS = Settings(heartbeat_timeout_s=4)


def target_for(cluster: Cluster) -> KubernetesTarget:
    return KubernetesTarget(cluster.spec, SETTINGS)


def rollout_request(service: str, image: str, **kw) -> RolloutRequest:
    return RolloutRequest(run_id=f"run-{secrets.token_hex(3)}", step_id="deploy", service=service, image=image, **kw)


def job_request(name: str, command: list[str], image: str, **kw) -> JobRequest:
    return JobRequest(run_id=f"run-{secrets.token_hex(3)}", step_id="migrate", name=name, command=command,
                      image=image, **kw)


# ---------------------------------------------------------------- rollouts


def test_deploy_succeeds_and_patches_once(cluster: Cluster) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old)
    before = cluster.deployment("api").metadata.generation
    target = target_for(cluster)
    assert target.current_image("api") == old
    progress = RecordingProgress()

    result = target.rollout(rollout_request("api", new), progress)

    assert (result.service, result.image, result.previous_image) == ("api", new, old)
    assert result.instances == [{"replicas": 2, "updated": 2, "ready": 2}]
    assert target.current_image("api") == new
    assert cluster.deployment("api").metadata.generation == before + 1  # one spec change
    watching = [b for b in progress.beats if b.get("phase") == "watching"]
    assert watching and {"generation", "updated", "ready", "available", "total", "image",
                         "previous_image"} <= set(watching[-1])
    assert watching[-1]["updated"] == 2 and watching[-1]["previous_image"] == old
    if cluster.emulator is not None:
        assert cluster.emulator.image_patches(cluster.namespace, "api") == [new]
        (patch,) = cluster.emulator.patches_of(cluster.namespace, "api")
        assert patch["content_type"] == "application/strategic-merge-patch+json"


def test_stalled_rollout_fails_at_its_deadline(cluster: Cluster) -> None:
    old, _ = cluster.images
    cluster.create_deployment("web", old)
    target = target_for(cluster)
    started = time.monotonic()
    with pytest.raises(RolloutFailed, match="progress deadline") as info:
        target.rollout(
            rollout_request("web", cluster.stalled_image, progress_deadline_s=cluster.deadline_s),
            RecordingProgress(),
        )
    assert time.monotonic() - started >= cluster.deadline_s
    assert info.value.retryable is False
    assert f"set back to {old}" in str(info.value)
    # the old version kept serving, and the Deployment's template is the old one again
    assert (cluster.deployment("web").status.available_replicas or 0) >= 1
    assert target.current_image("web") == old
    if cluster.emulator is not None:
        assert cluster.emulator.image_patches(cluster.namespace, "web") == [cluster.stalled_image, old]


def test_failed_rollout_puts_the_previous_probes_back(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, _ = cluster.images
    cluster.create_deployment("web", old)
    target = target_for(cluster)
    probes = Probes(readiness=Probe.model_validate({"exec": {"command": ["true"]}}))
    with pytest.raises(RolloutFailed):
        target.rollout(
            rollout_request("web", cluster.stalled_image, probes=probes, progress_deadline_s=0.5),
            RecordingProgress(),
        )
    container = emulator.get("deployments", cluster.namespace, "web")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == old and "readinessProbe" not in container


def test_cancelled_rollout_stops_watching(cluster: Cluster) -> None:
    old, _ = cluster.images
    cluster.create_deployment("api", old)
    progress = RecordingProgress(cancel_when=lambda d: d.get("phase") == "watching")
    started = time.monotonic()
    with pytest.raises(Cancelled, match="cancelled"):
        target_for(cluster).rollout(
            rollout_request("api", cluster.stalled_image, progress_deadline_s=600), progress
        )
    assert time.monotonic() - started < 10
    # the step did not finish, so no compensation will undo it: the target set it back
    assert target_for(cluster).current_image("api") == old


def test_resume_after_crash_does_not_patch_again(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=3)
    first = RecordingProgress(crash_when=lambda d: d.get("phase") == "watching")
    with pytest.raises(SimulatedCrash):
        target_for(cluster).rollout(rollout_request("api", new), first)
    last = first.beats[-1]
    assert last["previous_image"] == old and last["image"] == new

    second = RecordingProgress(resume=last)
    result = KubernetesTarget(cluster.spec, SETTINGS).rollout(rollout_request("api", new), second)

    assert (result.image, result.previous_image) == (new, old)
    assert emulator.image_patches(cluster.namespace, "api") == [new]  # patched exactly once
    assert result.instances == [{"replicas": 3, "updated": 3, "ready": 3}]


def test_rollout_patches_probes_in_kubernetes_schema(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old)
    probes = Probes(
        readiness=Probe.model_validate({"http": {"path": "/healthz"}, "period": "1s", "failure_threshold": 3}),
        liveness=Probe.model_validate({"tcp": {}, "initial_delay": "5s", "timeout": "500ms"}),
        startup=Probe.model_validate({"exec": {"command": ["cat", "/tmp/ready"]}}),
    )
    target_for(cluster).rollout(rollout_request("api", new, probes=probes), RecordingProgress())
    container = emulator.get("deployments", cluster.namespace, "api")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == new
    assert container["readinessProbe"] == {
        "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
        "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 1,
        "successThreshold": 1, "failureThreshold": 3,
    }
    assert container["livenessProbe"]["tcpSocket"] == {"port": 8080}
    assert container["livenessProbe"]["initialDelaySeconds"] == 5
    assert container["livenessProbe"]["timeoutSeconds"] == 1
    assert container["startupProbe"]["exec"] == {"command": ["cat", "/tmp/ready"]}
    # the client deserializes what the emulator stored
    dep = cluster.deployment("api")
    assert dep.spec.template.spec.containers[0].readiness_probe.http_get.path == "/healthz"
    assert len(emulator.image_patches(cluster.namespace, "api")) == 1


def test_probe_conversion_replaces_the_handler() -> None:
    probe = Probe.model_validate({"tcp": {"port": 5432}, "period": "2.5s"})
    out = probe_to_k8s(probe, default_port=None)
    assert out["tcpSocket"] == {"port": 5432} and out["httpGet"] is None and out["exec"] is None
    assert out["periodSeconds"] == 3
    with pytest.raises(Invalid, match="port"):
        probe_to_k8s(Probe.model_validate({"http": {"path": "/"}}), default_port=None)


def test_forbidden_is_clear_and_not_retried(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old)
    emulator.fail("patch", r"/deployments/api$", 403, times=5)
    with pytest.raises(Forbidden) as info:
        target_for(cluster).rollout(rollout_request("api", new), RecordingProgress())
    assert str(info.value) == f"forbidden: cannot patch deployments/api in namespace {cluster.namespace}"
    assert info.value.retryable is False
    assert [r for r in emulator.requests if r[0] == "patch"] == [("patch", f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments/api")]


def test_not_found_is_clear_and_not_retried(cluster: Cluster, emulator: KubeEmulator) -> None:
    assert target_for(cluster).current_image("missing") is None  # never deployed
    emulator.requests.clear()
    with pytest.raises(NotFound) as info:
        target_for(cluster).rollout(rollout_request("missing", "x:1"), RecordingProgress())
    assert str(info.value) == f"not found: deployments/missing in namespace {cluster.namespace} (get)"
    assert info.value.retryable is False
    assert len([r for r in emulator.requests if r[0] == "get"]) == 1


def test_conflicts_and_server_errors_are_retried(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old)
    emulator.fail("get", r"/deployments/api$", 500, times=2)
    emulator.fail("patch", r"/deployments/api$", 409, times=2)
    emulator.fail("list", r"/deployments$", 503, times=1)
    result = target_for(cluster).rollout(rollout_request("api", new), RecordingProgress())
    assert result.image == new
    assert len([r for r in emulator.requests if r[0] == "patch"]) == 3
    assert emulator.image_patches(cluster.namespace, "api") == [new]


def test_persistent_conflict_surfaces_as_retryable(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old)
    emulator.fail("patch", r"/deployments/api$", 409, times=10)
    with pytest.raises(Conflict) as info:
        target_for(cluster).rollout(rollout_request("api", new), RecordingProgress())
    assert info.value.retryable is True  # the step's retry policy takes it from here


def test_invalid_carries_the_api_message(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old)
    emulator.fail("patch", r"/deployments/api$", 422,
                  message='Deployment.apps "api" is invalid: spec.template.spec.containers[0].image: Required value')
    with pytest.raises(Invalid, match=r"containers\[0\]\.image: Required value") as info:
        target_for(cluster).rollout(rollout_request("api", new), RecordingProgress())
    assert info.value.retryable is False


@pytest.mark.parametrize("code", [500, 410])
def test_watch_failures_fall_back_to_relisting(cluster: Cluster, emulator: KubeEmulator, code: int) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=6)
    emulator.fail("watch", r"/deployments$", code, times=3)
    result = target_for(cluster).rollout(rollout_request("api", new), RecordingProgress())
    assert result.instances[0]["ready"] == 6
    assert emulator.faults[0].remaining < 3  # watches failed, and the rollout was still followed


def test_unreachable_api_is_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = KubeEmulator().start()
    path = emu.kubeconfig(tmp_path / "kubeconfig", context="gone")
    emu.stop()  # nothing listens on that port any more
    monkeypatch.setenv("KUBECONFIG", str(path))
    target = KubernetesTarget({"kind": "kubernetes", "namespace": "x", "context": "gone"}, SETTINGS)
    with pytest.raises(Transient, match="unreachable: get deployments/api in namespace x") as info:
        target.current_image("api")
    assert info.value.retryable is True


def test_unknown_context_is_invalid(kubeconfig: str) -> None:
    target = KubernetesTarget({"kind": "kubernetes", "namespace": "x", "context": "nope"}, SETTINGS)
    with pytest.raises(Invalid, match="nope"):
        target.current_image("api")


def test_current_image_by_container(cluster: Cluster, emulator: KubeEmulator) -> None:
    emulator.add_deployment(cluster.namespace, "api", "app:1",
                            extra_containers=[{"name": "sidecar", "image": "envoy:1.30"}])
    target = target_for(cluster)
    assert target.current_image("api") == "app:1"
    assert target.current_image("api", container="sidecar") == "envoy:1.30"
    with pytest.raises(Invalid, match="no container 'nope'"):
        target.current_image("api", container="nope")
    target.rollout(rollout_request("api", "envoy:1.31", container="sidecar"), RecordingProgress())
    assert (target.current_image("api"), target.current_image("api", container="sidecar")) == ("app:1", "envoy:1.31")


# ---------------------------------------------------------------- jobs


def test_job_succeeds_and_is_deleted(cluster: Cluster) -> None:
    name = f"migrate-{secrets.token_hex(3)}"
    request = job_request(name, ["sh", "-c", "echo migrated"], cluster.job_image, retries=1, timeout_s=120,
                          env={"MODE": "up"})
    result = target_for(cluster).run_job(request, RecordingProgress())
    assert result.exit_code == 0
    if cluster.emulator is not None:
        assert "echo migrated" in result.output
        assert cluster.emulator.deletes[-1] == {"resource": "jobs", "namespace": cluster.namespace,
                                                "name": name, "policy": "Background"}
        assert cluster.emulator.get("pods", cluster.namespace, name) is None
    else:
        assert "migrated" in result.output
    assert not cluster.job_exists(name)


def test_job_spec_is_what_kubernetes_needs(cluster: Cluster, emulator: KubeEmulator) -> None:
    name = f"migrate-{secrets.token_hex(3)}"
    emulator.job_outcome(name, duration_s=30)  # stays running while we look
    request = job_request(name, ["alembic", "upgrade", "head"], "app:2", retries=2, timeout_s=90.5,
                          env={"DATABASE_URL": "postgresql://db"}, service_account="migrator", cwd="/app")
    progress = RecordingProgress(cancel_when=lambda d: d.get("active") == 1)
    with pytest.raises(Cancelled):
        target_for(cluster).run_job(request, progress)
    created = [e for e in emulator.events if e[1] == "jobs" and e[2] == "ADDED"][-1][3]
    spec = created["spec"]
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 91
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "migrator"
    assert pod["containers"][0]["env"] == [{"name": "DATABASE_URL", "value": "postgresql://db"}]
    assert pod["containers"][0]["workingDir"] == "/app"
    assert created["metadata"]["labels"]["shipflow/run"] == request.run_id
    assert created["metadata"]["labels"]["shipflow/step"] == "migrate"
    # cancelled: the job was deleted, pods in the background
    assert emulator.deletes[-1]["policy"] == "Background"
    assert not cluster.job_exists(name)


def test_failing_job_fails_with_its_log_tail(cluster: Cluster) -> None:
    name = f"migrate-{secrets.token_hex(3)}"
    command = cluster.failing_job(name, log="applying 0042\nboom: relation exists\n", exit_code=3)
    with pytest.raises(JobFailed) as info:
        target_for(cluster).run_job(job_request(name, command, cluster.job_image), RecordingProgress())
    error = info.value
    assert error.exit_code == 3
    assert "boom: relation exists" in error.output
    assert "BackoffLimitExceeded" in str(error)
    assert error.retryable is False


def test_job_retries_are_kubernetes_backoff(cluster: Cluster, emulator: KubeEmulator) -> None:
    name = f"migrate-{secrets.token_hex(3)}"
    emulator.job_outcome(name, exit_code=1, log="nope\n", duration_s=0.05)
    with pytest.raises(JobFailed):
        target_for(cluster).run_job(job_request(name, ["false"], "app:1", retries=2), RecordingProgress())
    pods = [e for e in emulator.events if e[1] == "pods" and e[2] == "ADDED"]
    assert len(pods) == 3  # the first run and backoffLimit=2 retries, by Kubernetes


def test_job_from_an_earlier_attempt_is_adopted(cluster: Cluster, emulator: KubeEmulator) -> None:
    name = f"migrate-{secrets.token_hex(3)}"
    emulator.job_outcome(name, duration_s=0.5)
    request = job_request(name, ["migrate"], "app:1")
    first = RecordingProgress(crash_when=lambda d: d.get("active") == 1)
    with pytest.raises(SimulatedCrash):
        target_for(cluster).run_job(request, first)
    result = target_for(cluster).run_job(request, RecordingProgress(resume=first.beats[-1]))
    assert result.exit_code == 0
    assert len([e for e in emulator.events if e[1] == "pods" and e[2] == "ADDED"]) == 1  # ran once
    assert len([r for r in emulator.requests if r[0] == "create"]) == 2  # the second got 409


def test_job_of_another_run_is_not_adopted(cluster: Cluster, emulator: KubeEmulator) -> None:
    name = f"migrate-{secrets.token_hex(3)}"
    emulator.job_outcome(name, duration_s=30)
    body: Any = {
        "metadata": {"name": name, "labels": {"shipflow/run": "someone-else"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "x", "image": "y"}]}}},
    }
    client.BatchV1Api(cluster.api).create_namespaced_job(cluster.namespace, body)
    with pytest.raises(Conflict, match="another run") as info:
        target_for(cluster).run_job(job_request(name, ["migrate"], "app:1"), RecordingProgress())
    assert info.value.retryable is False


def test_job_deadline_is_enforced(cluster: Cluster, emulator: KubeEmulator) -> None:
    name = f"migrate-{secrets.token_hex(3)}"
    emulator.job_outcome(name, duration_s=30)
    with pytest.raises(JobFailed, match="DeadlineExceeded"):
        target_for(cluster).run_job(job_request(name, ["sleep", "30"], "app:1", timeout_s=0.5), RecordingProgress())


def test_job_without_image_is_invalid(cluster: Cluster) -> None:
    with pytest.raises(Invalid, match="image"):
        target_for(cluster).run_job(
            JobRequest(run_id="r", step_id="m", name="m-1", command=["x"]), RecordingProgress()
        )


def test_failed_rollout_restores_probes_that_existed(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, _ = cluster.images
    cluster.create_deployment("web", old)
    target = target_for(cluster)
    before = Probes(readiness=Probe.model_validate({"http": {"path": "/ready"}, "period": "2s"}))
    target.rollout(rollout_request("web", "registry.example/app:1.1", probes=before), RecordingProgress())
    was = emulator.get("deployments", cluster.namespace, "web")["spec"]["template"]["spec"]["containers"][0]
    after = Probes(readiness=Probe.model_validate({"tcp": {}}))
    with pytest.raises(RolloutFailed):
        target.rollout(
            rollout_request("web", cluster.stalled_image, probes=after, progress_deadline_s=0.5),
            RecordingProgress(),
        )
    now = emulator.get("deployments", cluster.namespace, "web")["spec"]["template"]["spec"]["containers"][0]
    assert now["image"] == "registry.example/app:1.1"
    assert now["readinessProbe"] == was["readinessProbe"]  # http again, no tcpSocket left
