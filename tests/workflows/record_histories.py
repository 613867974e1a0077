"""Record the histories that `test_replay.py` replays:
`python -m tests.workflows.record_histories [--suffix S] [NAME...]` writes `histories/NAME{S}.json`.

Re-record only on purpose: a change to the interpreter that breaks replay of these
histories would break every run in flight when it is deployed, and needs
`workflow.patched()` instead. Histories recorded before a patch stay, next to new ones
recorded under a suffix: `NAME.json` are from before the patch bundle
(`release_patches.BUNDLE`), `NAME-bundle.json` with it.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from shipflow.activities.core.client import make_data_converter
from shipflow.activities.core.codec import parse_keys
from shipflow.activities.core.settings import Settings
from shipflow.workflows.release import ApproveInput, ReleaseWorkflow
from tests.conftest import TEST_PAYLOAD_KEYS
from tests.helpers import finish, new_worker, start_flow, temporal_binary, wait_until

HERE = Path(__file__).parent / "histories"

FLOWS = {
    "saga": """
apiVersion: shipflow/v1
name: saga
stage: test
args: {{v: "1"}}
steps:
  - migrate: {{id: first, command: [sh, -c, "echo ${{args.v}}"], undo: {{command: ["true"]}}}}
  - parallel:
      - migrate: {{id: quick, command: ["true"], undo: {{command: ["true"]}}}}
      - migrate: {{id: slow, command: [sleep, "30"], undo: {{command: ["true"]}}}}
      - sequence:
          - wait: {{id: settle, duration: 1s}}
          - migrate: {{id: boom, command: [sh, -c, "exit 1"], retries: 1}}
  - migrate: {{id: never, command: ["true"]}}
""",
    "approved": """
apiVersion: shipflow/v1
name: approved
stage: test
steps:
  - check: {{id: c, tcp: {{port: {port}}}, period: 100ms}}
  - approve: {{id: go}}
  - parallel:
      - wait: {{id: a, duration: 200ms}}
      - notify: {{id: n, webhook: "http://127.0.0.1:{port}/x", message: "${{steps.c.successes}}", retries: 0}}
""",
    # Run-event notifications (issue 15): `waiting` while the approval waits, then `succeeded`.
    "notified": """
apiVersion: shipflow/v1
name: notified
stage: test
notifications:
  - {{on: [waiting, succeeded], webhook: "{sink}/n", format: slack}}
steps:
  - approve: {{id: go}}
  - migrate: {{id: m, command: ["true"]}}
""",
    # Per-attempt records and named activities (patch `step-attempt-log`): a short check
    # (a local activity) and a command that fails both of its attempts, then compensation.
    "attempts": """
apiVersion: shipflow/v1
name: attempts
stage: test
steps:
  - check: {{id: c, tcp: {{port: {port}}}, period: 100ms, timeout: 5s}}
  - migrate: {{id: undone, command: ["true"], undo: {{command: ["true"]}}}}
  - migrate: {{id: flaky, command: [sh, -c, "exit 3"], retries: 1}}
""",
    # Memo upserts riding on step tasks (patch `memo-piggyback`): steps ending every ~0.4 s.
    "riding": """
apiVersion: shipflow/v1
name: riding
stage: test
steps:
  - migrate: {{id: r1, command: [sleep, "0.4"]}}
  - migrate: {{id: r2, command: [sleep, "0.4"]}}
  - migrate: {{id: r3, command: [sleep, "0.4"]}}
  - migrate: {{id: r4, command: [sleep, "0.4"]}}
  - migrate: {{id: r5, command: [sleep, "0.4"]}}
  - migrate: {{id: r6, command: [sleep, "0.4"]}}
""",
    # The debounced memo (patch `memo-debounce`): quick steps whose changes wait for the
    # flush timer, a run-state change (waiting) upserted at once, an approval, the end.
    "debounced": """
apiVersion: shipflow/v1
name: debounced
stage: test
steps:
  - migrate: {{id: a, command: ["true"]}}
  - migrate: {{id: b, command: ["true"]}}
  - migrate: {{id: slow, command: [sleep, "2"]}}
  - approve: {{id: go}}
  - parallel:
      - migrate: {{id: c, command: ["true"]}}
      - wait: {{id: d, duration: 100ms}}
""",
}


async def record(names: list[str] | None = None, suffix: str = "") -> None:
    """Record `names` (default: every flow) into `histories/NAME{suffix}.json`."""
    import socket

    from tests.helpers import HttpSink

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        # Encrypted with the tests' key, as every run is: test_replay decrypts with it.
        data_converter=make_data_converter(parse_keys(TEST_PAYLOAD_KEYS, source="tests")),
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                temporal_address=env.client.service_client.config.target_host,
                data_dir=Path(tmp),
                task_queue=f"rec-{uuid.uuid4().hex[:6]}",
                search_attributes=False,
            )
            with HttpSink() as sink:
                async with new_worker(env.client, settings):
                    for name, text in FLOWS.items():
                        if names and name not in names:
                            continue
                        handle = await start_flow(
                            env.client, settings, text.format(port=port, sink=sink.url), run_id=name
                        )
                        if name in ("approved", "notified", "debounced"):
                            await wait_until(lambda h=handle: _waiting(h))
                            await handle.execute_update(
                                ReleaseWorkflow.approve, ApproveInput(step="go", by="rec")
                            )
                        await finish(handle)
                        history = await handle.fetch_history()
                        (HERE / f"{name}{suffix}.json").write_text(history.to_json())
                        print("recorded", name)
    finally:
        listener.close()
        await env.shutdown()


async def _waiting(handle) -> bool:  # type: ignore[no-untyped-def]
    status = await handle.query(ReleaseWorkflow.status)
    return status.step("go").state == "waiting"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suffix", default="", help="appended to each history's file name")
    parser.add_argument("names", nargs="*", help="flows to record (default: all)")
    args = parser.parse_args()
    asyncio.run(record(args.names or None, args.suffix))
