"""Test helpers: workers on their own task queue, flows run end to end, condition waits.

The one place for what every test folder and `bench/` needs: `wait_until` (async) and
`wait_until_sync`, `free_port`/`free_ports`, `temporal_binary`, an embedded stack on free
ports (`stack_on_free_ports`), a run's history as the temporal CLI shows it
(`cli_history`). A polling loop, a port picker or a binary lookup written anywhere else is
a copy of one of these.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.worker import Worker

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import plan_for, read_status, start_release
from shipflow.activities.targets.local.process import free_port, free_ports
from shipflow.infra.stack.components import temporal_binary
from shipflow.infra.stack.embedded import EmbeddedStack
from shipflow.worker.main import build_worker
from shipflow.workflows.release import ReleaseWorkflow
from shipflow.workflows.spec import FlowSpec, load_flow_text
from shipflow.workflows.status import RunStatus

T = TypeVar("T")

#: One port picker and one Temporal CLI lookup for tests and benchmarks, the same ones
#: production uses; one condition wait (`wait_until`, and `wait_until_sync` for code that is
#: not async). Tests and `bench/` import these from here, nowhere else.
__all__ = ["free_port", "free_ports", "temporal_binary", "wait_until", "wait_until_sync"]


def cli_history(address: str, run_id: str, *options: str) -> dict[str, Any]:
    """The run's history as `temporal workflow show -o json` prints it: what a user of the
    temporal CLI sees (with no codec unless `options` name one)."""
    import json
    import subprocess

    done = subprocess.run(
        [temporal_binary(), "workflow", "show", "-w", run_id, "--address", address,
         "--namespace", "default", "-o", "json", *options],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    history: dict[str, Any] = json.loads(done.stdout)
    return history


def stack_on_free_ports(data_dir: Path, *, queue: str, **options: Any) -> EmbeddedStack:
    """An embedded stack on five free loopback ports and a task queue of its own
    (`<queue>-<random>`); `options` are `EmbeddedStack`'s. Not started."""
    api, temporal, ui, runtime, s3 = free_ports(5)
    return EmbeddedStack(
        data_dir,
        api_port=api,
        temporal_port=temporal,
        ui_port=ui,
        runtime_port=runtime,
        s3_port=s3,
        task_queue=f"{queue}-{uuid.uuid4().hex[:8]}",
        **options,
    )


@asynccontextmanager
async def new_worker(
    client: Client, settings: Settings, *, task_queue: str | None = None
) -> AsyncIterator[Worker]:
    """A real worker with every workflow and activity, on its own task queue."""
    worker = build_worker(client, settings, task_queue=task_queue or settings.task_queue)
    async with worker:
        yield worker


def flow_from(text_or_spec: str | FlowSpec) -> FlowSpec:
    return text_or_spec if isinstance(text_or_spec, FlowSpec) else load_flow_text(text_or_spec)


async def start_flow(
    client: Client,
    settings: Settings,
    flow: str | FlowSpec,
    args: dict[str, Any] | None = None,
    **kwargs: Any,
) -> WorkflowHandle[ReleaseWorkflow, Any]:
    spec = flow_from(flow)
    plan = plan_for(spec, settings, args)
    kwargs.setdefault("run_id", f"{spec.name}-{uuid.uuid4().hex[:8]}")
    return await start_release(client, settings, plan, **kwargs)


async def finish(handle: WorkflowHandle[Any, Any]) -> RunStatus:
    """Wait for the run to end (whatever the outcome) and return its final status."""
    try:
        await handle.result()
    except WorkflowFailureError:
        pass
    return await read_status(handle._client, handle.id)


async def run_flow(
    client: Client, settings: Settings, flow: str | FlowSpec, args: dict[str, Any] | None = None
) -> RunStatus:
    """Start a flow on `settings.task_queue` and return its final status (a worker must run)."""
    handle = await start_flow(client, settings, flow, args)
    return await finish(handle)


async def wait_until(
    check: Callable[[], T | Awaitable[T]], *, timeout: float = 30.0, interval: float = 0.05
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


def wait_until_sync(
    check: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
) -> T:
    """`wait_until` for code that is not async (threads, subprocess supervision tests).

    `what` names the condition in the failure message; a callable is called only when it
    fails, so the message can show state read at that moment (e.g. a log's tail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said}: not met within {timeout:g}s (last value: {value!r})")
        time.sleep(interval)


async def step_state(handle: WorkflowHandle[Any, Any], step_id: str) -> str:
    status: RunStatus = await handle.query(ReleaseWorkflow.status)
    return status.step(step_id).state.value


class HttpSink:
    """A real loopback HTTP server that records what is sent to it (webhook receiver)."""

    def __init__(self, status: int = 200):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.status = status
        self.received: list[dict[str, Any]] = []
        self.gets = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                sink.received.append(
                    {
                        "path": self.path,
                        "body": json.loads(body or b"null"),
                        "headers": dict(self.headers),
                    }
                )
                self.send_response(sink.status)
                self.end_headers()

            def do_GET(self) -> None:
                sink.gets += 1
                self.send_response(sink.status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HttpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()




async def patch_markers(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The patch ids a run recorded (`workflow.patched` markers), in history order."""
    import json

    from temporalio.api.enums.v1 import EventType

    ids: list[str] = []
    async for event in handle.fetch_history_events():
        attrs = event.marker_recorded_event_attributes
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and attrs.marker_name == (
            "core_patch"
        ):
            ids += [json.loads(p.data)["id"] for p in attrs.details["patch-data"].payloads]
    return ids


async def decoded_history_text(client: Client, workflow_id: str) -> str:
    """A run's history as text with every payload decrypted by `client`'s codec and its
    data shown in clear: for asserting what a run's data holds (e.g. that a secret was
    never in it), now that the raw history is ciphertext that would hide anything."""
    from google.protobuf.json_format import ParseDict
    from temporalio.api.common.v1 import Payload

    history = await client.get_workflow_handle(workflow_id).fetch_history()
    codec = client.data_converter.payload_codec
    parts: list[str] = []

    async def visit(value: Any) -> None:
        if isinstance(value, dict) and "metadata" in value and "data" in value:
            payload = ParseDict(value, Payload(), ignore_unknown_fields=True)
            (clear,) = await codec.decode([payload]) if codec else [payload]
            parts.append(clear.data.decode("utf-8", "replace"))
        elif isinstance(value, dict):
            for item in value.values():
                await visit(item)
        elif isinstance(value, list):
            for item in value:
                await visit(item)
        elif isinstance(value, str):
            parts.append(value)

    await visit(history.to_json_dict())
    return "\n".join(parts)


class Scrape:
    """One scrape of a Prometheus endpoint, with sample lookup by labels."""

    def __init__(self, text: str):
        self.text = text
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def names(self) -> set[str]:
        """Sample names as exported (the parser would add `_total` to the SDK's counters)."""
        return {
            re.split(r"[{ ]", line, maxsplit=1)[0]
            for line in self.text.splitlines()
            if line and not line.startswith("#")
        }


def scrape(url: str) -> Scrape:
    return Scrape(httpx.get(url, timeout=5).text)
