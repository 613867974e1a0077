"""Recording a `ReleaseWorkflow` run in the SQL runs index (best effort: the run's truth
is Temporal), at its start, at each live state change and at its end."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

from shipflow.workflows.release_base import ReleaseBase
from shipflow.workflows.release_errors import describe_error

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.io import records as record_io
    from shipflow.workflows.status import RunState


class RunsIndexRecording(ReleaseBase):
    """`_record_run` (one local activity) and the task that calls it on state changes."""

    async def _record_run(self) -> None:
        """Mirror the run into the SQL runs index. Best effort: the run's truth is Temporal."""
        status = self._status
        try:
            # A local activity: recorded in the same workflow task, no extra round trip.
            await workflow.execute_local_activity(
                record_io.RECORD_RUN,
                record_io.RunRecordInput(
                    run_id=status.run_id,
                    flow=status.flow,
                    stage=status.stage,
                    state=status.state.value,
                    ended_at=status.ended_at,
                    error=status.error,
                    flow_version=status.flow_version,
                    args=status.args,
                    reason=status.reason,
                    triggered_by=status.triggered_by,
                    trigger=self._input.trigger,
                ),
                result_type=record_io.RecordOutput,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=5)),
                summary="record run",
            )
        except (ActivityError, ApplicationError, TimeoutError) as e:
            # A local activity's failure arrives unwrapped: catch it too, or a database
            # outage at the end would fail a run that succeeded.
            workflow.logger.warning("could not record run %s: %s", status.run_id, describe_error(e))

    async def _index_states(self) -> None:
        """Record each change of the run's live state (queued, running, waiting) in the runs
        index, so that listing runs reads the database alone; `_finish` records the final one.

        One local activity per change, one at a time: a few markers per run, whatever the
        number of steps. Changes that happen while a record is in flight are coalesced.
        """
        recorded = RunState.PENDING  # what the index has before the run records anything
        while True:
            await workflow.wait_condition(
                lambda seen=recorded: self._done or self._status.state != seen  # type: ignore[misc]
            )
            if self._done or self._status.state.is_final:
                return
            recorded = self._status.state
            await self._record_run()
