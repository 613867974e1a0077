"""The HorizontalPodAutoscaler (autoscaling/v2) that sizes a Deployment, if there is one.

A canary scales the stable Deployment down as the canary grows; with an HPA on the stable
that would fight the autoscaler (it scales the stable back to what its metrics say, at
least `minReplicas`). So the canary and blue-green look for one first and, when found,
leave the stable's size to it (`k8s_canary`).
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from pydantic import BaseModel

from shipflow.activities.targets.base import NotFound
from shipflow.activities.targets.k8s_errors import call


class Autoscaler(BaseModel):
    name: str
    min_replicas: int
    max_replicas: int

    @property
    def ref(self) -> str:
        return f"horizontalpodautoscalers/{self.name}"


def autoscaler_of(api: client.ApiClient, namespace: str, deployment: str) -> Autoscaler | None:
    """The HPA whose `scaleTargetRef` is `deployments/<deployment>` (apps), or None.

    A cluster without autoscaling/v2 (404) has none. Listing needs `list` on
    `horizontalpodautoscalers` in the `autoscaling` group (infra/kubernetes/rbac.yaml).

    Raises:
        Forbidden: the worker may not list HPAs in the namespace.
    """
    scaling: Any = client.AutoscalingV2Api(api)
    try:
        found: Any = call(
            scaling.list_namespaced_horizontal_pod_autoscaler,
            namespace,
            verb="list",
            kind="horizontalpodautoscalers",
            name=None,
            namespace=namespace,
        )
    except NotFound:
        return None
    for hpa in found.items or []:
        ref = hpa.spec.scale_target_ref
        group = (ref.api_version or "apps/v1").split("/")[0]
        if ref.kind == "Deployment" and ref.name == deployment and group == "apps":
            return Autoscaler(
                name=hpa.metadata.name,
                min_replicas=hpa.spec.min_replicas or 1,
                max_replicas=hpa.spec.max_replicas,
            )
    return None
