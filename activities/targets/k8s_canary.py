"""The Kubernetes canary: a `<name>-canary` Deployment sized by the weight (see `k8s_progressive`).

Without a mesh a weight is a share of the pods behind the Service, as in Argo Rollouts'
canary without traffic routing: the canary scales up and the stable Deployment scales
down so that canary / (canary + stable) is as near the weight as whole pods allow, with
`N` (the stable's size before the rollout) or `N + 1` pods in all. Capacity never drops
below `N` ready pods: at each weight the side that grows is scaled and awaited first, then
the side that shrinks. The stable's original size is in the durable state; an abort and
the promotion put it back.

A HorizontalPodAutoscaler on the stable Deployment owns the stable's size: scaling it down
would fight the autoscaler. Then the stable is never scaled; at each weight the canary is
sized against the stable's current size (`canary_beside`), at most the autoscaler's
`maxReplicas` (or the stable's size, if larger), and the step's output says so.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shipflow.activities.analysis.measure import compact, counted, measure, verdict
from shipflow.activities.targets.base import RolloutFailed, RolloutResult
from shipflow.activities.targets.k8s_autoscalers import Autoscaler
from shipflow.activities.targets.k8s_errors import call
from shipflow.activities.targets.k8s_progressive_base import MERGE, PAUSED, TRACK, Progressive
from shipflow.workflows.spec import AnalysisStep, PauseStep, SetWeightStep

log = logging.getLogger(__name__)


def canary_split(total: int, weight: int) -> tuple[int, int]:
    """(canary, stable) pods for `weight` percent, `total` being the stable's original size.

    Of the splits with `total` or `total + 1` pods in all (neither side above `total`), the
    one whose canary share is nearest the weight, fewer pods on a tie. A weight strictly
    between 0 and 100 keeps at least one pod on each side (one replica: 1 and 1, a 50% share).
    """
    if total <= 0:
        return 0, 0
    if weight <= 0:
        return 0, total
    if weight >= 100:
        return total, 0
    best: tuple[float, int, int, int] | None = None
    for pods in (total, total + 1):
        for canary in range(1, min(total, pods - 1) + 1):
            stable = pods - canary
            if not 1 <= stable <= total:
                continue
            key = (abs(canary / pods - weight / 100), pods, canary, stable)
            if best is None or key < best:
                best = key
    assert best is not None  # total >= 1 always allows 1 and 1
    return best[2], best[3]


def canary_beside(stable: int, weight: int, *, most: int) -> int:
    """The canary's pods beside a stable Deployment of `stable` pods that is left as it is
    (an autoscaler owns its size): the count in 1..`most` whose share canary / (canary +
    stable) is nearest `weight`, fewer pods on a tie; none at weight 0."""
    if weight <= 0:
        return 0
    return min(range(1, max(1, most) + 1), key=lambda c: (abs(c / (c + stable) - weight / 100), c))


def canary_replicas(stable: int, weight: int) -> int:
    """The canary's pods for `weight` percent beside a stable Deployment of `stable` pods."""
    return canary_split(stable, weight)[0]


class Canary(Progressive):
    suffix = "canary"
    kind = "canary"

    def initial_state(self) -> dict[str, Any]:
        return {
            **super().initial_state(),
            "phase": "steps",
            "index": 0,
            "weight": 0,
            "stable_replicas": self.replicas,
        }

    def _where(self) -> str:
        return f"canary step {self.state.get('index')} (weight {self.state.get('weight')}%)"

    def create(self) -> None:
        labels = dict(self.stable.spec.template.metadata.labels or {})
        selector = dict(self.stable.spec.selector.match_labels or {})
        body = self._body(
            replicas=0, labels={**labels, TRACK: "canary"}, selector={**selector, TRACK: "canary"}
        )
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
                seconds = step.pause.duration.total_seconds() if step.pause.duration else None
                self._pause(index, seconds)
            elif isinstance(step, AnalysisStep):
                self._analyse(step)
            self.state.update(index=index + 1)
            for key in ("pause_until", "measurements", "next_at"):
                self.state.pop(key, None)
            self._save()
        if self.state["phase"] == "steps":
            self.state["phase"] = "promoting"
            self._save()
        # The stable takes the new image at the size it has now (none at weight 100, so no
        # old pod comes back), then returns to its original size; the canary goes last.
        result = self._plain()
        extra: dict[str, Any] = {"canary_weight": self.state["weight"]}
        if self.autoscaler is None:
            self._scale(self.name, self.replicas)
        else:
            extra["stable_replicas"] = f"left to {self.autoscaler.ref}"
        self._wait_ready(self.name)
        return result.model_copy(update={"instances": [*result.instances, extra]})

    def _set_weight(self, weight: int) -> None:
        """Both Deployments to the split for `weight`: the growing side first, awaited."""
        if self.autoscaler is not None:
            self._set_weight_beside(weight, self.autoscaler)
            return
        canary, stable = canary_split(self.replicas, weight)
        self.state["weight"] = weight
        self._save()
        sizes = {self.extra: canary, self.name: stable}
        now = {name: self._size(name) for name in sizes}
        grow = [name for name in sizes if sizes[name] > now[name]]
        shrink = [name for name in sizes if sizes[name] < now[name]]
        for group in (grow, shrink):
            for name in group:
                self._patch_replicas(name, sizes[name])
            for name in group:
                self._wait_ready(name)
        self._reached(weight, canary, stable)
        log.info(
            "deployments/%s: weight %s%%, %s canary pod(s), %s stable",
            self.extra, weight, canary, stable,
        )
        self.progress.beat(dict(self.details))

    def _set_weight_beside(self, weight: int, autoscaler: Autoscaler) -> None:
        """The canary alone to its share beside the stable's current size, which the
        autoscaler owns (scaling the stable down would fight it)."""
        self.state["weight"] = weight
        self._save()
        stable = self._size(self.name)
        canary = canary_beside(stable, weight, most=max(stable, autoscaler.max_replicas))
        self._patch_replicas(self.extra, canary)
        self._wait_ready(self.extra)
        self._reached(
            weight, canary, stable,
            message=f"{canary} canary pod(s) beside {stable} stable; the stable's size is left to {autoscaler.ref}",
        )
        log.info(
            "deployments/%s: weight %s%%, %s canary pod(s) beside %s stable (sized by %s)",
            self.extra, weight, canary, stable, autoscaler.ref,
        )
        self.progress.beat(dict(self.details))

    def _reached(self, weight: int, canary: int, stable: int, **more: str) -> None:
        """The step's details once `weight` stands: both sizes and the canary's pod share."""
        share = canary / (canary + stable) if canary else 0.0
        self.details.update(
            weight=weight,
            canary_replicas=canary,
            stable_replicas=stable,
            canary_share=round(share, 3),
            **more,
        )

    def _size(self, name: str) -> int:
        dep: Any = self.t._read_deployment(name)
        return int(dep.spec.replicas if dep.spec.replicas is not None else 1)

    def _scale(self, name: str, replicas: int) -> None:
        """The Deployment to `replicas`, unless it has that many already (no patch then)."""
        if self._size(name) != replicas:
            self._patch_replicas(name, replicas)

    def _patch_replicas(self, name: str, replicas: int) -> None:
        call(
            self.t.apps.patch_namespaced_deployment,
            name,
            self.t.namespace,
            {"spec": {"replicas": replicas}},
            _content_type=MERGE,
            verb="patch",
            kind="deployments",
            name=name,
            namespace=self.t.namespace,
        )

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
        while counted(measurements) < spec.count:  # an error is measured again
            if "next_at" not in self.state:
                self.state["next_at"] = time.time() + spec.interval.total_seconds()
                self._save()
            self._wait(self.state["next_at"], None)
            result = measure(spec)
            result["message"] = str(result["message"])[:300]
            result.pop("at", None)
            measurements.append(result)
            compact(measurements)
            self.state.pop("next_at")
            self._save()
            done = counted(measurements)
            self.details.update(analysis=result, message=f"analysis {done}/{spec.count}: {result['phase']}")
            failed = verdict(spec, measurements)
            if failed is not None:
                raise RolloutFailed(failed)

    def abort(self) -> None:
        """All traffic to the stable version at once: its original size back, the canary gone.

        The canary is deleted without waiting for the stable's pods to come back: a canary
        that failed must stop serving now; the stable's capacity returns as its pods start.
        """
        if self.autoscaler is None:
            self._scale(self.name, self.replicas)
        self._delete("deployments", self.extra)
