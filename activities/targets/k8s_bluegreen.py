"""The Kubernetes blue-green: a `<name>-green` Deployment, a `<name>-preview` Service, one
switch of the main Service's selector (see `k8s_progressive`)."""

from __future__ import annotations

import time
from typing import Any

from shipflow.activities.targets.base import (
    Invalid,
    NotFound,
    Progress,
    RolloutRequest,
    RolloutResult,
)
from shipflow.activities.targets.k8s_errors import call
from shipflow.activities.targets.k8s_progressive_base import PAUSED, TRACK, Progressive
from shipflow.activities.targets.kubernetes import KubernetesTarget


class BlueGreen(Progressive):
    suffix = "green"
    kind = "blue_green"

    def __init__(self, target: KubernetesTarget, request: RolloutRequest, progress: Progress):
        super().__init__(target, request, progress)
        self.preview = f"{self.name}-preview"
        try:
            service: Any = call(self.t.core.read_namespaced_service, self.name, self.t.namespace, verb="get",
                                kind="services", name=self.name, namespace=self.t.namespace)
        except NotFound as e:
            raise NotFound(f"blue_green switches services/{self.name}, the Service in front of "
                           f"deployments/{self.name}: {e}") from None
        self.service = service
        selector: dict[str, str] = dict(service.spec.selector or {})
        # After a switch (a resumed attempt) the Service selects the green labels.
        self.blue = {k: v.removesuffix("-green") for k, v in selector.items()}
        pod_labels = self.stable.spec.template.metadata.labels or {}
        if not self.blue or any(pod_labels.get(k) != v for k, v in self.blue.items()):
            raise Invalid(
                f"blue_green needs services/{self.name} to select the pods of deployments/{self.name} "
                f"(its selector {self.blue or '{}'} does not match their labels)"
            )
        self.green = {k: f"{v}-green"[:63] for k, v in self.blue.items()}

    def _where(self) -> str:
        return f"blue-green phase {self.state.get('phase')}"

    def initial_state(self) -> dict[str, Any]:
        # Green as large as the stable is now (with an autoscaler, the size it chose).
        return {**super().initial_state(), "phase": "preview", "green_replicas": self.replicas}

    def create(self) -> None:
        labels = {**(self.stable.spec.template.metadata.labels or {}), **self.green, TRACK: "green"}
        body = self._body(replicas=self.replicas, labels=labels, selector={**self.green, TRACK: "green"})
        self._create("deployments", body)
        ports = [
            {k: v for k, v in {"name": p.name, "port": p.port, "targetPort": p.target_port,
                               "protocol": p.protocol}.items() if v is not None}
            for p in self.service.spec.ports or []
        ]
        self._create("services", {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.preview, "labels": {"app.kubernetes.io/managed-by": "shipflow",
                                                          "shipflow/preview-of": self.name}},
            "spec": {"selector": dict(self.green), "ports": ports},
        })

    def steps(self) -> RolloutResult:
        assert self.request.strategy is not None and self.request.strategy.blue_green is not None
        spec = self.request.strategy.blue_green
        self.details.update(original_selector=self.blue, preview_service=self.preview)
        if self.state["phase"] == "preview":
            self._wait_ready(self.extra)
            self.state["phase"] = "ready"
            if spec.auto_promote_after is not None:
                self.state["promote_at"] = time.time() + spec.auto_promote_after.total_seconds()
            self._save()
        if self.state["phase"] == "ready":
            if spec.auto_promote_after is None:
                self._patch_extra({"metadata": {"annotations": {PAUSED: "switch"}}})
                self.details.update(paused=True, message=f"green ready at services/{self.preview}; waiting for promotion")
            self._wait(self.state.get("promote_at"), None if spec.auto_promote_after is not None else "switch")
            self.details.update(paused=False)
            self.state.update(phase="switched", scale_down_at=time.time() + spec.scale_down_delay.total_seconds())
            self._save()
        if self.state["phase"] == "switched":
            self._select(self.green)  # again after a resume: the patch is idempotent
            self.details.update(message=f"services/{self.name} switched to the green pods")
            self._wait(self.state["scale_down_at"], None)
            self.state["phase"] = "finalizing"
            self._save()
        result = self._plain()
        self._select(self.blue)
        if self.autoscaler is None:
            return result
        # The green Deployment had the stable's size when it was made, the autoscaler's choice.
        extra = {"green_replicas": self.state.get("green_replicas", self.replicas),
                 "stable_replicas": f"left to {self.autoscaler.ref}"}
        return result.model_copy(update={"instances": [*result.instances, extra]})

    def _select(self, selector: dict[str, str]) -> None:
        call(self.t.core.patch_namespaced_service, self.name, self.t.namespace,
             {"spec": {"selector": dict(selector)}},
             _content_type="application/strategic-merge-patch+json", verb="patch", kind="services",
             name=self.name, namespace=self.t.namespace)

    def abort(self) -> None:
        self._select(self.blue)
        self.cleanup()

    def cleanup(self) -> None:
        self._delete("deployments", self.extra)
        self._delete("services", self.preview)
