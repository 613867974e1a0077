"""The run-status event stream and a step's attempts in the run's history, on a real worker
and Temporal: what the console's run page reads instead of polling, and its deep links."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
import uuid
from typing import Any

from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.api.routes.run_events import POLL_S
from tests.api.conftest import api_client, bearer, token_settings
from tests.api.test_runs import apply, run_state, start, step_waiting
from tests.helpers import Scrape, new_worker, wait_until

FLOW = """
apiVersion: shipflow/v1
name: {name}
stage: {stage}
steps:
  - check: {{id: probe, tcp: {{port: {port}}}, period: 100ms, failure_threshold: 1, retries: 1,
            timeout: 5s}}
"""

APPROVAL = """
apiVersion: shipflow/v1
name: {name}
stage: {stage}
steps:
  - migrate: {{id: prepare, command: ["true"]}}
  - approve: {{id: go-live, timeout: 1h}}
"""


def events_of(text: str) -> list[tuple[str, Any]]:
    out = []
    for block in text.split("\n\n"):
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        if data:
            out.append((name, json.loads(data)))
    return out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_stream_follows_a_run_to_its_end_and_refuses_unknown_runs(
    temporal_client: Client, settings: Settings
) -> None:
    secured = token_settings(settings)
    name, stage = f"ev-{uuid.uuid4().hex[:6]}", f"st-{uuid.uuid4().hex[:6]}"
    async with (
        api_client(secured, headers=bearer("viewer")) as http,
        new_worker(temporal_client, secured),
    ):
        assert (await http.get("/runs/no-such-run/events")).status_code == 404
        async with api_client(secured, headers=bearer("admin")) as admin:
            await apply(admin, APPROVAL.format(name=name, stage=stage))
            run_id = await start(admin, name)
            await step_waiting(admin, run_id, "go-live")
            # The stream answers when the run ends; approve it while the stream is open.
            reading = asyncio.create_task(http.get(f"/runs/{run_id}/events", timeout=60))
            await asyncio.sleep(0)  # give the stream a turn to open before the decision
            decided = await admin.post(f"/runs/{run_id}/approve", json={"step": "go-live"})
            assert decided.status_code == 200, decided.text
            response = await reading
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = events_of(response.text)
        names = [n for n, _ in events]
        assert names[0] == "status" and names[-1] == "end", names
        states = [data["state"] for n, data in events if n == "status"]
        # (The first is usually `waiting`; on a loaded machine the decision can land first.)
        assert states[-1] == "succeeded", states
        sent = [json.dumps(d, sort_keys=True) for n, d in events if n == "status"]
        assert all(a != b for a, b in itertools.pairwise(sent))  # only changes are sent
        last = [data for n, data in events if n == "status"][-1]
        assert {s["id"]: s["state"] for s in last["steps"]} == {
            "prepare": "succeeded",
            "go-live": "succeeded",
        }
        assert last["ui_url"].endswith(f"/workflows/{run_id}")
        # A final run: its status once, then the end.
        again = events_of((await http.get(f"/runs/{run_id}/events")).text)
        assert [n for n, _ in again] == ["status", "end"]


async def test_each_attempt_is_recorded_with_its_error_and_found_in_the_history(
    temporal_client: Client, settings: Settings
) -> None:
    secured = token_settings(settings)
    name, stage = f"att-{uuid.uuid4().hex[:6]}", f"st-{uuid.uuid4().hex[:6]}"
    async with (
        api_client(secured, headers=bearer("admin")) as http,
        new_worker(temporal_client, secured),
    ):
        await apply(http, FLOW.format(name=name, stage=stage, port=closed_port()))
        run_id = await start(http, name)
        body = await run_state(http, run_id, "failed")
        (probe,) = body["steps"]
        log = probe["attempt_log"]
        assert [a["number"] for a in log] == [1, 2]
        for attempt in log:
            assert attempt["outcome"] == "failed" and attempt["error"], attempt
            assert attempt["started_at"] <= attempt["ended_at"]
            assert attempt["activity_id"].startswith("probe:")
        assert log[0]["ended_at"] <= log[1]["started_at"]

        # A short check runs as a local activity: found through its marker.
        history = (await http.get(f"/runs/{run_id}/steps/probe/history")).json()
        events = [e for e in history["events"] if not e["undo"]]
        assert [e["attempt"] for e in events] == [1, 2]
        assert all(e["local"] for e in events), events
        assert {e["activity_id"] for e in events} == {a["activity_id"] for a in log}
        for event in events:
            assert event["ui_url"].startswith(secured.ui_url.rstrip("/"))
            assert event["ui_url"].endswith(f"/history/events/{event['event_id']}")
            assert f"/workflows/{run_id}/" in event["ui_url"]
        missing = await http.get(f"/runs/{run_id}/steps/nope/history")
        assert missing.status_code == 404 and "no step 'nope'" in missing.text
        assert (await http.get("/runs/no-such-run/steps/probe/history")).status_code == 404


async def test_many_pages_of_one_run_share_one_poller(
    temporal_client: Client, settings: Settings
) -> None:
    """Five open run pages of one run cost Temporal what one page does: one memo read per
    `POLL_S`, not five; each page still gets the whole run and its end."""
    name, stage = f"share-{uuid.uuid4().hex[:6]}", f"st-{uuid.uuid4().hex[:6]}"
    async with api_client(settings) as http, new_worker(temporal_client, settings):
        await apply(http, APPROVAL.format(name=name, stage=stage))
        run_id = await start(http, name)
        await step_waiting(http, run_id, "go-live")

        async def metrics() -> str:
            return (await http.get("/metrics")).text

        pages = [
            asyncio.create_task(http.get(f"/runs/{run_id}/events", timeout=60)) for _ in range(5)
        ]
        text = await wait_until(lambda: _open_streams(metrics, 5), timeout=30, interval=0.05)
        watched = Scrape(text).value("shipflow_runs_watched")
        reads = Scrape(text).value("shipflow_run_stream_reads_total")
        opened = time.monotonic()
        # Four more reads: one poller needs four of its intervals for them, five would not.
        await wait_until(lambda: _reads_past(metrics, reads + 4), timeout=30, interval=0.05)
        elapsed = time.monotonic() - opened
        now = Scrape(await metrics()).value("shipflow_run_stream_reads_total")
        assert now - reads <= elapsed / POLL_S + 1, (now - reads, elapsed)
        assert watched == 1

        decided = await http.post(f"/runs/{run_id}/approve", json={"step": "go-live"})
        assert decided.status_code == 200, decided.text
        for response in await asyncio.gather(*pages):
            events = events_of(response.text)
            assert events[0][0] == "status" and events[-1] == ("end", {"state": "succeeded"})
            last = [data for n, data in events if n == "status"][-1]
            assert last["state"] == "succeeded"
        text = await wait_until(lambda: _open_streams(metrics, 0), timeout=10, interval=0.05)
        assert Scrape(text).value("shipflow_runs_watched") == 0


async def _open_streams(metrics: Any, count: int) -> str | None:
    text: str = await metrics()
    return text if Scrape(text).value("shipflow_run_streams_open") == count else None


async def _reads_past(metrics: Any, reads: float) -> bool:
    return Scrape(await metrics()).value("shipflow_run_stream_reads_total") >= reads
