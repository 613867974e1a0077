"""A step's output quoted in a later step's URL, through a real run (review finding A).

A command prints whatever it likes; `tests/workflows/test_args_are_data.py` checks the
placement rules on the plan, this checks that the request a run really sends carries the
output as one percent-encoded component and goes to the host the author wrote.
"""

from __future__ import annotations

from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from tests.helpers import HttpSink, new_worker, run_flow

PRINTED = "../admin?x=1&y=${env.HOME}#f"
ENCODED = "..%2Fadmin%3Fx%3D1%26y%3D%24%7Benv.HOME%7D%23f"


async def test_a_step_output_in_a_webhook_path_and_query_is_one_encoded_component(
    temporal_client: Client, settings: Settings
) -> None:
    with HttpSink() as sink:
        text = f"""
apiVersion: shipflow/v1
name: output-in-url
stage: test
steps:
  - migrate: {{id: m, command: [printf, "%s", "{PRINTED.replace("$", "$$")}"]}}
  - notify: {{id: n, webhook: "{sink.url}/hook/${{steps.m.output}}?v=${{steps.m.output}}",
             message: "printed ${{steps.m.output}}"}}
"""
        async with new_worker(temporal_client, settings):
            status = await run_flow(temporal_client, settings, text)
    assert status.state == "succeeded", status
    assert status.step("m").output["output"] == PRINTED
    (request,) = sink.received
    assert request["path"] == f"/hook/{ENCODED}?v={ENCODED}"
    # Outside the URL the output is the text as printed (and its `${env.X}` stays text).
    assert PRINTED in str(request["body"])
