"""The state every part of `ReleaseWorkflow` shares, and the small helpers they all use.

`ReleaseWorkflow` (release.py) is one workflow class; its cohesive parts live in mixins
beside it (release_memo, release_index, release_stage, release_attempts, release_undo,
release_approvals), each a subclass of `ReleaseBase`. The attributes are declared here
(set by `ReleaseWorkflow.__init__`) so that each mixin is type-checked against them. The
mixins hold no Temporal handlers: signals, queries and updates stay on the class in
release.py, so that their names are read in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from temporalio import workflow

from shipflow.workflows.release_patches import Patches

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.io.common import StepContext
    from shipflow.workflows.plan import Plan
    from shipflow.workflows.release_errors import Compensate
    from shipflow.workflows.release_io import ReleaseInput
    from shipflow.workflows.run_observer import RunObserver
    from shipflow.workflows.status import Approval, RunState, RunStatus, StepState, StepStatus

T = TypeVar("T")


class ReleaseBase:
    """What `ReleaseWorkflow.__init__` sets, and the helpers every part uses."""

    _input: ReleaseInput
    _plan: Plan
    _status: RunStatus
    _steps: dict[str, StepStatus]
    _observer: RunObserver
    _outputs: dict[str, dict[str, Any]]
    _undo_stack: list[Compensate]
    _decisions: dict[str, Approval]
    #: The run's memo entry may have changed since the last upsert.
    _dirty: bool
    #: Steps changed since the last memo upsert: only their entries are dumped again.
    _dirty_steps: set[str]
    _done: bool
    #: What the memo holds (the starter's entries, then every upsert).
    _flushed: dict[str, Any]
    _lock_asked: bool
    _granted: bool
    _stopping: bool
    _patches: Patches

    def _touch(self, *steps: StepStatus) -> None:
        """Mark the status changed: the run's entry always, and the memo entries of `steps`."""
        self._dirty = True
        for step in steps:
            self._dirty_steps.add(step.id)

    def _set_run(self, state: RunState) -> None:
        old = self._status.state
        self._status.state = state
        self._touch()
        if old != state:
            self._observer.state_changed(old, state)

    def _refresh_run_state(self) -> None:
        if self._status.state in (RunState.RUNNING, RunState.WAITING):
            waiting = any(s.state == StepState.WAITING for s in self._status.steps)
            self._set_run(RunState.WAITING if waiting else RunState.RUNNING)

    def _context(self, step_id: str) -> StepContext:
        return StepContext(
            run_id=self._status.run_id,
            flow=self._plan.flow,
            stage=self._plan.stage,
            step_id=step_id,
        )

    async def _shielded(self, work: Awaitable[T]) -> T:
        """Run `work` (compensation, the run's last records) to the end even if a cancel
        request arrives meanwhile."""
        task = asyncio.ensure_future(work)
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                workflow.logger.info("cancel requested while compensating; compensation goes on")

    def _stop_if_stopping(self) -> None:
        """Start nothing new once the run is stopping.

        An activity that completes although its cancellation was requested returns its
        result, and the SDK then clears the cancellation of the awaiting task: without
        this check, the run (or a branch whose sibling failed) would go on to its next step.
        """
        if self._stopping or workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError()
