"""A worker SIGKILLed while a `notify` step waits for a slow webhook.

The step must resume on another worker without counting an attempt (the activity
heartbeats while the call runs), and every delivery the receiver sees carries the same
idempotency key, in the `Idempotency-Key` header and in the body, so it can drop the
duplicate. Before the fix the step timed out after its start-to-close timeout, counted
attempt 2 and sent a second message with nothing to tell the two apart.
"""

from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from tests.helpers import finish, new_worker, start_flow, wait_until
from tests.workflows.test_durability import spawn_worker


class SlowSink:
    """A loopback webhook receiver that holds the first request until released."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                first = not sink.received
                sink.received.append(
                    {"headers": dict(self.headers), "body": json.loads(self.rfile.read(length))}
                )
                if first:
                    sink.release.wait(30)
                try:
                    self.send_response(200)
                    self.end_headers()
                except OSError:
                    pass  # the caller died meanwhile

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SlowSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


async def test_worker_lost_during_notify_is_not_an_attempt_and_keeps_the_key(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    with SlowSink() as sink:
        # timeout 5s: on the unfixed code the killed call is a start-to-close timeout
        # (attempt 2) within seconds instead of 30.
        text = f"""
apiVersion: shipflow/v1
name: notify-lost
stage: test
steps:
  - notify: {{id: tell, webhook: "{sink.url}", message: "released", timeout: 5s, retries: 2}}
"""
        worker = spawn_worker(settings, tmp_path / "worker.log")
        try:
            handle = await start_flow(temporal_client, settings, text)
            await wait_until(lambda: len(sink.received) >= 1, timeout=30)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        finally:
            if worker.poll() is None:
                worker.kill()
        async with new_worker(temporal_client, settings):
            status = await finish(handle)
        sink.release.set()

    assert status.state == "succeeded", status
    step = status.step("tell")
    assert step.attempts == 1, f"a lost worker was counted as an attempt: {step}"
    keys = {r["headers"].get("Idempotency-Key") for r in sink.received}
    assert len(keys) == 1 and None not in keys, sink.received
    (key,) = keys
    assert key.startswith(f"{handle.id}/tell/"), key
    assert all(r["body"]["idempotency_key"] == key for r in sink.received)
    assert (step.output or {}).get("idempotency_key") == key


async def test_every_run_gets_its_own_key(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    """Two runs of one flow send different keys: a receiver drops only true duplicates."""
    with SlowSink() as sink:
        sink.release.set()
        text = f"""
apiVersion: shipflow/v1
name: notify-keys
stage: test
steps:
  - notify: {{id: tell, webhook: "{sink.url}", message: "hi", headers: {{X-Team: web}}}}
"""
        async with new_worker(temporal_client, settings):
            for _ in range(2):
                status = await finish(await start_flow(temporal_client, settings, text))
                assert status.state == "succeeded", status
    keys = [r["headers"]["Idempotency-Key"] for r in sink.received]
    assert len(keys) == 2 and keys[0] != keys[1], keys
    assert all(r["headers"]["X-Team"] == "web" for r in sink.received)
