"""Release metrics recorded by `ReleaseWorkflow`, through Temporal's workflow metric meter.

Why in the workflow: the run is where a step's outcome, a compensation, a decision or the
run's end happens exactly once. `workflow.metric_meter()` records nothing while a worker
replays history, so a run's end is counted once, whichever worker (re)starts, and the
worker exports it through the Temporal SDK runtime's Prometheus endpoint next to the SDK's
own metrics (see `shipflow.worker.telemetry`).

Labels stay low-cardinality: flow, stage, step kind, outcome, trigger, decision. Never a
run id. The names below are what the dashboard and alert rules in `infra/observability/`
query (a test checks that each exists after real runs).

The two gauges (approvals waiting, runs queued) are kept as up/down counts in this process
(`_UpDown`), keyed by run and step so that a replay that re-enters a state does not count it
twice; a worker started while a run waits learns about it at the run's next workflow task.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from temporalio import workflow
from temporalio.common import (
    MetricCounter,
    MetricGauge,
    MetricHistogramFloat,
    MetricMeter,
)

RUNS_STARTED = "shipflow_release_runs_started_total"
RUNS_ENDED = "shipflow_release_runs_ended_total"
RUN_DURATION = "shipflow_release_run_duration_seconds"
STEP_DURATION = "shipflow_release_step_duration_seconds"
STEP_ATTEMPTS = "shipflow_release_step_attempts_total"
STEP_RETRIES = "shipflow_release_step_retries_total"
COMPENSATIONS = "shipflow_release_compensations_total"
ROLLOUT_DURATION = "shipflow_release_rollout_duration_seconds"
INSTANCES_REPLACED = "shipflow_release_rollout_instances_replaced_total"
BACKUP_DURATION = "shipflow_release_backup_duration_seconds"
BACKUP_BYTES = "shipflow_release_backup_bytes"
APPROVALS_WAITING = "shipflow_release_approvals_waiting"
APPROVAL_DECISION = "shipflow_release_approval_decision_seconds"
RUNS_QUEUED = "shipflow_release_runs_queued"
QUEUE_WAIT = "shipflow_release_queue_wait_seconds"
NOTIFICATIONS = "shipflow_release_notifications_total"

_SECONDS = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400]
_BYTES = [1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11]

#: Histogram buckets for the worker's Prometheus exporter (the SDK's defaults are in ms).
BUCKETS: dict[str, list[float]] = {
    RUN_DURATION: _SECONDS,
    STEP_DURATION: _SECONDS,
    ROLLOUT_DURATION: _SECONDS,
    BACKUP_DURATION: _SECONDS,
    BACKUP_BYTES: _BYTES,
    APPROVAL_DECISION: _SECONDS,
    QUEUE_WAIT: _SECONDS,
}

#: Every metric a worker exports for runs (the dashboard test checks against it).
NAMES = (
    RUNS_STARTED,
    RUNS_ENDED,
    RUN_DURATION,
    STEP_DURATION,
    STEP_ATTEMPTS,
    STEP_RETRIES,
    COMPENSATIONS,
    ROLLOUT_DURATION,
    INSTANCES_REPLACED,
    BACKUP_DURATION,
    BACKUP_BYTES,
    APPROVALS_WAITING,
    APPROVAL_DECISION,
    RUNS_QUEUED,
    QUEUE_WAIT,
    NOTIFICATIONS,
)


class _UpDown:
    """A per-process gauge of how many (run, step) are in a state, by label set."""

    def __init__(self) -> None:
        self._members: dict[tuple[tuple[str, str], ...], set[tuple[str, str]]] = defaultdict(set)

    def change(
        self, gauge: MetricGauge, labels: dict[str, str], member: tuple[str, str], present: bool
    ) -> None:
        key = (("task_queue", workflow.info().task_queue), *sorted(labels.items()))
        members = self._members[key]
        before = len(members)
        if present:
            members.add(member)
        else:
            members.discard(member)
        if len(members) != before:
            gauge.set(len(members), labels)  # a replaying worker's meter drops this


_WAITING = _UpDown()
_QUEUED = _UpDown()


class RunMetrics:
    """One run's instruments, created on first use (per workflow instance)."""

    def __init__(self, flow: str, stage: str):
        self._labels = {"flow": flow, "stage": stage}
        self._meter: MetricMeter | None = None
        self._made: dict[str, Any] = {}

    def _instrument(self, name: str, kind: str, description: str, unit: str | None = None) -> Any:
        made = self._made.get(name)
        if made is None:
            if self._meter is None:
                self._meter = workflow.metric_meter()
            if kind == "counter":
                made = self._meter.create_counter(name, description)
            elif kind == "gauge":
                made = self._meter.create_gauge(name, description)
            else:
                made = self._meter.create_histogram_float(name, description, unit)
            self._made[name] = made
        return made

    def _counter(self, name: str, description: str) -> MetricCounter:
        return self._instrument(name, "counter", description)  # type: ignore[no-any-return]

    def _histogram(self, name: str, description: str, unit: str = "s") -> MetricHistogramFloat:
        return self._instrument(name, "histogram", description, unit)  # type: ignore[no-any-return]

    def _with(self, **labels: str) -> dict[str, str]:
        return {**self._labels, **labels}

    # ------------------------------------------------------------ run

    def run_started(self, trigger: str) -> None:
        self._counter(RUNS_STARTED, "Release runs started, by trigger.").add(
            1, self._with(trigger=trigger)
        )

    def run_ended(self, state: str, duration_s: float) -> None:
        labels = self._with(outcome=state)
        self._counter(RUNS_ENDED, "Release runs ended, by final state.").add(1, labels)
        self._histogram(RUN_DURATION, "Release run duration, by final state.").record(
            max(duration_s, 0.0), labels
        )

    def queued(self, run_id: str, present: bool) -> None:
        gauge = self._instrument(RUNS_QUEUED, "gauge", "Runs waiting for their stage.")
        _QUEUED.change(gauge, dict(self._labels), (run_id, ""), present)

    def queue_wait(self, seconds: float) -> None:
        self._histogram(QUEUE_WAIT, "Time a run waited for its stage.").record(
            max(seconds, 0.0), self._with()
        )

    # ------------------------------------------------------------ steps

    def step_ended(
        self, kind: str, outcome: str, duration_s: float, attempts: int, output: Any
    ) -> None:
        labels = self._with(kind=kind, outcome=outcome)
        self._histogram(STEP_DURATION, "Step duration, by kind and outcome.").record(
            max(duration_s, 0.0), labels
        )
        if attempts > 0:
            kinds = self._with(kind=kind)
            self._counter(STEP_ATTEMPTS, "Step attempts, by kind.").add(attempts, kinds)
            if attempts > 1:
                self._counter(STEP_RETRIES, "Step retries (attempts after the first).").add(
                    attempts - 1, kinds
                )
        if outcome != "succeeded" or not isinstance(output, dict):
            return
        if kind in ("deploy", "promote") and isinstance(output.get("duration_s"), int | float):
            self._histogram(ROLLOUT_DURATION, "Rollout duration (deploy, promote).").record(
                float(output["duration_s"]), self._with(kind=kind)
            )
            replaced = len(output.get("instances") or [])
            if replaced:
                self._counter(INSTANCES_REPLACED, "Instances replaced by rollouts.").add(
                    replaced, self._with(kind=kind)
                )
        if kind == "backup":
            if isinstance(output.get("duration_s"), int | float):
                self._histogram(BACKUP_DURATION, "Backup duration.").record(
                    float(output["duration_s"]), self._with()
                )
            if isinstance(output.get("size"), int):
                self._histogram(BACKUP_BYTES, "Backup size in bytes.", "By").record(
                    float(output["size"]), self._with()
                )

    def compensation(self, kind: str, ok: bool) -> None:
        self._counter(COMPENSATIONS, "Compensations run, by step kind and outcome.").add(
            1, self._with(kind=kind, outcome="compensated" if ok else "failed")
        )

    # ------------------------------------------------------------ approvals

    def approval_waiting(self, run_id: str, step_id: str, waiting: bool) -> None:
        gauge = self._instrument(APPROVALS_WAITING, "gauge", "Approval steps waiting.")
        _WAITING.change(gauge, dict(self._labels), (run_id, step_id), waiting)

    def approval_decided(self, decision: str, seconds: float) -> None:
        self._histogram(APPROVAL_DECISION, "Time from waiting to a decision.").record(
            max(seconds, 0.0), self._with(decision=decision)
        )

    # ------------------------------------------------------------ notifications

    def notification(self, event: str, ok: bool) -> None:
        self._counter(NOTIFICATIONS, "Run-event notifications, by event and result.").add(
            1, self._with(event=event, result="sent" if ok else "failed")
        )
