"""Fixtures of the kubernetes target's tests: the emulator, a kubeconfig, and a `cluster`.

`cluster` is parametrized: the emulator always; a real cluster (from `KUBECONFIG`, as
found when the session starts) only when the run selects the `k8s` marker (`-m k8s`).
Without the marker the real variant is never generated, so nothing is skipped.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client, config

from tests.helpers import wait_until_sync
from tests.k8s.emulator import KubeEmulator

#: The user's kubeconfig, captured before any test points KUBECONFIG at an emulator.
REAL_KUBECONFIG = os.environ.get("KUBECONFIG")


def _real_cluster_selected(cfg: pytest.Config) -> bool:
    markexpr = cfg.getoption("markexpr", "") or ""
    return "k8s" in markexpr and "not k8s" not in markexpr and bool(REAL_KUBECONFIG)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cluster" in metafunc.fixturenames:
        params: list[Any] = ["emulator"]
        # Tests that also ask for `emulator` use its knobs: they are emulator-only.
        if _real_cluster_selected(metafunc.config) and "emulator" not in metafunc.fixturenames:
            params.append(pytest.param("real", marks=pytest.mark.k8s))
        metafunc.parametrize("cluster", params, indirect=True)


class RecordingProgress:
    """A `Progress` for calling a target directly: it keeps every beat.

    Args:
        resume: what an earlier attempt reported, as Temporal would hand it back.
        cancel_when: cancellation is requested once a beat satisfies this.
        crash_when: a beat satisfying this raises `SimulatedCrash`, as if the worker died.
    """

    def __init__(self, resume: dict[str, Any] | None = None, *, cancel_when: Any = None, crash_when: Any = None):
        self._resume = resume
        self.beats: list[dict[str, Any]] = []
        self.cancel_when = cancel_when
        self.crash_when = crash_when
        self._cancelled = False

    @property
    def resume(self) -> dict[str, Any] | None:
        return self._resume

    def beat(self, details: dict[str, Any]) -> None:
        self.beats.append(dict(details))
        if self.cancel_when is not None and self.cancel_when(details):
            self._cancelled = True
        if self.crash_when is not None and self.crash_when(details):
            raise SimulatedCrash(details)

    def cancelled(self) -> bool:
        return self._cancelled


class SimulatedCrash(BaseException):
    """Raised from a beat to stop a target mid-operation, like a killed worker."""


@pytest.fixture
def emulator() -> Iterator[KubeEmulator]:
    emu = KubeEmulator(tick_s=0.05, job_duration_s=0.2).start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def kubeconfig(emulator: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point KUBECONFIG at the emulator; returns the context name to put in `spec`."""
    context = f"emulator-{emulator.port}"
    path = emulator.kubeconfig(tmp_path / "kubeconfig", context=context)
    monkeypatch.setenv("KUBECONFIG", str(path))
    return context


@dataclass
class Cluster:
    """What a test needs from a cluster, the same on the emulator and on a real one."""

    kind: str
    context: str | None
    namespace: str
    api: client.ApiClient
    images: tuple[str, str]
    stalled_image: str
    job_image: str
    deadline_s: float
    emulator: KubeEmulator | None = None
    created: list[tuple[str, str]] = field(default_factory=list)

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": "kubernetes", "namespace": self.namespace, "context": self.context}

    def create_deployment(self, name: str, image: str, *, replicas: int = 2, port: int = 8080) -> None:
        """Create a Deployment through the API and wait until it is rolled out."""
        labels = {"app": name}
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {"name": name, "image": image, "ports": [{"containerPort": port}]}
                        ],
                    },
                },
            },
        }
        apps = client.AppsV1Api(self.api)
        apps.create_namespaced_deployment(self.namespace, cast(Any, body))
        self.created.append(("deployments", name))

        def available() -> bool:
            status = apps.read_namespaced_deployment(name, self.namespace).status
            return bool(status) and (status.available_replicas or 0) == replicas and (
                status.updated_replicas or 0
            ) == replicas and (status.replicas or 0) == replicas

        wait_until_sync(
            available,
            timeout=10 if self.kind == "emulator" else 180,
            what=f"deployment {name} becomes available",
        )

    def deployment(self, name: str) -> Any:
        return client.AppsV1Api(self.api).read_namespaced_deployment(name, self.namespace)

    def failing_job(self, name: str, *, log: str, exit_code: int) -> list[str]:
        """The command of a job that prints `log` and exits with `exit_code`."""
        if self.emulator is not None:
            self.emulator.job_outcome(name, exit_code=exit_code, log=log)
        return ["sh", "-c", f"printf '%s' '{log}'; exit {exit_code}"]

    def job_exists(self, name: str) -> bool:
        try:
            client.BatchV1Api(self.api).read_namespaced_job(name, self.namespace)
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise
        return True


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    if request.param == "emulator":
        emu = request.getfixturevalue("emulator")
        context = request.getfixturevalue("kubeconfig")
        emu.never_ready = lambda image: "broken" in image
        api = config.new_client_from_config(config_file=os.environ["KUBECONFIG"], context=context,
                                            persist_config=False)
        yield Cluster(
            kind="emulator",
            context=context,
            namespace=f"t-{secrets.token_hex(4)}",
            api=api,
            images=("registry.example/app:1", "registry.example/app:2"),
            stalled_image="registry.example/app:broken",
            job_image="registry.example/busybox:1.36",
            deadline_s=1.0,
            emulator=emu,
        )
        api.close()
        return
    assert REAL_KUBECONFIG
    monkeypatch.setenv("KUBECONFIG", REAL_KUBECONFIG)
    context = os.environ.get("SHIPFLOW_TEST_K8S_CONTEXT") or None
    api = config.new_client_from_config(config_file=REAL_KUBECONFIG, context=context, persist_config=False)
    namespace = f"shipflow-test-{secrets.token_hex(4)}"
    core = client.CoreV1Api(api)
    body: Any = {"metadata": {"name": namespace}}
    core.create_namespace(body)
    try:
        yield Cluster(
            kind="real",
            context=context,
            namespace=namespace,
            api=api,
            images=("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.10"),
            stalled_image="registry.k8s.io/pause:0.0.0-does-not-exist",
            job_image="busybox:1.36",
            deadline_s=15.0,
        )
    finally:
        core.delete_namespace(namespace, propagation_policy="Background")
        api.close()
