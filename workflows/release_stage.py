"""The release's side of the stage lock (`stage_lock.py` holds the lock workflow): take the
stage per the flow's concurrency policy, wait in the queue, release it at the end.

The lock's signals (`GRANTED_SIGNAL`, `POSITION_SIGNAL`) are handled on `ReleaseWorkflow`
itself (release.py), which sets `_granted` and the queue position.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from shipflow.workflows.release_base import ReleaseBase
from shipflow.workflows.release_errors import Refused

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.io import locks as lock_io
    from shipflow.workflows.stage_lock import RELEASE_SIGNAL, lock_id
    from shipflow.workflows.status import RunState


class StageLocking(ReleaseBase):
    """Taking and releasing the run's stage."""

    async def _take_stage(self) -> None:
        """Wait for this run's turn in its stage.

        Raises:
            Refused: the flow's policy is `forbid` and another run holds the stage.
        """
        policy = self._plan.concurrency
        if policy == "allow":
            return
        self._lock_asked = True
        answer = await workflow.execute_activity(
            lock_io.ACQUIRE,
            lock_io.AcquireInput(stage=self._plan.stage, run_id=self._status.run_id, policy=policy),
            result_type=lock_io.AcquireOutput,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=10, maximum_interval=timedelta(seconds=5)),
            summary=f"take stage {self._plan.stage}",
        )
        if answer.refused:
            self._lock_asked = False
            self._status.blocked_by = answer.holder
            self._status.error = (
                f"stage {self._plan.stage} is busy with run {answer.holder} (concurrency: forbid)"
            )
            self._set_run(RunState.FAILED)
            raise Refused(self._status.error)
        if not answer.granted:
            self._status.queue_position = answer.position
            self._set_run(RunState.QUEUED)
            await workflow.wait_condition(lambda: self._granted)
            self._status.queue_position = None

    async def _release_stage(self) -> None:
        try:
            await workflow.get_external_workflow_handle(
                lock_id(self._plan.stage, workflow.info().task_queue)
            ).signal(RELEASE_SIGNAL, self._status.run_id)
        except Exception as e:  # the lock's reaper releases a run that could not say so
            workflow.logger.warning("could not release stage %s: %s", self._plan.stage, e)
