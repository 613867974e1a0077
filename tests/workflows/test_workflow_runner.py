"""The worker runs releases outside Temporal's workflow sandbox by default, and inside it with
`SHIPFLOW_WORKFLOW_SANDBOX=true` (as the rest of the suite does): a user gets the same run
on both, steps, outputs, failure and compensation included, and a history that replays in
the full sandbox."""

from __future__ import annotations

import pytest
from temporalio.client import Client
from temporalio.worker import Replayer

from shipflow.activities.core.settings import Settings
from shipflow.workflows.release import ReleaseWorkflow
from shipflow.workflows.status import RunState, StepState
from tests.helpers import finish, new_worker, start_flow

FLOW = """
apiVersion: shipflow/v1
name: runners
stage: test
args: {v: "7"}
steps:
  - migrate: {id: first, command: [sh, -c, "echo v=${args.v}"], undo: {command: ["true"]}}
  - parallel:
      - wait: {id: settle, duration: 1s}
      - migrate: {id: second, command: [sh, -c, "echo ${steps.first.output}"], undo: {command: ["true"]}}
  - migrate: {id: boom, command: [sh, -c, "exit 4"], retries: 1}
"""


@pytest.mark.parametrize("sandboxed", [False, True], ids=["default-outside", "sandboxed"])
async def test_a_release_runs_the_same_in_and_outside_the_sandbox(
    temporal_client: Client, settings: Settings, sandboxed: bool
) -> None:
    settings = settings.model_copy(update={"workflow_sandbox": sandboxed})
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, FLOW)
        status = await finish(handle)
    steps = {s.id: s for s in status.steps}
    assert status.state is RunState.ROLLED_BACK
    assert steps["boom"].state is StepState.FAILED and steps["boom"].attempts == 2
    assert steps["boom"].error == "sh exited with code 4"
    assert steps["first"].output is not None and "v=7" in str(steps["first"].output)
    assert steps["second"].output is not None and "v=7" in str(steps["second"].output)
    # what the run did is undone; the wait had nothing to undo
    assert steps["first"].state is StepState.COMPENSATED
    assert steps["second"].state is StepState.COMPENSATED
    assert steps["settle"].state is StepState.SUCCEEDED
    # the history either runner wrote replays in the full sandbox (the interpreter
    # re-imported, every restriction on)
    history = await temporal_client.get_workflow_handle(handle.id).fetch_history()
    replayer = Replayer(workflows=[ReleaseWorkflow], data_converter=temporal_client.data_converter)
    assert (await replayer.replay_workflow(history)).replay_failure is None
