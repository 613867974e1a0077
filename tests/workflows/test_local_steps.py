"""Short steps run as local activities; long ones stay regular, retries count the same.

What a user sees: in the run's history (the Web UI), a short `notify` or `check` is a
"local activity" marker, not an ActivityTaskScheduled/Completed pair; a step with a long
timeout is a regular activity as before; and attempts, errors and back-off show on the
step exactly as for a regular activity.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.worker import Replayer

from shipflow.activities.core.settings import Settings
from shipflow.workflows.release import ReleaseWorkflow
from shipflow.workflows.release_patches import BUNDLE, BUNDLED, LOCAL_SHORT_CALLS
from tests.helpers import finish, new_worker, patch_markers, start_flow


class Sink:
    """A loopback webhook that answers with the next status of `answers` (then 200)."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = list(answers)
        self.received: list[dict[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                sink.received.append(json.loads(self.rfile.read(length)))
                code = sink.answers.pop(0) if sink.answers else 200
                self.send_response(code)
                self.end_headers()

            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink([])
    yield s
    s.close()


async def _history(
    client: Client, handle: WorkflowHandle[Any, Any]
) -> tuple[Counter[str], int]:
    """(regular activities scheduled by type, local activity markers)."""
    scheduled: Counter[str] = Counter()
    local = 0
    async for event in client.get_workflow_handle(handle.id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.activity_task_scheduled_event_attributes.activity_type.name] += 1
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            attrs = event.marker_recorded_event_attributes
            if attrs.marker_name == "core_local_activity":
                local += 1
    return scheduled, local


async def test_short_steps_are_local_and_long_ones_regular(
    temporal_client: Client, settings: Settings, sink: Sink
) -> None:
    text = f"""
apiVersion: shipflow/v1
name: local-steps
stage: test
concurrency: allow
steps:
  - notify: {{id: short-note, webhook: "{sink.url}", message: "short"}}
  - check: {{id: short-check, http: {{url: "{sink.url}"}}, period: 1s, timeout: 10s}}
  - notify: {{id: long-note, webhook: "{sink.url}", message: "long", timeout: 2m}}
"""
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, text)
        status = await finish(handle)
    assert status.state == "succeeded", status
    assert [s.state for s in status.steps] == ["succeeded"] * 3
    assert status.step("short-note").output == {
        "status_code": 200,
        "idempotency_key": f"{handle.id}/short-note/{(await handle.describe()).run_id}",
    }
    scheduled, local = await _history(temporal_client, handle)
    # Only the long notify is a regular activity; the short notify, the short check and
    # the two run records (records.run: running, then final) are local.
    assert scheduled == Counter({"notify.send": 1}), scheduled
    assert local == 4, local
    # A new run's one patch marker is the bundle, which stands for local-short-calls.
    assert LOCAL_SHORT_CALLS in BUNDLED
    assert await patch_markers(handle) == [BUNDLE]
    assert [m["message"] for m in sink.received] == ["short", "long"]
    # The new history replays in the full sandbox (the interpreter re-imported, every
    # restriction on), as a worker restarted mid-run would replay it.
    history = await temporal_client.get_workflow_handle(handle.id).fetch_history()
    replayer = Replayer(workflows=[ReleaseWorkflow], data_converter=temporal_client.data_converter)
    assert (await replayer.replay_workflow(history)).replay_failure is None


async def test_local_step_retries_are_attempts_and_4xx_is_final(
    temporal_client: Client, settings: Settings
) -> None:
    """A 503 then a 200: two attempts on the step; a 404: failed at once, no retry."""
    flaky, broken = Sink([503]), Sink([404, 404, 404])
    try:
        text = f"""
apiVersion: shipflow/v1
name: local-retries
stage: test
concurrency: allow
steps:
  - notify: {{id: flaky, webhook: "{flaky.url}", message: "hi", retries: 2}}
  - notify: {{id: broken, webhook: "{broken.url}", message: "hi", retries: 2}}
"""
        async with new_worker(temporal_client, settings):
            status = await finish(await start_flow(temporal_client, settings, text))
    finally:
        flaky.close()
        broken.close()
    assert status.state == "failed", status
    first, second = status.step("flaky"), status.step("broken")
    assert (first.state, first.attempts, first.error) == ("succeeded", 2, None), first
    assert second.state == "failed" and second.attempts == 1, second
    assert second.error is not None and "HTTP 404" in second.error, second
    assert len(flaky.received) == 2 and len(broken.received) == 1


async def test_run_record_failing_does_not_fail_the_run(
    temporal_client: Client, settings: Settings, sink: Sink
) -> None:
    """The runs index is best effort: its local activity failing (here the table is gone)
    must leave the run succeeded. A local activity's failure reaches the workflow without
    the ActivityError wrapper; before that was handled, the run failed at its very end."""
    from sqlalchemy import create_engine, text

    text_flow = f"""
apiVersion: shipflow/v1
name: record-down
stage: test
concurrency: allow
steps:
  - notify: {{id: tell, webhook: "{sink.url}", message: "hi"}}
"""
    async with new_worker(temporal_client, settings):
        engine = create_engine(settings.sqlalchemy_url())
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE run"))
        engine.dispose()
        handle = await start_flow(temporal_client, settings, text_flow)
        # The workflow itself must complete (the memo said "succeeded" even when it failed).
        result = await handle.result()
    assert result.status.state == "succeeded", result.status
    assert result.status.step("tell").state == "succeeded"
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
