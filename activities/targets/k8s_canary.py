"""The Kubernetes canary: a `<name>-canary` Deployment sized by the weight (see `k8s_progressive`)."""

from __future__ import annotations

import logging
import time
from typing import Any

from shipflow.activities.analysis.measure import measure, verdict
from shipflow.activities.targets.base import RolloutFailed, RolloutResult
from shipflow.activities.targets.k8s_errors import call
from shipflow.activities.targets.k8s_progressive_base import MERGE, PAUSED, TRACK, Progressive
from shipflow.workflows.spec import AnalysisStep, PauseStep, SetWeightStep

log = logging.getLogger(__name__)


def canary_replicas(stable: int, weight: int) -> int:
    """Canary pods beside `stable` unchanged ones for a share nearest `weight` percent."""
    if weight <= 0 or stable <= 0:
        return 0
    if weight >= 50:
        return stable
    return min(stable, max(1, round(stable * weight / (100 - weight))))


class Canary(Progressive):
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
