"""How the worker runs shipflow's workflows: outside Temporal's Python sandbox by default.

Temporal's sandbox guards workflow code that its authors write: it re-imports a workflow's
module for every new workflow instance, so that module-level state cannot leak between
runs, and it traps non-deterministic calls (clock, I/O, randomness) at run time. Its cost
is paid on every payload: temporalio 1.35 enters the sandbox, executing a code string it
compiles each time, to find each payload's serialization context, three or four times per
payload of a workflow task (once per pass of its payload visitors). Profiled
(bench/orchestration.py `--profile`), that was 21-27% of the worker's busy time, and a
run's steps cost the worker 1.1-1.5x the CPU they cost outside it (docs/benchmarks.md,
config `sandbox` against `tuned`).

shipflow's users write no workflow code: a flow is data, run by one interpreter that is
ours, holds no module-level state and is deterministic by test. So the determinism guard
sits where it pays for us instead: the replay tests (tests/workflows/test_replay.py) and
`Replayer` run the interpreter in the full sandbox, re-imported, with every restriction,
over recorded histories of every step kind; and the test suite's workers run in the
sandbox too (`Settings.workflow_sandbox`, set by tests/conftest.py), so a restricted call
on any path a test reaches fails there. `SHIPFLOW_WORKFLOW_SANDBOX=true` puts a production
worker back in the sandbox, with the interpreter's module passed through (loaded once per
worker, not once per run: re-importing it cost 1-2 ms of CPU per run).
"""

from __future__ import annotations

from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

#: Workflow modules loaded once per worker instead of once per workflow instance.
PASSED_THROUGH = ("shipflow.workflows.release",)


def workflow_runner(sandboxed: bool, *also: str) -> WorkflowRunner:
    """The runner for `sandboxed` (`Settings.workflow_sandbox`).

    In the sandbox: the default restrictions, with `PASSED_THROUGH` (and `also`) passed
    through. Outside it: Temporal's plain runner.
    """
    if not sandboxed:
        return UnsandboxedWorkflowRunner()
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH, *also)
    return SandboxedWorkflowRunner(restrictions=restrictions)
