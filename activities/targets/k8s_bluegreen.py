"""The Kubernetes blue-green: a `<name>-green` Deployment, a preview Service, one switch of
the active Service's selector (see `k8s_progressive`).

The active Service is the one named like the service, or `strategy.blue_green.active_service`;
the preview is a `<name>-preview` Service made for the rollout, or the user's
`strategy.blue_green.preview_service`, pointed at the green pods and put back (never made or
deleted). Both must select the stable pods, checked before anything changes.
"""

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
        assert request.strategy is not None and request.strategy.blue_green is not None
        spec = request.strategy.blue_green
        pod_labels = dict(self.stable.spec.template.metadata.labels or {})
        #: The Service whose selector the switch changes.
        self.active = spec.active_service or self.name
        self.service = self._read_service(self.active, "active_service" if spec.active_service else None)
        # After a switch (a resumed attempt) the Service selects the green labels.
        self.blue = self._stable_selector(self.service, pod_labels, "active_service" if spec.active_service else None)
        self.green = {k: f"{v}-green"[:63] for k, v in self.blue.items()}
        #: The preview: made (and deleted) by the rollout, or the user's, pointed and put back.
        self.owned_preview = spec.preview_service is None
        self.preview = spec.preview_service or f"{self.name}-preview"
        self.preview_blue: dict[str, str] = {}
        if not self.owned_preview:
            preview = self._read_service(self.preview, "preview_service")
            self.preview_blue = self._stable_selector(preview, pod_labels, "preview_service")

    def _read_service(self, name: str, field: str | None) -> Any:
        """The Service; NotFound naming the strategy's field that named it (if one did).

        Raises:
            NotFound: (not retryable) no such Service in the namespace.
        """
        try:
            return call(self.t.core.read_namespaced_service, name, self.t.namespace, verb="get",
                        kind="services", name=name, namespace=self.t.namespace)
        except NotFound as e:
            if field is None:
                raise NotFound(f"blue_green switches services/{name}, the Service in front of "
                               f"deployments/{self.name}: {e} (name another with "
                               "strategy.blue_green.active_service)") from None
            raise NotFound(f"strategy.blue_green.{field}: services/{name} does not exist in namespace "
                           f"{self.t.namespace}") from None

    def _stable_selector(self, service: Any, pod_labels: dict[str, str], field: str | None) -> dict[str, str]:
        """The Service's selector with a switch to green undone; it must select the stable pods.

        Raises:
            Invalid: (not retryable) it selects no pods, or not those of the stable Deployment.
        """
        name = service.metadata.name
        selector = {k: v.removesuffix("-green") for k, v in (service.spec.selector or {}).items()}
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            where = f"strategy.blue_green.{field}: " if field else ""
            raise Invalid(
                f"{where}blue_green needs services/{name} to select the pods of deployments/{self.name} "
                f"(its selector {selector or '{}'} does not match their labels {pod_labels})"
            )
        return selector

    def _where(self) -> str:
        return f"blue-green phase {self.state.get('phase')}"

    def initial_state(self) -> dict[str, Any]:
        # Green as large as the stable is now (with an autoscaler, the size it chose).
        state = {**super().initial_state(), "phase": "preview", "green_replicas": self.replicas}
        if not self.owned_preview:  # what the user's preview selected, to put it back exactly
            state["preview_selector"] = self.preview_blue
        return state

    def create(self) -> None:
        labels = {**(self.stable.spec.template.metadata.labels or {}), **self.green, TRACK: "green"}
        body = self._body(replicas=self.replicas, labels=labels, selector={**self.green, TRACK: "green"})
        self._create("deployments", body)

    def _show_preview(self) -> None:
        """The preview Service to the green pods: made (or adopted) with the active one's
        ports, or the user's pointed there. Idempotent, so a resumed attempt does it again."""
        if not self.owned_preview:
            self._select(self.preview, self.green)
            return
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
        self.details.update(original_selector=self.blue, preview_service=self.preview, active_service=self.active)
        if self.state["phase"] == "preview":
            self._show_preview()
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
            self._select(self.active, self.green)  # again after a resume: the patch is idempotent
            self.details.update(message=f"services/{self.active} switched to the green pods")
            self._wait(self.state["scale_down_at"], None)
            self.state["phase"] = "finalizing"
            self._save()
        result = self._plain()
        self._select(self.active, self.blue)
        if self.autoscaler is None:
            return result
        # The green Deployment had the stable's size when it was made, the autoscaler's choice.
        extra = {"green_replicas": self.state.get("green_replicas", self.replicas),
                 "stable_replicas": f"left to {self.autoscaler.ref}"}
        return result.model_copy(update={"instances": [*result.instances, extra]})

    def _select(self, service: str, selector: dict[str, str]) -> None:
        call(self.t.core.patch_namespaced_service, service, self.t.namespace,
             {"spec": {"selector": dict(selector)}},
             _content_type="application/strategic-merge-patch+json", verb="patch", kind="services",
             name=service, namespace=self.t.namespace)

    def abort(self) -> None:
        self._select(self.active, self.blue)
        self.cleanup()

    def cleanup(self) -> None:
        if self.owned_preview:
            self._delete("services", self.preview)
        else:
            # The user's preview back to the stable pods: its own selector, the keys the
            # green one added removed (null deletes a key in a merge patch).
            back: dict[str, str | None] = {k: None for k in self.green}
            back.update(self.state.get("preview_selector") or self.preview_blue)
            call(self.t.core.patch_namespaced_service, self.preview, self.t.namespace,
                 {"spec": {"selector": back}},
                 _content_type="application/strategic-merge-patch+json", verb="patch", kind="services",
                 name=self.preview, namespace=self.t.namespace)
        self._delete("deployments", self.extra)
