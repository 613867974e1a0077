from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from tests.helpers import new_worker, run_flow

FLOW = """
apiVersion: shipflow/v1
name: smoke
stage: dev
args: {word: hello}
steps:
  - migrate: {id: say, command: [echo, "${args.word}"]}
  - parallel:
      - wait: {id: w1, duration: 100ms}
      - migrate: {id: echo2, command: [echo, "${steps.say.exit_code}"]}
  - migrate: {id: bad, command: [sh, -c, "echo boom; exit 3"], retries: 1, undo: {command: [echo, undone]}}
"""


async def test_smoke(temporal_client: Client, settings: Settings) -> None:
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, FLOW)
    print(status.model_dump_json(indent=1))
    assert status.state == "failed"
