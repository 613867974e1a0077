"""What the Kubernetes canary and blue-green share: the extra Deployment and its durable state.

`Progressive.run` creates (or, on a later attempt, adopts) the `<name>-canary` or
`<name>-green` Deployment and runs the strategy's phases. The state (phase, step, weight,
the stable's original size and image, the end of a timed pause, measurements) is a JSON
annotation of that Deployment, written before each phase's effects are awaited, so a
worker killed mid-rollout leaves it for the next attempt to resume. A retryable API error
leaves it too when another attempt of the step follows (`RolloutRequest.another_attempt`);
any other failure, a cancel, or a retryable error on the last attempt aborts.
The overview of both strategies is in `k8s_progressive`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from kubernetes import client

from shipflow.activities.targets import k8s_groups
from shipflow.activities.targets.base import (
    Conflict,
    NotFound,
    Progress,
    RolloutFailed,
    RolloutRequest,
    RolloutResult,
    StateKept,
    TargetError,
    Transient,
)
from shipflow.activities.targets.k8s_autoscalers import Autoscaler, autoscaler_of
from shipflow.activities.targets.k8s_errors import Cancelled, call
from shipflow.activities.targets.kubernetes import (
    KubernetesTarget,
    _container,
    probes_to_k8s,
    rollout_status,
)

log = logging.getLogger(__name__)

#: Annotations of the canary/green Deployment.
STATE = "shipflow/rollout"
PAUSED = "shipflow/paused"
PROMOTE = "shipflow/promote"
#: The label that tells the canary's and the green pods from the stable ones.
TRACK = "shipflow/track"
#: How often a wait looks at the clock and a cancellation, and at a rollout's progress.
TICK_S = 0.2
#: How often a pause reads the Deployment for an operator's promotion (pauses can be long).
PROMOTE_POLL_S = 1.0
MERGE = "application/merge-patch+json"


class Progressive:
    """What canary and blue-green share: the extra Deployment, its durable state, waits."""

    suffix = ""
    kind = ""

    def __init__(self, target: KubernetesTarget, request: RolloutRequest, progress: Progress):
        self.t = target
        self.request = request
        self.progress = progress
        self.name = request.service
        self.extra = f"{request.service}-{self.suffix}"
        self.started = time.monotonic()
        self.stable: Any = target._read_deployment(self.name)
        self.replicas = self.stable.spec.replicas if self.stable.spec.replicas is not None else 1
        # An HPA on the stable Deployment owns its size: the strategy never scales it.
        self.autoscaler: Autoscaler | None = autoscaler_of(target.api, target.namespace, self.name)
        resume = progress.resume or {}
        self.previous = resume.get("previous_image") or self._stable_image()
        # The groups' envFrom the new pods get (`k8s_groups`): the canary and the green pods
        # run the new group versions, as the promoted stable will. None: no groups involved.
        running = _container(self.stable, request.container).env_from
        self.env_from = k8s_groups.wanted_env_from(running, request.group_sources)
        self.groups_change = (
            self.env_from is not None and self.env_from != k8s_groups.plain(running)
        )
        self.state: dict[str, Any] = {}
        #: The extra Deployment exists (made or adopted): a state to resume from is there.
        self.made = False
        self.details: dict[str, Any] = {
            "strategy": self.kind, "image": request.image, "previous_image": self.previous,
        }
        if self.autoscaler is not None:
            self.details["autoscaler"] = self.autoscaler.ref

    # ------------------------------------------------------------ the run

    def run(self) -> RolloutResult:
        loaded = self._load()
        if loaded is None and self._stable_image() == self.request.image and not self.groups_change:
            # Done before (the extra Deployment is gone), or nothing to change: the plain
            # path follows the stable Deployment to its end. A change of group versions
            # alone is a new release: it takes the strategy like a new image.
            return self._plain()
        try:
            if loaded is None:
                self.state = self.initial_state()
                # The new group versions' objects exist before a pod refers to them; those
                # made here are in the durable state, for an abort to delete.
                made = self.t._groups().materialise(self.request.group_sources)
                if made:
                    self.state["groups_made"] = made
                self.create()
            else:
                self.state = loaded
                # The stable's size and image before the strategy changed them (the canary
                # scales it; an attempt may find it promoted already).
                self.replicas = int(loaded.get("stable_replicas", self.replicas))
                self.previous = loaded.get("previous_image") or self.previous
                self.details["previous_image"] = self.previous
                log.info("%s/%s: resuming at %s", self.kind, self.extra, self._where())
            self.made = True
            result = self.steps()
        except Conflict as e:
            if not e.retryable:  # someone else's Deployment or Service: never delete it
                raise
            self._keep_or_abort(e)
        except Exception as e:
            self._keep_or_abort(e)
        self.cleanup()
        return result

    def _keep_or_abort(self, error: Exception) -> None:
        """Raise what ended this attempt; abort first unless the next attempt resumes.

        A retryable API error (a 503, a 429, a dropped connection) when another attempt of
        the step follows leaves the extra Deployment, its durable state and the traffic
        split as they are: the next attempt resumes at the same phase and weight, as after
        a lost worker, so finished weights, analyses and pauses are not run again (as Argo
        Rollouts keeps its state across API blips). Anything else aborts.
        """
        if not self._resumable(error):
            self._abort_and_raise(error)
        where = self._where()
        log.warning("%s/%s: %s; kept at %s for the next attempt", self.kind, self.extra, error, where)
        self.details.update(message=f"kept at {where} for the next attempt: {error}")
        self.progress.beat(dict(self.details))
        raise StateKept(
            f"{error}; {self.kind} kept at {where} (deployments/{self.extra}): the next attempt "
            "resumes there"
        ) from None

    def _resumable(self, error: Exception) -> bool:
        return (
            self.request.another_attempt
            and self.made
            and isinstance(error, TargetError)
            and error.retryable
            and not isinstance(error, Cancelled)
            and not self.progress.cancelled()
        )

    def abort_kept(self) -> str | None:
        """Abort what an earlier attempt of this rollout kept for the next one, which will
        not come (the run was cancelled in the back-off). Returns the Deployment aborted,
        None when there was nothing (left by this run and step) to abort.

        Raises:
            Conflict: (not retryable) the extra Deployment belongs to another rollout.
            TargetError: the abort failed (retryable as the API's error is).
        """
        loaded = self._load()
        if loaded is None:
            return None
        self.state = loaded
        self.replicas = int(loaded.get("stable_replicas", self.replicas))
        self.previous = loaded.get("previous_image") or self.previous
        self.abort()
        self._collect_groups()
        log.info("%s/%s: aborted after a cancel: all traffic is on the stable version", self.kind, self.extra)
        return f"deployments/{self.extra}"

    def _abort_and_raise(self, error: Exception) -> None:
        """Abort, then raise what ended the strategy, saying that it was aborted.

        A failed analysis, a failed rollout, a cancel, or a retryable error with no attempt
        left: a canary must not keep its share of the traffic behind a failed step. A
        retryable error stays retryable (a Temporal-level retry starts the strategy over).
        """
        try:
            self.abort()
        except TargetError as failed:
            raise RolloutFailed(
                f"{error}; the abort failed too ({failed}): deployments/{self.extra} may still "
                "serve a share of the traffic"
            ) from error
        self._collect_groups()
        said = f"{error}; {self.kind} aborted: all traffic is on the stable version ({self.previous})"
        if isinstance(error, Cancelled):
            raise Cancelled(said) from None
        if isinstance(error, TargetError):
            raise (Transient(said) if error.retryable else RolloutFailed(said)) from None
        raise error

    def _collect_groups(self) -> None:
        """After an abort: delete the group objects nothing refers to any more, those made
        for this rollout at once. Never fails the abort (what is left goes after a later
        rollout)."""
        if not self.request.group_sources and not self.state.get("groups_made"):
            return
        try:
            self.t._groups().collect(fresh=self.state.get("groups_made") or (), gone=(self.extra,))
        except Exception as e:  # best effort: the abort itself is done
            log.warning(
                "%s/%s: could not collect group objects after the abort: %s",
                self.kind,
                self.extra,
                e,
            )

    def initial_state(self) -> dict[str, Any]:
        return {
            "run": self.request.run_id, "step": self.request.step_id, "image": self.request.image,
            "previous_image": self.previous,
        }

    def create(self) -> None:
        raise NotImplementedError

    def steps(self) -> RolloutResult:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        self._delete("deployments", self.extra)

    def _where(self) -> str:
        return str(self.state.get("phase"))

    # ------------------------------------------------------------ the extra Deployment

    def _stable_image(self) -> str | None:
        image = _container(self.stable, self.request.container).image
        return str(image) if image else None

    def _load(self) -> dict[str, Any] | None:
        """The durable state from the extra Deployment; None when there is none.

        Raises:
            Conflict: (not retryable) the Deployment exists and belongs to another run.
        """
        try:
            dep: Any = self.t._read_deployment(self.extra)
        except NotFound:
            return None
        raw = (dep.metadata.annotations or {}).get(STATE)
        state = json.loads(raw) if raw else {}
        if (state.get("run"), state.get("step"), state.get("image")) != (
            self.request.run_id, self.request.step_id, self.request.image,
        ):
            raise Conflict(
                f"deployments/{self.extra} in namespace {self.t.namespace} exists and belongs to "
                f"another rollout ({state.get('run') or 'not shipflow'}); delete it to go on",
                retryable=False,
            )
        return dict(state)

    def _body(self, *, replicas: int, labels: dict[str, str], selector: dict[str, str]) -> dict[str, Any]:
        """The extra Deployment: the stable one's pod template with the new image and the
        new group versions' envFrom."""
        template = self.t.api.sanitize_for_serialization(self.stable.spec.template)
        template.setdefault("metadata", {})["labels"] = labels
        containers = template["spec"]["containers"]
        wanted = self.request.container or containers[0]["name"]
        for container in containers:
            if container["name"] == wanted:
                container["image"] = self.request.image
                if self.env_from is not None:
                    container["envFrom"] = self.env_from
                if self.request.probes is not None:
                    ports = container.get("ports") or []
                    default = ports[0].get("containerPort") if ports else None
                    probes = probes_to_k8s(self.request.probes, default_port=default)
                    container.update({k: {h: v for h, v in p.items() if v is not None} for k, p in probes.items()})
        spec: dict[str, Any] = {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": template,
        }
        if self.request.progress_deadline_s:
            spec["progressDeadlineSeconds"] = max(1, int(self.request.progress_deadline_s + 0.999))
        elif self.stable.spec.progress_deadline_seconds:
            spec["progressDeadlineSeconds"] = self.stable.spec.progress_deadline_seconds
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": self.extra,
                "labels": {
                    "app.kubernetes.io/managed-by": "shipflow",
                    TRACK: self.suffix,
                    f"shipflow/{self.suffix}-of": self.name,
                },
                "annotations": {STATE: json.dumps(self.state, sort_keys=True)},
            },
            "spec": spec,
        }

    def _create(self, resource: str, body: dict[str, Any]) -> None:
        """Create an object; one left by an earlier attempt of this rollout is adopted."""
        api: Any = self.t.apps if resource == "deployments" else self.t.core
        method = api.create_namespaced_deployment if resource == "deployments" else api.create_namespaced_service
        name = body["metadata"]["name"]
        try:
            call(method, self.t.namespace, body, verb="create", kind=resource, name=name,
                 namespace=self.t.namespace, retry_conflicts=False)
        except Conflict:
            if resource == "deployments" and self._load() is None:
                raise
            log.info("%s/%s exists from an earlier attempt: adopting it", resource, name)

    def _save(self) -> None:
        """Write the state to the extra Deployment: from here on, a new attempt resumes it."""
        self._patch_extra({"metadata": {"annotations": {STATE: json.dumps(self.state, sort_keys=True)}}})
        self.details.update(phase=self.state.get("phase"))
        self.progress.beat(dict(self.details))

    def _patch_extra(self, body: dict[str, Any]) -> None:
        call(self.t.apps.patch_namespaced_deployment, self.extra, self.t.namespace, body,
             _content_type=MERGE, verb="patch", kind="deployments", name=self.extra,
             namespace=self.t.namespace)

    def _delete(self, resource: str, name: str) -> None:
        """Delete at once (pods in the background); already gone is fine."""
        api: Any = self.t.apps if resource == "deployments" else self.t.core
        method = api.delete_namespaced_deployment if resource == "deployments" else api.delete_namespaced_service
        try:
            call(method, name, self.t.namespace,
                 body=client.V1DeleteOptions(propagation_policy="Background"),
                 verb="delete", kind=resource, name=name, namespace=self.t.namespace)
        except NotFound:
            pass

    # ------------------------------------------------------------ waits

    def _interrupted(self) -> None:
        if self.progress.cancelled():
            raise Cancelled(f"{self.kind} rollout of deployments/{self.name} to {self.request.image} cancelled")

    def _wait_ready(self, name: str) -> client.V1Deployment:
        """Until the Deployment is rolled out (by `kubectl rollout status`'s rules)."""
        while True:
            self._interrupted()
            dep = self.t._read_deployment(name)
            state, message = rollout_status(dep)
            status = dep.status or client.V1DeploymentStatus()
            self.details.update(message=f"{name}: {message}", ready=status.ready_replicas or 0)
            self.progress.beat(dict(self.details))
            if state == "failed":
                raise RolloutFailed(f"{self.kind} of {self.request.image} failed: {message}")
            if state == "done":
                return dep
            time.sleep(TICK_S)

    def _wait(self, until: float | None, token: str | None) -> str:
        """Until the wall clock reaches `until`, or an operator promotes pause `token`.

        Returns `time` or `promoted`. With neither, waits for the promotion only.
        """
        looked = 0.0
        while True:
            self._interrupted()
            if until is not None and time.time() >= until:
                return "time"
            if token is not None and time.monotonic() - looked >= PROMOTE_POLL_S:
                looked = time.monotonic()
                extra: Any = self.t._read_deployment(self.extra)
                annotations = extra.metadata.annotations or {}
                if annotations.get(PROMOTE) == token:
                    return "promoted"
            self.progress.beat(dict(self.details))
            time.sleep(TICK_S)

    def _plain(self) -> RolloutResult:
        """The stable Deployment's own rolling update to the new image (the promotion)."""
        result = self.t.rollout(self.request.model_copy(update={"strategy": None}), self.progress)
        return result.model_copy(update={
            "strategy": self.kind, "previous_image": self.previous,
            "duration_s": round(time.monotonic() - self.started, 3),
        })
