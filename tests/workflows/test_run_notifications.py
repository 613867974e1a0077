"""A flow's `notifications:`: checked at apply time like a notify step (hostile input named
by its path, args in a URL only as data), and sent by the run on a real worker: retried
through a transient failure under one idempotency key, never failing the run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.workflows.plan import compile
from shipflow.workflows.spec import FlowError, load_flow_text
from tests.helpers import finish, free_port, new_worker, start_flow

HEAD = "apiVersion: shipflow/v1\nname: told\nstage: test\n"
STEPS = "steps: [{migrate: {id: m, command: [sh, -c, 'exit 0']}}]\n"


def problems(text: str, args: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(FlowError) as caught:
        compile(load_flow_text(text), args or {})
    return caught.value.problems


def test_bare_yaml_on_key_and_defaults() -> None:
    plan = compile(
        load_flow_text(HEAD + "notifications:\n  - on: [failed]\n    webhook: https://hooks.example/x\n" + STEPS)
    )
    (entry,) = plan.notifications
    assert (entry.on, entry.webhook, entry.format, entry.headers) == (
        ["failed"], "https://hooks.example/x", "generic", {}
    )


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        ("{on: [exploded], webhook: 'https://h/x'}", "notifications[0].on[0]"),
        ("{on: [], webhook: 'https://h/x'}", "notifications[0].on"),
        ("{on: [failed], webhook: 'ftp://h/x'}", "notifications[0].webhook"),
        ("{on: [failed], webhook: 'https://h/x', format: teams}", "notifications[0].format"),
        ("{on: [failed]}", "notifications[0].webhook"),
        ("{on: [failed], webhook: 'https://h/x', extra: 1}", "notifications[0].extra"),
    ],
)
def test_bad_entries_are_refused_by_path(entry: str, where: str) -> None:
    found = problems(HEAD + f"notifications:\n  - {entry}\n" + STEPS)
    assert [p for p, _ in found] == [where], found


def test_an_arg_in_the_webhook_host_needs_a_pattern_and_is_encoded_elsewhere() -> None:
    text = HEAD + (
        "args: {h: {default: x}, p: {default: x}}\n"
        "notifications:\n  - {on: [failed], webhook: 'https://${args.h}/x'}\n" + STEPS
    )
    assert [p for p, _ in problems(text)] == ["args.h"]
    path = text.replace("https://${args.h}/x", "https://hooks.example/${args.p}")
    plan = compile(load_flow_text(path), {"p": "../x?y=${env.SECRET}"})
    assert plan.notifications[0].webhook == "https://hooks.example/..%2Fx%3Fy%3D%24%7Benv.SECRET%7D"
    # A step output is not known at the start: not allowed in a notification.
    outputs = text.replace("https://${args.h}/x", "https://hooks.example/${steps.m.exit_code}")
    assert [p for p, _ in problems(outputs)] == ["notifications[0].webhook"]


class FlakySink:
    """Answers 503 to the first `fail` posts, then 204; records bodies and keys."""

    def __init__(self, fail: int):
        sink = self
        self.fail = fail
        self.calls: list[tuple[str, dict[str, Any]]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                sink.calls.append((self.headers["Idempotency-Key"], body))
                self.send_response(503 if len(sink.calls) <= sink.fail else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky() -> Iterator[FlakySink]:
    sink = FlakySink(fail=1)
    try:
        yield sink
    finally:
        sink.close()


async def test_a_failed_run_is_told_after_a_retry(
    temporal_client: Client, settings: Settings, flaky: FlakySink
) -> None:
    # Nothing listens there; only a subscribed event is sent (else the run would wait for
    # five refused attempts before it closes).
    dead = free_port()
    text = HEAD + (
        "notifications:\n"
        f"  - {{on: [failed], webhook: '{flaky.url}/hook', format: generic}}\n"
        f"  - {{on: [succeeded, waiting], webhook: 'http://127.0.0.1:{dead}/never'}}\n"
        "steps: [{migrate: {id: m, command: [sh, -c, 'echo disk full >&2; exit 5']}}]\n"
    )
    async with new_worker(temporal_client, settings):
        status = await finish(await start_flow(temporal_client, settings, text))
    assert status.state.value == "failed"  # not rollback_failed, not stuck: notifications aside
    assert status.error is not None and "disk full" in status.error
    assert len(flaky.calls) == 2  # 503, then delivered
    (key1, body), (key2, again) = flaky.calls
    assert key1 == key2 == body["idempotency_key"] and body == again
    assert (body["event"], body["state"], body["step"], body["run_id"]) == (
        "failed", "failed", "m", status.run_id
    )
    assert "disk full" in body["error"] and "disk full" in body["text"]
