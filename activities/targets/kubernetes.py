"""The `kubernetes` target: Deployments rolled out by image patch, migrations as batch/v1 Jobs.

Built on the official `kubernetes` client. `KubernetesTarget` is assembled from its parts:

- k8s_client.py: one `ApiClient` per (kubeconfig, context); the namespace's API groups
- k8s_rollout.py: a Deployment rolled out and watched as `kubectl rollout status` judges it
- k8s_jobs.py: one-off commands as Jobs, adopted by a later attempt, their log kept
- k8s_fields.py: our probes and strategies as Kubernetes fields; reading API objects
- k8s_groups.py: secret/config groups as Secrets/ConfigMaps referenced with envFrom
- k8s_errors.py: the API's failures as `TargetError`s
- k8s_progressive.py: canary and blue-green (an extra Deployment and Service)

The names other modules import from here (`api_client_for`, `probe_to_k8s`,
`probes_to_k8s`, `rollout_status`, `strategy_to_k8s`, `_container`) are re-exported.
"""

from __future__ import annotations

from shipflow.activities.targets.base import NotFound, Progress, RolloutRequest, RolloutResult
from shipflow.activities.targets.k8s_client import NamespaceClients, api_client_for
from shipflow.activities.targets.k8s_fields import (
    container_of,
    probe_to_k8s,
    probes_to_k8s,
    strategy_to_k8s,
)
from shipflow.activities.targets.k8s_fields import (
    container_of as _container,  # k8s_progressive's name for it
)
from shipflow.activities.targets.k8s_jobs import JobRunner
from shipflow.activities.targets.k8s_rollout import DeploymentRollouts, rollout_status

__all__ = [
    "KubernetesTarget",
    "NamespaceClients",
    "_container",
    "api_client_for",
    "probe_to_k8s",
    "probes_to_k8s",
    "rollout_status",
    "strategy_to_k8s",
]


class KubernetesTarget(DeploymentRollouts, JobRunner):
    """A Kubernetes namespace: services are Deployments, one-off commands are Jobs.

    Args:
        spec: the flow's `target:` section (`namespace`, `context`).
        settings: the worker's settings; the heartbeat timeout bounds how long one watch
            request may stay silent, so cancellation and liveness are noticed in time.
    """

    def current_image(self, service: str, *, container: str | None = None) -> str | None:
        """The image of the Deployment's container (the first one by default).

        None when there is no such Deployment: shipflow rolls existing Deployments out
        and does not create them, so `rollout` then fails with NotFound.
        """
        try:
            dep = self._read_deployment(service)
        except NotFound:
            return None
        return container_of(dep, container).image

    def rollout(self, request: RolloutRequest, progress: Progress) -> RolloutResult:
        """Roll the service out: canary and blue-green by `k8s_progressive` (an extra
        Deployment and Service), rolling and recreate by `DeploymentRollouts.rollout`."""
        if request.strategy is not None and request.strategy.kind in ("canary", "blue_green"):
            from shipflow.activities.targets.k8s_progressive import progressive_rollout

            return progressive_rollout(self, request, progress)
        return super().rollout(request, progress)
