"""What a flow's command sees and what its output shows (review of issue #9).

Regressions: a command inherited the worker's whole environment, shipflow's own secrets
included (the payload keys, the runtime key, API tokens), and its output was masked only for
the `${env.X}` values the step referenced, so a migration tool that printed a DSN put the
password in a step output every viewer reads.
"""

from __future__ import annotations

import os

from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from tests.helpers import new_worker, run_flow

FLOW = """apiVersion: shipflow/v1
name: cmd-secrets
stage: test
steps:
  - migrate:
      id: m
      command: [sh, -c, 'echo "keys=$${SHIPFLOW_PAYLOAD_KEYS:-none} path=$${PATH:+set}"; echo "dsn=postgresql://app:pw-Secret9@db/app"']
"""


async def test_commands_get_no_shipflow_secrets_and_their_output_is_redacted(
    temporal_client: Client, settings: Settings
) -> None:
    assert os.environ.get("SHIPFLOW_PAYLOAD_KEYS")  # the worker has a key (tests/conftest.py)
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, FLOW)
    (step,) = status.steps
    assert status.state == "succeeded", step.error
    output = step.output["output"]
    assert "keys=none path=set" in output  # no shipflow secret, the rest of the environment
    assert "dsn=postgresql://app:***@db/app" in output
    assert "pw-Secret9" not in status.model_dump_json()
