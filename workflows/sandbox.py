"""The workflow sandbox the worker runs shipflow's workflows in.

Temporal's Python sandbox re-imports a workflow's module for every new workflow instance,
so that module-level state can never leak between runs and restricted calls (clock, I/O,
randomness) are caught. For `ReleaseWorkflow` that re-import is most of what a run costs
the worker beyond Temporal itself: executing the module and `@workflow.defn`'s inspection
of the class take 1-2 ms of CPU per run (measured, bench/orchestration.py), as much as
several steps. The interpreter module holds no module-level state (its constants are
immutable), so the production worker passes it through: every run shares the module
loaded once. The determinism guard stays where it pays: the replay tests
(tests/workflows/test_replay.py) and `Replayer` run the interpreter in the full sandbox,
re-imported, with every restriction, over recorded histories of every step kind.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

#: Workflow modules loaded once per worker instead of once per workflow instance.
PASSED_THROUGH = ("shipflow.workflows.release",)


def workflow_runner(*also: str) -> SandboxedWorkflowRunner:
    """The default sandbox, with `PASSED_THROUGH` (and `also`) passed through."""
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH, *also)
    return SandboxedWorkflowRunner(restrictions=restrictions)
