"""The status memo is debounced (patch `memo-debounce`): what a reader without a worker sees.

`GET /runs/{id}` and `shipflow status` read the memo. It is upserted about once a second,
not at every workflow task, so a run's history stays small; but a step's progress still
reaches the memo within about a second with no other workflow task to carry it (a long
step running), and the final memo is exactly the run's final status.
"""

from __future__ import annotations

import time
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import read_status
from shipflow.workflows.release import ReleaseWorkflow
from shipflow.workflows.release_memo import MEMO_DEBOUNCE, MEMO_FLUSH_INTERVAL_S
from tests.helpers import finish, new_worker, start_flow, step_state, wait_until

HEAD = "apiVersion: shipflow/v1\nname: {name}\nstage: test-{name}\n"


async def _upserts_and_marker(handle: WorkflowHandle[Any, Any]) -> tuple[int, bool]:
    upserts, marker = 0, False
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED:
            upserts += 1
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = marker or MEMO_DEBOUNCE.encode() in event.SerializeToString()
    return upserts, marker


async def test_many_quick_steps_few_upserts_and_an_exact_final_memo(
    temporal_client: Client, settings: Settings
) -> None:
    steps = 20
    body = "steps:\n" + "".join(
        f'  - migrate: {{id: s{i}, command: ["true"]}}\n' for i in range(steps)
    )
    async with new_worker(temporal_client, settings):
        began = time.monotonic()
        handle = await start_flow(temporal_client, settings, HEAD.format(name="debounced") + body)
        memo = await finish(handle)
        took = time.monotonic() - began
        queried = await handle.query(ReleaseWorkflow.status)
    assert memo.state == "succeeded"
    # The final memo is the run's final status, every step and timing included.
    assert memo.model_dump() == queried.model_dump()
    upserts, marker = await _upserts_and_marker(handle)
    assert marker, "the run must record the memo-debounce patch marker"
    # Per task, this run upserted twice per step (40). Debounced: one a second while it
    # runs, and the end.
    assert upserts <= int(took / MEMO_FLUSH_INTERVAL_S) + 2, (upserts, took)
    assert upserts < steps // 2, (upserts, took)


async def test_a_long_step_shows_running_in_the_memo_within_about_a_second(
    temporal_client: Client, settings: Settings
) -> None:
    """`quick` ends and `slow` starts in one workflow task, less than a second after the
    starter wrote the memo: that change is pending, and the flush timer writes it while
    `slow` runs (no other workflow task comes until `slow` ends)."""
    body = (
        "steps:\n"
        '  - migrate: {id: quick, command: ["true"]}\n'
        "  - migrate: {id: slow, command: [sleep, '8']}\n"
    )
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, HEAD.format(name="lagging") + body)
        await wait_until(lambda: _queried(handle, "slow", "running"), timeout=30, interval=0.02)
        seen = time.monotonic()
        memo = await wait_until(
            lambda: _memo_step(temporal_client, handle.id, "slow", "running"),
            timeout=10,
            interval=0.05,
        )
        lag = time.monotonic() - seen
        # The memo caught up while the step still runs, within the flush interval (plus
        # the dispatch of the timer's workflow task on a busy machine).
        assert await step_state(handle, "slow") == "running"
        assert memo.step("quick").state == "succeeded"
        assert lag < MEMO_FLUSH_INTERVAL_S + 1.5, lag
        await handle.terminate("test over")


async def _queried(handle: WorkflowHandle[Any, Any], step: str, state: str) -> bool:
    return await step_state(handle, step) == state


async def _memo_step(client: Client, run_id: str, step: str, state: str):  # type: ignore[no-untyped-def]
    status = await read_status(client, run_id)
    return status if status.step(step).state == state else None
