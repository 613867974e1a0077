"""Clients for the `kubernetes` target: one `ApiClient` per (kubeconfig, context), and the
namespace-bound API groups every part of the target uses.

The client configuration comes from the kubeconfig (`KUBECONFIG`, or `~/.kube/config`;
context `spec["context"]`) or, inside a pod, from the service account; one `ApiClient` per
(kubeconfig, context) is built on first use and shared by the targets of every flow that
names it. The client's global default configuration is never touched, so flows on
different clusters can run side by side in one worker.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from kubernetes import client, config

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets import k8s_groups
from shipflow.activities.targets.base import Invalid
from shipflow.activities.targets.k8s_errors import call

_clients: dict[tuple[str, str | None], client.ApiClient] = {}
_clients_lock = threading.Lock()


def _kubeconfig_path() -> str | None:
    """`KUBECONFIG` as it is now (the client library reads it once, at import), else the default."""
    env = os.environ.get("KUBECONFIG")
    if env:
        return env
    default = Path("~/.kube/config").expanduser()
    return str(default) if default.exists() else None


def api_client_for(context: str | None) -> client.ApiClient:
    """The shared ApiClient for a kubeconfig context (None: the current one, or in-cluster).

    Raises:
        Invalid: no kubeconfig and not in a pod, or the context does not exist.
    """
    path = _kubeconfig_path()
    key = (path or "<in-cluster>", context)
    with _clients_lock:
        cached = _clients.get(key)
        if cached is not None:
            return cached
        configuration = client.Configuration()
        try:
            if path is not None:
                config.load_kube_config(
                    config_file=path,
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
            elif context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
            else:
                raise config.ConfigException("no kubeconfig found and not running in a cluster")
        except config.ConfigException as e:
            raise Invalid(f"kubernetes configuration (context {context or 'current'}): {e}") from e
        api = client.ApiClient(configuration=configuration)
        _clients[key] = api
        return api


class NamespaceClients:
    """A Kubernetes namespace and the API groups to reach it (built on first use).

    The base of `KubernetesTarget` and of its parts (`k8s_rollout.DeploymentRollouts`,
    `k8s_jobs.JobRunner`).

    Args:
        spec: the flow's `target:` section (`namespace`, `context`).
        settings: the worker's settings; the heartbeat timeout bounds how long one watch
            request may stay silent, so cancellation and liveness are noticed in time.
    """

    def __init__(self, spec: dict[str, Any], settings: Settings):
        self.namespace: str = spec.get("namespace") or "default"
        self.context: str | None = spec.get("context")
        self.settings = settings
        self.watch_timeout_s = max(1, min(5, int(settings.heartbeat_timeout_s / 4)))
        self._api: client.ApiClient | None = None

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            self._api = api_client_for(self.context)
        return self._api

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def _read_deployment(self, name: str) -> client.V1Deployment:
        return call(
            self.apps.read_namespaced_deployment,
            name,
            self.namespace,
            verb="get",
            kind="deployments",
            name=name,
            namespace=self.namespace,
        )

    def _groups(self) -> k8s_groups.GroupObjects:
        return k8s_groups.GroupObjects(self.api, self.namespace)
