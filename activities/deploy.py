"""Deploy activities: `deploy` and `promote` steps, and their undo (back to the previous image).

`rollout` records the image the service ran before, rolls the new one out through the
flow's Target, then writes the stage's release record, which is what promotion and
rollback read later. `resolve_promotion` answers "which image did that stage last get".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from shipflow.activities.attempts import another_attempt_follows
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.steplogs import StepLogWriter
from shipflow.activities.core.tables import ReleaseRecord
from shipflow.activities.group_env import GroupEnv
from shipflow.activities.progress import ActivityProgress
from shipflow.activities.records import last_release, write_release
from shipflow.activities.targets.base import Progress, RolloutRequest, Target, TargetError
from shipflow.workflows.io.deploy import (
    ABORT_KEPT,
    PROMOTE_PAUSE,
    RESOLVE_PROMOTION,
    ROLLOUT,
    AbortKeptInput,
    AbortKeptOutput,
    PromotePauseInput,
    PromotePauseOutput,
    PromotionInput,
    PromotionOutput,
    RolloutInput,
    RolloutOutput,
)
from shipflow.workflows.spec import RollingStrategy, Strategy


class _DeployProgress:
    """The activity's Progress, plus what the deploy itself must carry across attempts.

    Every heartbeat also holds `previous_image`, so an attempt after a lost worker
    records the image from before the rollout, not the one the rollout already put in
    place. A worker shutting down is not a cancellation of the run: aborting would undo
    a healthy rollout, and failing would spend one of the step's attempts. The attempt
    follows the rollout (bounded by its progress deadline) to its end instead; a worker
    killed before that is a lost worker, and the next attempt resumes the same rollout.
    """

    def __init__(
        self,
        inner: ActivityProgress,
        extra: dict[str, Any],
        log: StepLogWriter | None = None,
        service: str = "",
    ):
        self._inner = inner
        self._extra = extra
        self._log = log
        self._service = service

    @property
    def resume(self) -> dict[str, Any] | None:
        return self._inner.resume

    def beat(self, details: dict[str, Any]) -> None:
        self._inner.beat({**details, **self._extra})
        if self._log is not None:
            self._log.changed(rollout_line(self._service, details))

    def cancelled(self) -> bool:
        return activity.is_cancelled() and not activity.is_worker_shutdown()


def rollout_line(service: str, details: dict[str, Any]) -> str:
    """One log line for a rollout's progress (local runtime or Kubernetes Deployment)."""
    total = details.get("total")
    if total is None:
        line = f"{service}: {details.get('phase', 'rolling out')}"
        if details.get("strategy") in ("canary", "blue_green"):  # kubernetes' extra Deployment
            weight = f", weight {details['weight']}%" if details.get("weight") is not None else ""
            line = f"{service}: {details['strategy']} {details.get('phase')}{weight}"
            if details.get("message"):
                line += f" ({details['message']})"
        return line
    line = (
        f"{service}: {details.get('ready', 0)}/{total} ready, "
        f"{details.get('updated', 0)}/{total} updated"
    )
    if "available" in details:
        line += f", {details['available']} available"
    if details.get("message"):
        line += f" ({details['message']})"
    return line


def back_strategy(input: RolloutInput) -> Strategy | None:
    """The strategy to roll out with; for an undo or a rollback, never a canary or blue-green.

    Going back to the version that served before is not a new release to try out: a canary's
    pauses (`pause: {}` waits for an operator) and analysis would hold a compensation for
    nothing. Such an undo is a plain rolling update (on Kubernetes the Deployment's own
    strategy; on the local target the default, also over a service-level canary). Rolling and
    recreate stay, as a single instance with a volume needs recreate both ways.
    """
    strategy = input.strategy
    if input.purpose not in ("undo", "rollback"):
        return strategy
    local = input.target.get("kind", "local") == "local"
    if strategy is None and local:
        declared = (input.target.get("services") or {}).get(input.service) or {}
        strategy = Strategy.model_validate(declared["strategy"]) if declared.get("strategy") else None
    if strategy is None or strategy.kind not in ("canary", "blue_green"):
        return input.strategy
    return Strategy(rolling=RollingStrategy()) if local else None


class DeployActivities:
    """Given a way to build targets and the database engine, rolls services out."""

    def __init__(
        self,
        targets: Callable[[dict[str, Any]], Target],
        engine: Engine,
        settings: Settings | None = None,
    ):
        self._targets = targets
        self._engine = engine
        self._groups = GroupEnv(engine, settings)

    @activity.defn(name=ROLLOUT, no_thread_cancel_exception=True)
    def rollout(self, input: RolloutInput) -> RolloutOutput:
        """Roll `input.service` out to `input.image` and record it for the stage.

        Cancellation is polled (no exception thrown into the thread), so the target can
        abort the rollout cleanly and leave the old version serving.
        """
        ctx = input.context
        target = self._targets(input.target)
        inner = ActivityProgress(input.resume)
        resume = inner.resume or {}
        groups = self._groups.for_rollout(input)
        log = StepLogWriter(self._engine, ctx.run_id, ctx.step_id, groups.secrets)
        try:
            if "previous_image" in resume:
                previous = resume["previous_image"]
                previous_groups = resume.get("previous_groups")
            else:
                previous = target.current_image(input.service, container=input.container)
                before = last_release(self._engine, ctx.stage, input.service)
                previous_groups = before.groups if before is not None else None
            if groups.versions:
                log.write(
                    f"{input.service}: groups "
                    + ", ".join(f"{n} v{v}" for n, v in groups.versions.items())
                )
            log.write(
                f"{input.service}: rolling out {input.image} (running before: {previous or 'none'}"
                f"; attempt {activity.info().attempt}{', resumed' if resume else ''})"
            )
            progress: Progress = _DeployProgress(
                inner,
                {"previous_image": previous, "previous_groups": previous_groups},
                log,
                input.service,
            )
            result = target.rollout(
                RolloutRequest(
                    run_id=ctx.run_id,
                    step_id=ctx.step_id,
                    service=input.service,
                    image=input.image,
                    container=input.container,
                    probes=input.probes,
                    progress_deadline_s=input.progress_deadline_s,
                    strategy=back_strategy(input),
                    env=groups.env,
                    groups=groups.versions,
                    group_sources=groups.sources,
                    redact=groups.secrets,
                    another_attempt=another_attempt_follows(input.max_attempts),
                ),
                progress,
            )
        except TargetError as e:
            log.write(f"{input.service}: {e}")
            if activity.is_cancelled() and not activity.is_worker_shutdown():
                raise CancelledError(str(e)) from None
            raise ApplicationError(
                str(e), type=type(e).__name__, non_retryable=not e.retryable
            ) from None
        if result.strategy in ("canary", "blue_green") and result.previous_image:
            # The image from before the strategy, kept in its durable state: an attempt after
            # a retryable error may find the stable Deployment promoted already.
            previous = result.previous_image
        self._record(input, previous, groups.versions)
        log.write(
            f"{input.service}: {result.image} rolled out in {result.duration_s:.1f}s, "
            f"{len(result.instances)} instance(s): "
            + ", ".join(f"{i.get('id')}{' ready' if i.get('ready') else ''}" for i in result.instances)
        )
        return RolloutOutput(
            service=input.service,
            image=result.image,
            previous_image=previous,
            instances=result.instances,
            duration_s=result.duration_s,
            strategy=result.strategy,
            rounds=result.rounds,
            downtime_s=result.downtime_s,
            groups=groups.versions,
            previous_groups=previous_groups,
        )

    def _record(
        self, input: RolloutInput, previous: str | None, groups: dict[str, int]
    ) -> None:
        """Write the release record once, even when the activity runs again after a crash."""
        ctx = input.context
        with Session(self._engine) as session:
            existing = session.exec(
                select(ReleaseRecord).where(
                    ReleaseRecord.run_id == ctx.run_id,
                    ReleaseRecord.step_id == ctx.step_id,
                    ReleaseRecord.stage == ctx.stage,
                    ReleaseRecord.service == input.service,
                    ReleaseRecord.image == input.image,
                    ReleaseRecord.kind == input.purpose,
                )
            ).first()
        if existing is not None:
            return
        write_release(
            self._engine,
            ReleaseRecord(
                stage=ctx.stage,
                service=input.service,
                image=input.image,
                previous_image=previous,
                run_id=ctx.run_id,
                flow=ctx.flow,
                step_id=ctx.step_id,
                kind=input.purpose,
                groups=groups,
            ),
        )

    @activity.defn(name=PROMOTE_PAUSE)
    def promote_pause(self, input: PromotePauseInput) -> PromotePauseOutput:
        """Set the promotion annotation of a Kubernetes canary/green waiting in a pause."""
        from shipflow.activities.targets.k8s_progressive import promote_paused
        from shipflow.activities.targets.kubernetes import KubernetesTarget

        target = self._targets(input.target)
        if not isinstance(target, KubernetesTarget):
            raise ApplicationError("only a kubernetes step is promoted this way", type="Invalid",
                                   non_retryable=True)
        ctx = input.context
        try:
            deployment, pause = promote_paused(target, input.service, ctx.run_id, ctx.step_id)
        except TargetError as e:
            raise ApplicationError(str(e), type=type(e).__name__, non_retryable=not e.retryable) from None
        StepLogWriter(self._engine, ctx.run_id, ctx.step_id).write(
            f"{input.service}: pause {pause} promoted (deployments/{deployment})"
        )
        return PromotePauseOutput(step=ctx.step_id, service=input.service, deployment=deployment, pause=pause)

    @activity.defn(name=ABORT_KEPT)
    def abort_kept(self, input: AbortKeptInput) -> AbortKeptOutput:
        """Abort the canary or green an attempt kept for the next one, which will not come.

        Not cancellable on purpose: it runs after the run's cancel, as cleanup.
        """
        from shipflow.activities.targets.k8s_progressive import abort_kept
        from shipflow.activities.targets.kubernetes import KubernetesTarget

        target = self._targets(input.target)
        ctx = input.context
        if not isinstance(target, KubernetesTarget) or input.strategy is None:
            return AbortKeptOutput(service=input.service)
        request = RolloutRequest(
            run_id=ctx.run_id, step_id=ctx.step_id, service=input.service, image=input.image,
            container=input.container, strategy=input.strategy,
        )
        try:
            aborted = abort_kept(target, request, ActivityProgress({}))
        except TargetError as e:
            raise ApplicationError(str(e), type=type(e).__name__, non_retryable=not e.retryable) from None
        if aborted is not None:
            StepLogWriter(self._engine, ctx.run_id, ctx.step_id).write(
                f"{input.service}: cancelled before its next attempt: {aborted} aborted, all traffic "
                "is on the stable version"
            )
        return AbortKeptOutput(service=input.service, aborted=aborted)

    @activity.defn(name=RESOLVE_PROMOTION)
    def resolve_promotion(self, input: PromotionInput) -> PromotionOutput:
        """The image the `from` stage last received for the service (deploy, promote or undo)."""
        record = last_release(self._engine, input.from_stage, input.service)
        if record is None:
            raise ApplicationError(
                f"stage {input.from_stage!r} has no release of service {input.service!r} yet: "
                "nothing to promote",
                type="NothingToPromote",
                non_retryable=True,
            )
        return PromotionOutput(image=record.image, from_run=record.run_id)
