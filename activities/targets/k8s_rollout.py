"""Deployments rolled out by image patch (and probes, strategy, envFrom of groups), judged
by the same rules as `kubectl rollout status`.

A rollout is followed with the watch API (re-listing after each watch window, so a dropped
watch loses nothing) and reported through `Progress.beat`, which is what makes a crashed
worker's successor resume the watch instead of patching the image a second time.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from shipflow.activities.targets import k8s_groups
from shipflow.activities.targets.base import (
    Conflict,
    Progress,
    RolloutFailed,
    RolloutRequest,
    RolloutResult,
    TargetError,
    Transient,
)
from shipflow.activities.targets.k8s_client import NamespaceClients
from shipflow.activities.targets.k8s_errors import CONNECTION_ERRORS, Cancelled, api_error, call
from shipflow.activities.targets.k8s_fields import (
    container_of,
    meta_of,
    probes_to_k8s,
    strategy_to_k8s,
)
from shipflow.workflows.spec import Probes

log = logging.getLogger(__name__)

#: Consecutive failed watch requests tolerated before the rollout step fails (retryably).
WATCH_FAILURES = 5


def rollout_status(dep: client.V1Deployment) -> tuple[str, str]:
    """Where a rollout stands, by the rules of `kubectl rollout status`.

    Returns:
        (`done` | `waiting` | `failed`, a human sentence).
    """
    meta = meta_of(dep)
    spec = dep.spec
    status = dep.status or client.V1DeploymentStatus()
    generation = meta.generation or 0
    if generation > (status.observed_generation or 0):
        return "waiting", "waiting for the deployment spec update to be observed"
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return "failed", f"deployment {meta.name!r} exceeded its progress deadline"
    wanted = spec.replicas if spec.replicas is not None else 1
    updated = status.updated_replicas or 0
    total = status.replicas or 0
    available = status.available_replicas or 0
    if updated < wanted:
        return "waiting", f"{updated} out of {wanted} new replicas have been updated"
    if total > updated:
        return "waiting", f"{total - updated} old replicas are pending termination"
    if available < updated:
        return "waiting", f"{available} of {updated} updated replicas are available"
    return "done", f"deployment {meta.name!r} successfully rolled out"


class DeploymentRollouts(NamespaceClients):
    """`rollout`: patch a Deployment, follow it to its end, set it back if it fails."""

    def rollout(self, request: RolloutRequest, progress: Progress) -> RolloutResult:
        """Patch the Deployment's image (and probes), then follow the rollout to its end.

        On a later attempt of the same step (`progress.resume`) the Deployment usually
        has the new image already; it is then not patched again, the watch resumes.
        Canary and blue-green are not run here: `KubernetesTarget.rollout` hands them to
        `k8s_progressive` (extra Deployment and Service).

        Raises:
            RolloutFailed: the Deployment reported ProgressDeadlineExceeded; its container
                was set back to the previous image (and probes).
            Cancelled: the run asked the step to stop; the container was set back too.
            TargetError: the API refused or failed (mapped in `k8s_errors`).
        """
        started = time.monotonic()
        name = request.service
        dep = self._read_deployment(name)
        current = container_of(dep, request.container)
        container = current.name
        resume = progress.resume or {}
        previous = resume.get("previous_image", current.image) if resume else current.image
        details: dict[str, Any] = {
            "phase": "patching",
            "image": request.image,
            "previous_image": previous,
        }
        restore: dict[str, Any] = {"name": container, "image": previous}
        # Secret/config groups: referenced with envFrom (`k8s_groups`); a new version alone
        # changes the template, a real rollout.
        env_from = k8s_groups.wanted_env_from(current.env_from, request.group_sources)
        if env_from is not None:
            running = k8s_groups.plain(current.env_from)
            restore["envFrom"] = details["previous_env_from"] = (
                resume.get("previous_env_from", running) if resume else running
            )
        if (
            current.image != request.image
            or (request.probes is not None and not resume)
            or (env_from is not None and env_from != k8s_groups.plain(current.env_from))
        ):
            progress.beat(details)
            self._groups().materialise(request.group_sources)
            self._patch(dep, container, request, env_from)
            if request.probes is not None:
                restore.update(self._probes_before(current, request.probes))
        elif resume:
            log.info("deployments/%s already runs %s: resuming the watch", name, request.image)
        details["phase"] = "watching"
        try:
            final = self._watch_rollout(name, container, request.image, progress, details)
        except (RolloutFailed, Cancelled) as e:
            # The contract of RolloutFailed: the old version keeps serving. Kubernetes
            # leaves the stuck template in place, so put the previous one back; the same
            # on cancellation, because the run's compensation only undoes steps that
            # finished, and this one did not.
            if previous and previous != request.image:
                self._restore(name, restore)
                raise type(e)(f"{e}; deployments/{name} was set back to {previous}") from None
            raise
        if env_from is not None:
            self._groups().collect()
        status = final.status or client.V1DeploymentStatus()
        return RolloutResult(
            service=name,
            image=request.image,
            previous_image=previous,
            instances=[
                {
                    "replicas": status.replicas or 0,
                    "updated": status.updated_replicas or 0,
                    "ready": status.ready_replicas or 0,
                }
            ],
            duration_s=round(time.monotonic() - started, 3),
        )

    def _patch(
        self,
        dep: client.V1Deployment,
        container: str,
        request: RolloutRequest,
        env_from: list[dict[str, Any]] | None = None,
    ) -> None:
        """One strategic merge patch: the container's image, its probes, the deadline."""
        entry: dict[str, Any] = {"name": container, "image": request.image}
        if env_from is not None:
            entry["envFrom"] = env_from
        if request.probes is not None:
            ports = container_of(dep, container).ports or []
            default_port = ports[0].container_port if ports else None
            entry.update(probes_to_k8s(request.probes, default_port=default_port))
        spec: dict[str, Any] = {"template": {"spec": {"containers": [entry]}}}
        if request.progress_deadline_s:
            spec["progressDeadlineSeconds"] = max(1, math.ceil(request.progress_deadline_s))
        if request.strategy is not None:
            spec["strategy"] = strategy_to_k8s(request.strategy)
        call(
            self.apps.patch_namespaced_deployment,
            request.service,
            self.namespace,
            {"spec": spec},
            _content_type="application/strategic-merge-patch+json",
            verb="patch",
            kind="deployments",
            name=request.service,
            namespace=self.namespace,
        )

    def _probes_before(self, container: client.V1Container, probes: Probes) -> dict[str, Any]:
        """The container's probes as they were, for the fields a rollout changes."""
        out: dict[str, Any] = {}
        for ours, theirs, attr in (
            ("readiness", "readinessProbe", "readiness_probe"),
            ("liveness", "livenessProbe", "liveness_probe"),
            ("startup", "startupProbe", "startup_probe"),
        ):
            if getattr(probes, ours) is None:
                continue
            before = getattr(container, attr)
            out[theirs] = (
                {"$patch": "replace", **self.api.sanitize_for_serialization(before)}
                if before is not None
                else None
            )
        return out

    def _restore(self, name: str, container: dict[str, Any]) -> None:
        """Patch a container back after a failed rollout (image, and probes if changed)."""
        call(
            self.apps.patch_namespaced_deployment,
            name,
            self.namespace,
            {"spec": {"template": {"spec": {"containers": [container]}}}},
            _content_type="application/strategic-merge-patch+json",
            verb="patch",
            kind="deployments",
            name=name,
            namespace=self.namespace,
        )

    def _check(
        self,
        dep: client.V1Deployment,
        container: str,
        image: str,
        details: dict[str, Any],
        progress: Progress,
    ) -> bool:
        """Report where the rollout stands; True when done, raise when it failed."""
        running = container_of(dep, container).image
        if running != image:
            raise Conflict(
                f"deployments/{meta_of(dep).name} in namespace {self.namespace} was changed to "
                f"{running} by someone else during the rollout to {image}",
                retryable=False,
            )
        status = dep.status or client.V1DeploymentStatus()
        details.update(
            generation=meta_of(dep).generation or 0,
            updated=status.updated_replicas or 0,
            ready=status.ready_replicas or 0,
            available=status.available_replicas or 0,
            total=dep.spec.replicas if dep.spec.replicas is not None else 1,
        )
        state, message = rollout_status(dep)
        details["message"] = message
        progress.beat(dict(details))
        if state == "failed":
            raise RolloutFailed(f"rollout of {image} failed: {message}")
        return state == "done"

    def _watch_rollout(
        self, name: str, container: str, image: str, progress: Progress, details: dict[str, Any]
    ) -> client.V1Deployment:
        selector = f"metadata.name={name}"
        failures = 0
        while True:
            if progress.cancelled():
                raise Cancelled(f"rollout of deployments/{name} to {image} cancelled")
            listed = call(
                self.apps.list_namespaced_deployment,
                self.namespace,
                field_selector=selector,
                verb="list",
                kind="deployments",
                name=name,
                namespace=self.namespace,
            )
            if not listed.items:
                raise api_error(
                    ApiException(status=404, reason="deleted during the rollout"),
                    verb="watch",
                    kind="deployments",
                    name=name,
                    namespace=self.namespace,
                )
            dep = listed.items[0]
            if self._check(dep, container, image, details, progress):
                return dep
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                    self.apps.list_namespaced_deployment,
                    self.namespace,
                    field_selector=selector,
                    resource_version=listed.metadata.resource_version if listed.metadata else None,
                    timeout_seconds=self.watch_timeout_s,
                    _request_timeout=self.watch_timeout_s + 5,
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        dep = event["object"]
                        if self._check(dep, container, image, details, progress):
                            return dep
                    elif event["type"] == "DELETED":
                        break
                    if progress.cancelled():
                        break
                failures = 0
            except ApiException as e:
                error = api_error(
                    e, verb="watch", kind="deployments", name=name, namespace=self.namespace
                )
                if not error.retryable:
                    raise error from e
                failures = self._watch_failed(error, failures)
            except CONNECTION_ERRORS as e:
                error = api_error(
                    e, verb="watch", kind="deployments", name=name, namespace=self.namespace
                )
                failures = self._watch_failed(error, failures)
            finally:
                watcher.stop()

    @staticmethod
    def _watch_failed(error: TargetError, failures: int) -> int:
        """A watch request failed: fall back to re-listing, a few times in a row at most."""
        failures += 1
        if failures >= WATCH_FAILURES:
            raise Transient(f"{error} ({failures} watch failures in a row)") from error
        log.info("watch failed (%s); re-listing", error)
        time.sleep(0.1 * failures)
        return failures
