"""DeployActivities over the real local target and a real PostgreSQL database."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from sqlmodel import Session, select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from shipflow.activities.core.db import make_engine
from shipflow.activities.core.tables import ReleaseRecord
from shipflow.activities.deploy import DeployActivities
from shipflow.activities.targets import make_target
from shipflow.workflows.io.common import StepContext
from shipflow.workflows.io.deploy import PromotionInput, RolloutInput
from tests.helpers import free_port
from tests.local.support import RuntimeProcess, demo_service

pytestmark = pytest.mark.postgres


def rollout_input(target: dict[str, Any], image: str, *, stage: str = "staging", run: str = "r1",
                  **kw: Any) -> RolloutInput:
    return RolloutInput(
        context=StepContext(run_id=run, flow="web-flow", stage=stage, step_id="deploy-web"),
        target=target,
        service="web",
        image=image,
        **kw,
    )


def test_rollout_records_release_and_promotion_reads_it(runtime: RuntimeProcess, pg_url: str) -> None:
    engine = make_engine("postgresql+psycopg://" + pg_url.split("://", 1)[1])
    settings = runtime.settings()
    deploy = DeployActivities(partial(make_target, settings=settings), engine)
    target = {"kind": "local", "services": {"web": demo_service(free_port(), replicas=2)}}
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])

    # Nothing released yet: promotion fails for good, naming stage and service.
    with pytest.raises(ApplicationError) as nothing:
        env.run(deploy.resolve_promotion, PromotionInput(from_stage="staging", service="web"))
    assert nothing.value.non_retryable
    assert "'staging'" in str(nothing.value) and "'web'" in str(nothing.value)

    first = env.run(deploy.rollout, rollout_input(target, "v1"))
    assert (first.image, first.previous_image) == ("v1", None)
    second = env.run(deploy.rollout, rollout_input(target, "v2", run="r2"))
    assert (second.image, second.previous_image) == ("v2", "v1")
    assert len(second.instances) == 2
    assert beats and all(b["previous_image"] in (None, "v1") and "rollout_id" in b for b in beats)

    # Running the same step again (a retry after a crash) neither redeploys nor re-records.
    again = env.run(deploy.rollout, rollout_input(target, "v2", run="r2"))
    assert again.previous_image == "v2"  # what ran before this attempt
    with Session(engine) as session:
        rows = session.exec(select(ReleaseRecord).order_by(ReleaseRecord.id)).all()  # type: ignore[arg-type]
    assert [(r.image, r.previous_image, r.run_id, r.kind) for r in rows] == [
        ("v1", None, "r1", "deploy"),
        ("v2", "v1", "r2", "deploy"),
    ]

    # An attempt that resumes after a lost worker takes previous_image from the heartbeat.
    resumed = env.run(
        deploy.rollout,
        rollout_input(target, "v3", run="r3", purpose="deploy",
                      resume={"rollout_id": "ro-resumed", "previous_image": "v2"}),
    )
    assert (resumed.image, resumed.previous_image) == ("v3", "v2")

    found = env.run(deploy.resolve_promotion, PromotionInput(from_stage="staging", service="web"))
    assert (found.image, found.from_run) == ("v3", "r3")


def test_rollout_failure_is_non_retryable_application_error(
    runtime: RuntimeProcess, pg_url: str
) -> None:
    engine = make_engine("postgresql+psycopg://" + pg_url.split("://", 1)[1])
    deploy = DeployActivities(partial(make_target, settings=runtime.settings()), engine)
    target = {"kind": "local", "services": {"web": demo_service(free_port(), deadline="0.6s")}}
    env = ActivityEnvironment()
    with pytest.raises(ApplicationError) as failed:
        env.run(deploy.rollout, rollout_input(target, "v1-broken"))
    assert failed.value.non_retryable and failed.value.type == "RolloutFailed"
    with pytest.raises(ApplicationError) as undeclared:
        env.run(deploy.rollout, rollout_input({"kind": "local", "services": {}}, "v1"))
    assert undeclared.value.non_retryable and "not declared" in str(undeclared.value)
    with Session(engine) as session:
        assert session.exec(select(ReleaseRecord)).all() == []
