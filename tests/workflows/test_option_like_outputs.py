"""A step output never begins a command argument with '-' (it would be read as an option).

The compiler refuses that for run args and `${git.X}`; a step output is only known at run
time, so the interpreter checks right before the step (or its undo) runs: the command does
not run, the step fails with an error that names the argument, and the run compensates.
Text the author writes before the output (`--name=${steps.x.y}`) is fine. A command prints
whatever it likes, e.g. a branch name it looked up: `--upload-pack=...` here.
"""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Replayer

from shipflow.activities.core.client import make_data_converter
from shipflow.activities.core.codec import parse_keys
from shipflow.activities.core.settings import Settings
from shipflow.workflows.release import ReleaseWorkflow
from shipflow.workflows.release_patches import BUNDLE, REFUSE_OPTION_OUTPUTS
from tests.conftest import TEST_PAYLOAD_KEYS
from tests.helpers import finish, new_worker, patch_markers, start_flow

HOSTILE = "--upload-pack=touch /tmp/pwned"


def _flow(name: str, body: str) -> str:
    return f"apiVersion: shipflow/v1\nname: {name}\nstage: {name}\nsteps:\n{body}"


async def test_an_output_that_would_be_an_option_fails_the_step_before_its_command_runs(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    refused = _flow(
        "opt-refused",
        f"""  - migrate: {{id: pick, command: [printf, "%s", "{HOSTILE}"],
              undo: {{command: [sh, -c, 'echo undo pick >> {log}']}}}}
  - migrate: {{id: use, command: [sh, -c, 'printf "%s\\n" "$1" >> {log}', sh, "${{steps.pick.output}}"]}}
""",
    )
    prefixed = _flow(
        "opt-prefixed",
        f"""  - migrate: {{id: pick, command: [printf, "%s", "{HOSTILE}"]}}
  - migrate: {{id: use, command: [sh, -c, 'printf "%s\\n" "$1" >> {log}', sh, "ref=${{steps.pick.output}}"]}}
""",
    )
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, refused)
        status = await finish(handle)
        assert status.state == "rolled_back", status
        use = status.step("use")
        assert use.state == "failed" and use.attempts == 0
        assert use.error == (
            "command[4]: ${steps.pick.output} starts with '-' where it begins the command "
            "argument, where it would be read as an option, so the command did not run: write "
            "literal text before it in the flow (e.g. --name=${steps.pick.output})"
        )
        assert status.step("pick").state == "compensated"
        assert log.read_text() == "undo pick\n"  # `use` never ran
        assert await patch_markers(handle) == [BUNDLE, REFUSE_OPTION_OUTPUTS]
        history = await handle.fetch_history()

        log.unlink()
        ok = await start_flow(temporal_client, settings, prefixed)
        assert (await finish(ok)).state == "succeeded"
        assert log.read_text() == f"ref={HOSTILE}\n"
        assert await patch_markers(ok) == [BUNDLE]  # a run that never meets it: no marker

    converter = make_data_converter(parse_keys(TEST_PAYLOAD_KEYS, source="tests"))
    replayer = Replayer(workflows=[ReleaseWorkflow], data_converter=converter)
    assert (await replayer.replay_workflow(history)).replay_failure is None


async def test_an_undo_command_that_an_output_would_give_an_option_does_not_run(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    text = _flow(
        "opt-undo",
        f"""  - migrate: {{id: pick, command: [printf, "%s", "--force"]}}
  - migrate: {{id: made, command: ["true"],
              undo: {{command: [sh, -c, 'echo "undo $1" >> {log}', sh, "${{steps.pick.output}}"]}}}}
  - migrate: {{id: boom, command: [sh, -c, 'exit 3']}}
""",
    )
    async with new_worker(temporal_client, settings):
        status = await finish(await start_flow(temporal_client, settings, text))
    assert status.state == "rollback_failed", status
    made = status.step("made")
    assert made.state == "compensation_failed" and made.compensation is not None
    assert (made.compensation.error or "").startswith(
        "undo.command[4]: ${steps.pick.output} starts with '-' where it begins the command "
        "argument"
    ), made.compensation
    assert not log.exists()  # the undo command never ran
