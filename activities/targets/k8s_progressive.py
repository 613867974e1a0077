"""Canary and blue-green on the Kubernetes target, without a service mesh.

The way Argo Rollouts works without traffic routing, with plain Deployments and Services:

- **canary**: a Deployment `<name>-canary` beside the stable one, its pods carrying the
  stable pods' labels (so the same Service sends them traffic) plus `shipflow/track:
  canary`. `set_weight: N` is a share of the pods: the canary scales up and the stable
  Deployment down so that the canary's share is as near N% as whole pods allow
  (`k8s_canary.canary_split`; 100% leaves the stable with none). Pauses, analysis (http,
  Prometheus) run in between; at the end the stable Deployment takes the new image by its
  own rolling update and its original size back, and the canary is deleted.
- **blue-green**: a Deployment `<name>-green` at full size whose pods carry the active
  Service's selector labels with `-green` appended, and a Service `<name>-preview` that
  selects them (or the user's `preview_service`, pointed there and back). Promotion
  patches the active Service's (`<name>`, or `active_service`) selector to the green
  labels (all traffic at once); the old pods stay for `scale_down_delay`, in which an
  abort patches the selector back. Then the stable Deployment takes the new image, the
  selector returns to it, and the green Deployment and the preview Service are deleted.
- **HorizontalPodAutoscaler** on the stable Deployment (`k8s_autoscalers`): the stable's
  size is the HPA's; the canary grows beside it (never scaling it), green takes its size.

An abort (a failed analysis, a cancel, a failed promotion) sends all traffic back to the
stable version at once (its original size back) and deletes what the strategy created; it is the step's own
cleanup, so a later compensation finds nothing left to undo but the stable Deployment.

Secret/config groups: the canary's and the green pods run the new group versions (their
`envFrom` from `k8s_groups.wanted_env_from`, the objects made before the Deployment), so
what is tested is what will be promoted; a change of group versions alone takes the
strategy like a new image, and an abort deletes the group objects made for it.

Durable phase: the state of the strategy (phase, canary step, weight, the end of a timed
pause, the measurements so far) lives in an annotation of the canary/green Deployment,
written before each phase's effects are awaited. A worker killed mid-rollout leaves it in
the cluster; the next attempt reads it and goes on at that step, never running a finished
one again. A retryable API error leaves it too when the step has another attempt
(`RolloutRequest.another_attempt`, from `shipflow.activities.attempts`); the error is then a
`StateKept`, and a cancel before that attempt aborts it (`abort_kept`). A pause without a duration waits for an operator, who sets the Deployment's
`shipflow/promote` annotation to the value of its `shipflow/paused` annotation
(`shipflow promote` does that for a run).
"""

from __future__ import annotations

import json
from typing import Any

from shipflow.activities.analysis.envrefs import resolve_analysis_env
from shipflow.activities.targets.base import (
    Invalid,
    NotFound,
    Progress,
    RolloutRequest,
    RolloutResult,
)
from shipflow.activities.targets.k8s_bluegreen import BlueGreen
from shipflow.activities.targets.k8s_canary import (
    Canary,
    canary_beside,
    canary_replicas,
    canary_split,
)
from shipflow.activities.targets.k8s_errors import call
from shipflow.activities.targets.k8s_progressive_base import (
    MERGE,
    PAUSED,
    PROMOTE,
    STATE,
    TRACK,
    Progressive,
)
from shipflow.activities.targets.kubernetes import KubernetesTarget
from shipflow.workflows.spec import AnalysisStep, Strategy

__all__ = [
    "PAUSED",
    "PROMOTE",
    "STATE",
    "TRACK",
    "abort_kept",
    "canary_beside",
    "canary_replicas",
    "canary_split",
    "progressive_rollout",
    "promote_paused",
    "refuse_unsupported",
]


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
            "is the Service <service>-preview, or the one strategy.blue_green.preview_service names"
        )


def progressive_rollout(
    target: KubernetesTarget, request: RolloutRequest, progress: Progress
) -> RolloutResult:
    """Run the request's canary or blue-green strategy to its end (or abort it)."""
    assert request.strategy is not None
    refuse_unsupported(request.strategy)
    strategy = resolve_analysis_env(request.strategy)
    request = request.model_copy(update={"strategy": strategy})
    runner: Progressive = (
        Canary(target, request, progress)
        if strategy.canary is not None
        else BlueGreen(target, request, progress)
    )
    return runner.run()


def abort_kept(target: KubernetesTarget, request: RolloutRequest, progress: Progress) -> str | None:
    """Abort the canary or blue-green that an attempt of `request`'s step kept for a next
    attempt that will not come; the Deployment aborted, or None if there was none."""
    assert request.strategy is not None
    runner: Progressive = (
        Canary(target, request, progress)
        if request.strategy.canary is not None
        else BlueGreen(target, request, progress)
    )
    return runner.abort_kept()


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
