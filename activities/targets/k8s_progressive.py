"""Canary and blue-green on the Kubernetes target, without a service mesh.

The way Argo Rollouts works without traffic routing, with plain Deployments and Services:

- **canary**: a Deployment `<name>-canary` beside the stable one, its pods carrying the
  stable pods' labels (so the same Service sends them traffic) plus `shipflow/track:
  canary`. `set_weight: N` sizes it so that its share of the pods is as close to N% as
  replicas allow, with the stable Deployment left at full size (an abort is then only a
  delete). A share above 50% would need more canary pods than stable ones: the canary
  tops at as many pods as the stable Deployment. Pauses, analysis (http, Prometheus) run
  in between; at the end the stable Deployment takes the new image by its own rolling
  update, and the canary is deleted.
- **blue-green**: a Deployment `<name>-green` at full size whose pods carry the Service's
  selector labels with `-green` appended, and a Service `<name>-preview` that selects
  them. Promotion patches the main Service's selector to the green labels (all traffic at
  once); the old pods stay for `scale_down_delay`, in which an abort patches the selector
  back. Then the stable Deployment takes the new image, the selector returns to it, and
  the green Deployment and the preview Service are deleted.

An abort (a failed analysis, a cancel, a failed promotion) sends all traffic back to the
stable version at once and deletes what the strategy created; it is the step's own
cleanup, so a later compensation finds nothing left to undo but the stable Deployment.

Durable phase: the state of the strategy (phase, canary step, weight, the end of a timed
pause, the measurements so far) lives in an annotation of the canary/green Deployment,
written before each phase's effects are awaited. A worker killed mid-rollout leaves it in
the cluster; the next attempt reads it and goes on at that step, never running a finished
one again. A pause without a duration waits for an operator, who sets the Deployment's
`shipflow/promote` annotation to the value of its `shipflow/paused` annotation
(`shipflow promote` does that for a run).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from kubernetes import client

from shipflow.activities.analysis.envrefs import resolve_analysis_env
from shipflow.activities.analysis.measure import measure, verdict
from shipflow.activities.targets.base import (
    Conflict,
    Invalid,
    NotFound,
    Progress,
    RolloutFailed,
    RolloutRequest,
    RolloutResult,
    TargetError,
    Transient,
)
from shipflow.activities.targets.k8s_errors import Cancelled, call
from shipflow.activities.targets.kubernetes import (
    KubernetesTarget,
    _container,
    probes_to_k8s,
    rollout_status,
)
from shipflow.workflows.spec import AnalysisStep, PauseStep, SetWeightStep, Strategy

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


def canary_replicas(stable: int, weight: int) -> int:
    """Canary pods beside `stable` unchanged ones for a share nearest `weight` percent."""
    if weight <= 0 or stable <= 0:
        return 0
    if weight >= 50:
        return stable
    return min(stable, max(1, round(stable * weight / (100 - weight))))


def refuse_unsupported(strategy: Strategy) -> None:
    """What this target cannot do, refused before anything is changed.

    Raises:
        Invalid: a front-port counter in an analysis, or a blue-green preview port.
    """
    if strategy.canary is not None:
        for i, step in enumerate(strategy.canary.steps):
            if isinstance(step, AnalysisStep) and (
                step.analysis.success_rate is not None or step.analysis.max_p95 is not None
            ):
                raise Invalid(
                    f"strategy.canary.steps[{i}].analysis: success_rate and max_p95 are the local "
                    "front port's counters; on kubernetes measure with prometheus or http"
                )
    if strategy.blue_green is not None and strategy.blue_green.preview_port is not None:
        raise Invalid(
            "strategy.blue_green.preview_port is for the local target; on kubernetes the preview "
            "is the Service <service>-preview"
        )


def progressive_rollout(
    target: KubernetesTarget, request: RolloutRequest, progress: Progress
) -> RolloutResult:
    """Run the request's canary or blue-green strategy to its end (or abort it)."""
    assert request.strategy is not None
    refuse_unsupported(request.strategy)
    strategy = resolve_analysis_env(request.strategy)
    request = request.model_copy(update={"strategy": strategy})
    runner: _Progressive = (
        _Canary(target, request, progress)
        if strategy.canary is not None
        else _BlueGreen(target, request, progress)
    )
    return runner.run()


class _Progressive:
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
        resume = progress.resume or {}
        self.previous = resume.get("previous_image") or self._stable_image()
        self.state: dict[str, Any] = {}
        self.details: dict[str, Any] = {
            "strategy": self.kind, "image": request.image, "previous_image": self.previous,
        }

    # ------------------------------------------------------------ the run

    def run(self) -> RolloutResult:
        loaded = self._load()
        if loaded is None and self._stable_image() == self.request.image:
            # Done before (the extra Deployment is gone), or nothing to change: the plain
            # path follows the stable Deployment to its end.
            return self._plain()
        try:
            if loaded is None:
                self.state = self.initial_state()
                self.create()
            else:
                self.state = loaded
                log.info("%s/%s: resuming at %s", self.kind, self.extra, self._where())
            result = self.steps()
        except Conflict as e:
            if not e.retryable:  # someone else's Deployment or Service: never delete it
                raise
            self._abort_and_raise(e)
        except Exception as e:
            self._abort_and_raise(e)
        self.cleanup()
        return result

    def _abort_and_raise(self, error: Exception) -> None:
        """Abort, then raise what ended the strategy, saying that it was aborted.

        Every failure aborts, a retryable one too: the step may have no attempt left, and a
        canary must not keep its share of the traffic behind a failed step. A retryable
        error stays retryable; the next attempt then starts the strategy over. Only a lost
        worker (no exception at all) leaves the state for the next attempt to resume.
        """
        try:
            self.abort()
        except TargetError as failed:
            raise RolloutFailed(
                f"{error}; the abort failed too ({failed}): deployments/{self.extra} may still "
                "serve a share of the traffic"
            ) from error
        said = f"{error}; {self.kind} aborted: all traffic is on the stable version ({self.previous})"
        if isinstance(error, Cancelled):
            raise Cancelled(said) from None
        if isinstance(error, TargetError):
            raise (Transient(said) if error.retryable else RolloutFailed(said)) from None
        raise error

    def initial_state(self) -> dict[str, Any]:
        return {"run": self.request.run_id, "step": self.request.step_id, "image": self.request.image}

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
        """The extra Deployment: the stable one's pod template with the new image."""
        template = self.t.api.sanitize_for_serialization(self.stable.spec.template)
        template.setdefault("metadata", {})["labels"] = labels
        containers = template["spec"]["containers"]
        wanted = self.request.container or containers[0]["name"]
        for container in containers:
            if container["name"] == wanted:
                container["image"] = self.request.image
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


class _Canary(_Progressive):
    suffix = "canary"
    kind = "canary"

    def initial_state(self) -> dict[str, Any]:
        return {**super().initial_state(), "phase": "steps", "index": 0, "weight": 0}

    def _where(self) -> str:
        return f"canary step {self.state.get('index')} (weight {self.state.get('weight')}%)"

    def create(self) -> None:
        labels = dict(self.stable.spec.template.metadata.labels or {})
        selector = dict(self.stable.spec.selector.match_labels or {})
        body = self._body(replicas=0, labels={**labels, TRACK: "canary"}, selector={**selector, TRACK: "canary"})
        self._create("deployments", body)
        self.details.update(phase="steps", stable_replicas=self.replicas)
        self.progress.beat(dict(self.details))

    def steps(self) -> RolloutResult:
        assert self.request.strategy is not None and self.request.strategy.canary is not None
        steps = self.request.strategy.canary.steps
        self.details.update(stable_replicas=self.replicas)
        while self.state["phase"] == "steps" and self.state["index"] < len(steps):
            index = self.state["index"]
            step = steps[index]
            self.details.update(canary_step=index, weight=self.state["weight"], paused=False)
            if isinstance(step, SetWeightStep):
                self._set_weight(step.set_weight)
            elif isinstance(step, PauseStep):
                self._pause(index, step.pause.duration.total_seconds() if step.pause.duration else None)
            elif isinstance(step, AnalysisStep):
                self._analyse(step)
            self.state.update(index=index + 1)
            for key in ("pause_until", "measurements", "next_at"):
                self.state.pop(key, None)
            self._save()
        if self.state["phase"] == "steps":
            self.state["phase"] = "promoting"
            self._save()
        result = self._plain()
        return result.model_copy(update={"instances": [*result.instances, {"canary_weight": self.state["weight"]}]})

    def _set_weight(self, weight: int) -> None:
        count = canary_replicas(self.replicas, weight)
        self.state["weight"] = weight
        self._save()
        call(self.t.apps.patch_namespaced_deployment, self.extra, self.t.namespace,
             {"spec": {"replicas": count}}, _content_type=MERGE, verb="patch", kind="deployments",
             name=self.extra, namespace=self.t.namespace)
        share = count / (count + self.replicas) if count else 0.0
        self.details.update(weight=weight, canary_replicas=count, canary_share=round(share, 3))
        log.info("deployments/%s: weight %s%%, %s canary pod(s) beside %s", self.extra, weight, count, self.replicas)
        self._wait_ready(self.extra)

    def _pause(self, index: int, seconds: float | None) -> None:
        token = str(index)
        if seconds is not None and "pause_until" not in self.state:
            self.state["pause_until"] = time.time() + seconds
            self._save()
        self._patch_extra({"metadata": {"annotations": {PAUSED: token}}})
        self.details.update(paused=True, message=f"paused at canary step {index}")
        self.progress.beat(dict(self.details))
        how = self._wait(self.state.get("pause_until"), token)
        self._patch_extra({"metadata": {"annotations": {PAUSED: None}}})
        self.details.update(paused=False, message=f"pause {index} ended ({how})")

    def _analyse(self, step: AnalysisStep) -> None:
        spec = step.analysis
        measurements: list[dict[str, Any]] = self.state.setdefault("measurements", [])
        while len(measurements) < spec.count:
            if "next_at" not in self.state:
                self.state["next_at"] = time.time() + spec.interval.total_seconds()
                self._save()
            self._wait(self.state["next_at"], None)
            result = measure(spec)
            result["message"] = str(result["message"])[:300]
            result.pop("at", None)
            measurements.append(result)
            self.state.pop("next_at")
            self._save()
            self.details.update(analysis=result, message=f"analysis {len(measurements)}/{spec.count}: {result['phase']}")
            failed = verdict(spec, measurements)
            if failed is not None:
                raise RolloutFailed(failed)

    def abort(self) -> None:
        self._delete("deployments", self.extra)


class _BlueGreen(_Progressive):
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
        return {**super().initial_state(), "phase": "preview"}

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
        return result

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


def promote_paused(target: KubernetesTarget, service: str, run_id: str, step_id: str) -> tuple[str, str]:
    """Promote the pause the rollout of `run_id`/`step_id` waits in: (Deployment, pause).

    Sets `shipflow/promote` to the value of `shipflow/paused` on the canary or green
    Deployment of that rollout; the rollout notices within a second.

    Raises:
        NotFound: (not retryable) no Deployment of that rollout waits in a pause.
    """
    for suffix in ("canary", "green"):
        name = f"{service}-{suffix}"
        try:
            dep: Any = target._read_deployment(name)
        except NotFound:
            continue
        annotations = dep.metadata.annotations or {}
        state = json.loads(annotations.get(STATE) or "{}")
        pause = annotations.get(PAUSED)
        if (state.get("run"), state.get("step")) != (run_id, step_id) or not pause:
            continue
        call(target.apps.patch_namespaced_deployment, name, target.namespace,
             {"metadata": {"annotations": {PROMOTE: pause}}}, _content_type=MERGE, verb="patch",
             kind="deployments", name=name, namespace=target.namespace)
        return name, pause
    raise NotFound(f"step {step_id!r} of run {run_id!r} has no canary or green Deployment waiting in a pause")
