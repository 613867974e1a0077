"""A real worker process (`python -m shipflow.worker.main`, metrics endpoint on, stdout to a
file) runs releases that back up, deploy, succeed, fail and compensate, retry, queue and wait
for approval; the API starts one. Then the worker's Prometheus endpoint must show exact
counts, every metric the Grafana dashboard and the alert rules query must exist on the worker
or the API, every line the worker logged must be a JSON object naming the run and step it was
about, and the flows' notifications must have reached a loopback sink."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.workflows.release import ApproveInput, ReleaseWorkflow
from tests.api.conftest import api_client
from tests.helpers import (
    HttpSink,
    Scrape,
    finish,
    free_port,
    scrape,
    start_flow,
    step_state,
    wait_until,
)
from tests.local.support import RuntimeProcess, demo_service

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "infra" / "observability"


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[RuntimeProcess]:
    """The local target's runtime, where the worker's settings look for its key."""
    rt = RuntimeProcess(tmp_path / "shipflow" / "runtime")
    rt.start()
    try:
        yield rt
    finally:
        rt.cleanup()


def queried_metrics() -> set[str]:
    """Every metric name the dashboard and the alert rules query."""
    dashboard = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [dashboard["templating"]["list"][1]["query"]["query"]]
    exprs += re.findall(r"expr: *\|?\n?((?:.|\n)*?)(?=\n *for:|\n *labels:)",
                        (OBSERVABILITY / "alerts.yaml").read_text())
    return set(re.findall(r"\b((?:shipflow|temporal)_[a-z0-9_]+)", "\n".join(exprs)))


def spawn_worker(settings: Settings, log: Path, port: int) -> subprocess.Popen[bytes]:
    """`python -m shipflow.worker.main` with its metrics endpoint on `port`, output to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPFLOW_", "OTEL_"))}
    env.update(
        {
            "SHIPFLOW_TEMPORAL_ADDRESS": settings.temporal_address,
            "SHIPFLOW_TASK_QUEUE": settings.task_queue,
            "SHIPFLOW_DATA_DIR": str(settings.data_dir),
            "SHIPFLOW_PAYLOAD_KEYS": settings.payload_keys.get_secret_value(),  # type: ignore[union-attr]
            "SHIPFLOW_STICKY_TIMEOUT_S": str(settings.sticky_timeout_s),
            "SHIPFLOW_WORKER_METRICS_ADDRESS": f"127.0.0.1:{port}",
            "SHIPFLOW_API_URL": "http://shipflow.example:8000",
        }
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shipflow.worker.main"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def worker_process(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The worker as its own process: (metrics URL, log file)."""
    port = free_port()
    log = tmp_path / "worker.log"
    process = spawn_worker(settings, log, port)
    try:
        yield f"http://127.0.0.1:{port}/metrics", log
    finally:
        stop(process)


def flow(name: str, stage: str, body: str) -> str:
    return f"apiVersion: shipflow/v1\nname: {name}\nstage: {stage}\n{body}"


async def test_metrics_logs_and_notifications_of_real_runs(
    temporal_client: Client,
    settings: Settings,
    tmp_path: Path,
    worker_process: tuple[str, Path],
    runtime: RuntimeProcess,
) -> None:
    metrics_url, log = worker_process
    gate, flaky = tmp_path / "gate", tmp_path / "flaky"
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (x)")
    web = json.dumps(demo_service(free_port()))
    with HttpSink() as sink, HttpSink(status=410) as gone:
        ok = flow(
            "obs-ok",
            "s-ok",
            f"""
target: {{kind: local, runtime: "{runtime.url}", services: {{web: {web}}}}}
notifications:
  - {{on: [succeeded, failed], webhook: "{sink.url}/ok", format: generic}}
  - {{on: [succeeded], webhook: "{gone.url}/gone?token=sekrit", format: generic}}
steps:
  - backup: {{id: db, database: "sqlite:///{database}", to: "file://{tmp_path}/backups/"}}
  - migrate: {{id: hello, command: [sh, -c, "echo hello"]}}
  - deploy: {{id: web, service: web, image: v1}}
""",
        )
        undo = flow(
            "obs-undo",
            "s-undo",
            f"""
notifications:
  - {{on: [rolled_back], webhook: "{sink.url}/undo", format: slack}}
steps:
  - migrate: {{id: schema, command: [sh, -c, "echo up"], undo: {{command: [sh, -c, "echo down"]}}}}
  - migrate: {{id: broken, command: [sh, -c, "echo no space left >&2; exit 3"]}}
""",
        )
        retry = flow(
            "obs-retry",
            "s-retry",
            f"""
steps:
  - migrate: {{id: flaky, retries: 2, command: [sh, -c, "test -f {flaky} && echo ok || {{ touch {flaky}; exit 4; }}"]}}
""",
        )
        queue = flow(
            "obs-queue",
            "s-queue",
            f"""
concurrency: queue
steps:
  - migrate: {{id: hold, command: [sh, -c, "while [ ! -f {gate} ]; do sleep 0.1; done"]}}
""",
        )
        approve = flow(
            "obs-approve",
            "s-approve",
            f"""
notifications:
  - {{on: [waiting], webhook: "{sink.url}/waiting", format: slack}}
steps:
  - approve: {{id: go-live, timeout: 5m}}
""",
        )
        await wait_until(lambda: _answers(metrics_url), timeout=60)
        runs = {
            name: await start_flow(temporal_client, settings, text)
            for name, text in (("ok", ok), ("undo", undo), ("retry", retry), ("approve", approve))
        }
        first = await start_flow(temporal_client, settings, queue)
        await wait_until(lambda: _is(first, "hold", "running"), timeout=30)
        second = await start_flow(temporal_client, settings, queue)
        await wait_until(lambda: _run_state(second, "queued"), timeout=30)
        await wait_until(lambda: _is(runs["approve"], "go-live", "waiting"), timeout=30)

        waiting = scrape(metrics_url)
        assert waiting.value("shipflow_release_runs_queued", flow="obs-queue") == 1
        assert waiting.value("shipflow_release_approvals_waiting", flow="obs-approve") == 1

        gate.touch()
        await runs["approve"].execute_update(
            ReleaseWorkflow.approve, ApproveInput(step="go-live", by="alice")
        )
        status = {name: await finish(handle) for name, handle in runs.items()}
        status["queue-1"], status["queue-2"] = await finish(first), await finish(second)
        assert {k: v.state.value for k, v in status.items()} == {
            "ok": "succeeded",  # a notification answered 410: the run succeeds all the same
            "undo": "rolled_back",
            "retry": "succeeded",
            "approve": "succeeded",
            "queue-1": "succeeded",
            "queue-2": "succeeded",
        }
        async with api_client(settings) as http:
            api_flow = flow("obs-api", "s-api", "steps: [{migrate: {id: a, command: [echo, a]}}]\n")
            assert (await http.post("/flows", content=api_flow)).status_code == 201
            started = await http.post("/flows/obs-api/runs", json={})
            assert started.status_code == 202, started.text
            status["api"] = await finish(temporal_client.get_workflow_handle(started.json()["run_id"]))
            # No GitHub secret configured: a delivery is refused (counted as an error).
            assert (await http.post("/hooks/github", content=b"{}")).status_code == 503
            api = Scrape((await http.get("/metrics")).text)
        assert status["api"].state.value == "succeeded"
        m = scrape(metrics_url)

        # ---- metrics: exact counts, labelled by flow, stage, kind, outcome
        for name, runs_of_flow in (
            ("obs-ok", 1),
            ("obs-undo", 1),
            ("obs-retry", 1),
            ("obs-queue", 2),
            ("obs-approve", 1),
        ):
            assert (
                m.value("shipflow_release_runs_started_total", flow=name, trigger="api")
                == runs_of_flow
            ), name
            assert m.value("shipflow_release_runs_ended_total", flow=name) == runs_of_flow, name
            assert m.value("shipflow_release_run_duration_seconds_count", flow=name) == runs_of_flow
        assert m.value("shipflow_release_runs_ended_total", flow="obs-undo", outcome="rolled_back") == 1
        assert m.value("shipflow_release_runs_ended_total", flow="obs-ok", outcome="succeeded") == 1
        assert m.value(
            "shipflow_release_step_duration_seconds_count", flow="obs-undo", kind="migrate", outcome="failed"
        ) == 1
        assert m.value(
            "shipflow_release_step_duration_seconds_count", flow="obs-undo", kind="migrate", outcome="succeeded"
        ) == 1
        assert m.value("shipflow_release_compensations_total", flow="obs-undo", outcome="compensated") == 1
        assert m.value("shipflow_release_compensations_total", outcome="failed") == 0
        assert m.value("shipflow_release_step_attempts_total", flow="obs-retry", kind="migrate") == 2
        assert m.value("shipflow_release_step_retries_total", flow="obs-retry", kind="migrate") == 1
        assert m.value("shipflow_release_step_retries_total", flow="obs-ok") == 0
        assert m.value("shipflow_release_runs_queued", flow="obs-queue") == 0
        assert m.value("shipflow_release_queue_wait_seconds_count", flow="obs-queue") == 1
        assert m.value("shipflow_release_approvals_waiting", flow="obs-approve") == 0
        assert m.value(
            "shipflow_release_approval_decision_seconds_count", flow="obs-approve", decision="approved"
        ) == 1
        backup, deploy = status["ok"].step("db").output, status["ok"].step("web").output
        assert backup is not None and deploy is not None
        assert m.value("shipflow_release_backup_duration_seconds_count", flow="obs-ok") == 1
        assert m.value("shipflow_release_backup_bytes_sum", flow="obs-ok") == backup["size"] > 0
        assert m.value("shipflow_release_rollout_duration_seconds_count", flow="obs-ok", kind="deploy") == 1
        assert m.value("shipflow_release_rollout_instances_replaced_total", flow="obs-ok") == len(
            deploy["instances"]
        ) > 0
        assert m.value("shipflow_release_step_duration_seconds_count", flow="obs-ok") == 3
        assert m.value("shipflow_release_notifications_total", flow="obs-ok", result="sent") == 1
        assert m.value("shipflow_release_notifications_total", flow="obs-ok", result="failed") == 1
        assert m.value("shipflow_release_notifications_total", flow="obs-undo", event="rolled_back") == 1
        assert m.value("shipflow_notification_deliveries_total", kind="run_event", result="ok") == 3
        assert m.value("shipflow_notification_deliveries_total", kind="run_event", result="http_410") == 1
        # The Temporal SDK's own metrics come through the same endpoint.
        assert m.value("temporal_worker_task_slots_available") > 0
        assert "temporal_workflow_task_schedule_to_start_latency_count" in m.names()
        assert "run_id" not in m.text and status["ok"].run_id not in m.text  # low cardinality
        assert api.value("shipflow_runs_started_total", flow="obs-api", trigger="api") == 1
        assert api.value("shipflow_webhook_deliveries_total", provider="github", result="error") == 1
        # Every metric the dashboard and the alert rules query exists after these runs.
        exported = m.names() | api.names()
        queried = queried_metrics()
        assert len(queried) > 25
        assert sorted(queried - exported) == []

    # ---- notifications: what the sink got
    by_path = {r["path"]: r["body"] for r in sink.received}
    assert sorted(by_path) == ["/ok", "/undo", "/waiting"]
    assert by_path["/ok"]["event"] == "succeeded" and by_path["/ok"]["run_id"] == status["ok"].run_id
    assert by_path["/ok"]["link"] == f"http://shipflow.example:8000/runs/{status['ok'].run_id}"
    undo_blocks = json.dumps(by_path["/undo"]["blocks"])
    assert "rolled back" in by_path["/undo"]["text"] and "obs-undo" in undo_blocks
    assert "exit" in by_path["/undo"]["text"]  # the failure's reason
    approve_id = status["approve"].run_id
    assert f"/runs/{approve_id}/approve" in json.dumps(by_path["/waiting"]["blocks"])
    assert "go-live" in by_path["/waiting"]["text"]
    assert len(gone.received) == 1  # 410 is final: not retried

    # ---- logs: every line JSON; the runs and steps named; expected failures one line
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    for record in lines:
        assert {"ts", "level", "logger", "message"} <= record.keys(), record
    about = [r for r in lines if r.get("run_id") == status["undo"].run_id]
    broken = [r for r in about if r.get("step_id") == "broken"]
    assert broken and all(r["flow"] == "obs-undo" and r["stage"] == "s-undo" for r in broken if "flow" in r)
    failed = [r for r in broken if r["message"] == "step broken failed"]
    assert len(failed) == 1 and "exit" in failed[0]["reason"] and "traceback" not in failed[0]
    assert not any("traceback" in r for r in about), "an expected failure logged a traceback"
    sdk_line = [r for r in broken if r["message"] == "Completing activity as failed"]
    assert len(sdk_line) == 1 and sdk_line[0]["flow"] == "obs-undo", broken
    assert any(r.get("step_id") == "schema" and "compensated" in r["message"] for r in about)
    assert any(r.get("step_id") == "flaky" and r.get("attempt") == 2 for r in lines)
    text = log.read_text()
    assert "HTTP Request" not in text  # client request logs are off at INFO
    assert "sekrit" not in text


async def _answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(url, timeout=2)).status_code == 200
    except httpx.TransportError:
        return False


async def _is(handle: Any, step: str, state: str) -> bool:
    return await step_state(handle, step) == state


async def _run_state(handle: Any, state: str) -> bool:
    status = await handle.query(ReleaseWorkflow.status)
    return bool(status.state.value == state)


async def test_a_run_is_counted_once_across_a_worker_crash(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    """Worker A starts the run and is SIGKILLed mid-step; worker B replays the history and
    finishes it. Replay records nothing: A and B together count one start, one end and each
    step once."""
    gate, pidfile = tmp_path / "gate", tmp_path / "pid"
    text = flow(
        "obs-crash",
        "s-crash",
        f"""
steps:
  - migrate: {{id: one, command: [sh, -c, "echo one"]}}
  - migrate: {{id: two, command: [sh, -c, "echo $$ > {pidfile}; while [ ! -f {gate} ]; do sleep 0.1; done"]}}
  - migrate: {{id: three, command: [sh, -c, "echo three"]}}
""",
    )
    ports = free_port(), free_port()
    first = spawn_worker(settings, tmp_path / "a.log", ports[0])
    try:
        await wait_until(lambda: _answers(f"http://127.0.0.1:{ports[0]}/metrics"), timeout=60)
        handle = await start_flow(temporal_client, settings, text)
        await wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=30)
        before = scrape(f"http://127.0.0.1:{ports[0]}/metrics")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        stop(first)
    second = spawn_worker(settings, tmp_path / "b.log", ports[1])
    try:
        await wait_until(lambda: _answers(f"http://127.0.0.1:{ports[1]}/metrics"), timeout=60)
        gate.touch()
        status = await finish(handle)
        after = scrape(f"http://127.0.0.1:{ports[1]}/metrics")
    finally:
        stop(second)
    assert status.state.value == "succeeded", status
    labels = {"flow": "obs-crash"}
    started = "shipflow_release_runs_started_total"
    steps = "shipflow_release_step_duration_seconds_count"
    assert (before.value(started, **labels), after.value(started, **labels)) == (1, 0)
    assert (before.value(steps, **labels), after.value(steps, **labels)) == (1, 2)
    assert after.value(steps, outcome="succeeded", **labels) == 2
    assert after.value("shipflow_release_runs_ended_total", outcome="succeeded", **labels) == 1
    assert before.value("shipflow_release_runs_ended_total", **labels) == 0
    # A lost worker is not an attempt: three steps, three attempts, no retry.
    total = before.value("shipflow_release_step_attempts_total", **labels) + after.value(
        "shipflow_release_step_attempts_total", **labels
    )
    assert total == 3
    assert after.value("shipflow_release_step_retries_total", **labels) == 0
