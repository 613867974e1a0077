"""Planning recovery runs from release records and past runs (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shipflow.activities.core.tables import ReleaseRecord
from shipflow.api.recovery import RecoveryError, retry_input, rollback_plan, services_to_roll_back
from shipflow.workflows.plan import compile
from shipflow.workflows.release import ReleaseInput
from shipflow.workflows.spec import load_flow_text
from shipflow.workflows.status import RunState, RunStatus, StepState, StepStatus, initial_steps

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TARGET = {"kind": "local", "services": {}}


def record(n: int, run: str, service: str, image: str, flow: str = "web") -> ReleaseRecord:
    return ReleaseRecord(
        id=n,
        stage="prod",
        service=service,
        image=image,
        run_id=run,
        flow=flow,
        step_id=service,
        created_at=T0 + timedelta(minutes=n),
    )


HISTORY = [
    record(1, "r1", "api", "api:1"),
    record(2, "r1", "worker", "worker:1"),
    record(3, "r2", "api", "api:2"),
    record(4, "r3", "api", "api:3"),
    record(5, "r3", "worker", "worker:3"),
    record(6, "r3", "cron", "cron:3"),
]


def test_rollback_two_releases_back_returns_each_touched_service_to_its_image_then() -> None:
    plan = services_to_roll_back(list(reversed(HISTORY)), "r1", {"web": TARGET})
    assert [(s.service, s.image, s.current_image) for s in plan] == [
        ("api", "api:1", "api:3"),
        ("worker", "worker:1", "worker:3"),
    ]  # cron did not exist after r1: nothing earlier to return to


def test_rollback_to_the_latest_run_has_nothing_to_do() -> None:
    assert services_to_roll_back(HISTORY, "r3", {"web": TARGET}) == []


def test_rollback_to_a_run_that_released_nothing() -> None:
    with pytest.raises(RecoveryError, match="released no service"):
        services_to_roll_back(HISTORY, "r9", {"web": TARGET})


def _prior() -> tuple[ReleaseInput, RunStatus]:
    flow = load_flow_text(
        "apiVersion: shipflow/v1\nname: web\nstage: prod\nsteps:\n"
        "  - migrate: {id: a, command: ['true']}\n  - migrate: {id: b, command: ['true'], undo: {command: ['true']}}\n"
        "  - migrate: {id: c, command: ['false']}\n  - migrate: {id: d, command: ['true']}\n"
    )
    plan = compile(flow)
    steps = initial_steps(plan)
    states = [StepState.SUCCEEDED, StepState.COMPENSATED, StepState.FAILED, StepState.SKIPPED]
    for step, state in zip(steps, states, strict=True):
        step.state = state
        step.output = {"exit_code": 0} if state == StepState.SUCCEEDED else None
    status = RunStatus(
        run_id="r",
        flow="web",
        stage="prod",
        state=RunState.ROLLED_BACK,
        steps=steps,
        failed_step="c",
    )
    return ReleaseInput(run_id="r", plan=plan), status


def test_retry_skips_what_succeeded_and_was_not_undone() -> None:
    prior, status = _prior()
    again = retry_input(prior, status, "r-retry", by="ops")
    assert again.skip == {"a": {"exit_code": 0}}
    assert again.plan == prior.plan and again.trigger == "retry" and again.triggered_by == "ops"


def test_retry_refuses_running_or_succeeded_runs() -> None:
    prior, status = _prior()
    for state, message in (
        (RunState.RUNNING, "still running"),
        (RunState.SUCCEEDED, "nothing to retry"),
    ):
        with pytest.raises(RecoveryError, match=message):
            retry_input(prior, status.model_copy(update={"state": state}), "x", by=None)


def test_rollback_plan_rolls_images_back_in_parallel() -> None:
    prior, _ = _prior()
    services = services_to_roll_back(HISTORY, "r1", {"web": TARGET})
    plan = rollback_plan(prior, services, [])
    assert [(a.id, a.kind, a.params["image"]) for a in plan.actions()] == [
        ("rollback-api", "deploy", "api:1"),
        ("rollback-worker", "deploy", "worker:1"),
    ]
    assert plan.root.children[0].node == "parallel"
    with pytest.raises(RecoveryError, match="nothing to do"):
        rollback_plan(prior, [], [])


_ = StepStatus
