"""A flow's `notifications:`: checked at apply time like a notify step (hostile input named
by its path, args in a URL only as data), and sent by the run on a real worker: retried
through a transient failure under one idempotency key, never failing the run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from shipflow.activities.core.client import connect
from shipflow.activities.core.settings import Settings
from shipflow.worker.main import build_worker
from shipflow.worker.telemetry import metrics_runtime
from shipflow.workflows.plan import compile
from shipflow.workflows.release import RejectInput, ReleaseWorkflow
from shipflow.workflows.spec import FlowError, load_flow_text
from tests.helpers import (
    HttpSink,
    finish,
    free_port,
    new_worker,
    start_flow,
    step_state,
    wait_until,
)

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


async def test_waiting_then_rejected_with_the_approve_link_and_decision_metrics(
    temporal_client: Client, settings: Settings
) -> None:
    port = free_port()
    client = await connect(settings, runtime=metrics_runtime(f"127.0.0.1:{port}"))
    text = HEAD.replace("name: told", "name: rejected") + (
        "notifications:\n  - {on: [waiting, failed], webhook: '%s/n'}\n"
        "steps:\n  - approve: {id: gate, timeout: 10m}\n  - migrate: {id: never, command: [echo]}\n"
    )
    with HttpSink() as sink:
        async with build_worker(client, settings):
            handle = await start_flow(temporal_client, settings, text % sink.url)
            await wait_until(lambda: _waiting(handle), timeout=30)
            await wait_until(lambda: len(sink.received) == 1, timeout=30)
            waiting = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            await handle.execute_update(
                ReleaseWorkflow.reject, RejectInput(step="gate", by="bob", comment="not today")
            )
            status = await finish(handle)
            after = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert status.state.value == "failed"
    told, failed = (r["body"] for r in sink.received)
    assert (told["event"], told["state"], told["step"]) == ("waiting", "waiting", "gate")
    assert told["approve_url"] == f"{settings.api_url}/runs/{status.run_id}/approve"
    assert f"shipflow approve {status.run_id} gate" in told["text"]
    assert (failed["event"], failed["step"]) == ("failed", "gate")
    assert "rejected by bob: not today" in failed["error"]
    assert "approve_url" not in failed
    assert _sample(waiting, "shipflow_release_approvals_waiting", 'flow="rejected"') == 1
    assert _sample(after, "shipflow_release_approvals_waiting", 'flow="rejected"') == 0
    assert _sample(
        after, "shipflow_release_approval_decision_seconds_count", 'decision="rejected"'
    ) == 1
    assert _sample(after, "shipflow_release_runs_ended_total", 'outcome="failed"') == 1


async def _waiting(handle: Any) -> bool:
    return await step_state(handle, "gate") == "waiting"


def _sample(text: str, name: str, label: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )
