"""One release at a time per stage: queue, forbid, cancel-previous, under simultaneous starts,
across flows releasing into the same stage, and a holder that vanished."""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import read_status
from tests.helpers import finish, new_worker, start_flow, wait_until


def flow(name: str, stage: str, policy: str, steps: str) -> str:
    return f"apiVersion: shipflow/v1\nname: {name}\nstage: {stage}\nconcurrency: {policy}\nsteps:\n{steps}"


def logged(log: Path, step_id: str = "work") -> str:
    return (
        f"  - migrate: {{id: {step_id}, command: [sh, -c, 'echo start $SHIPFLOW_RUN_ID >> {log}; "
        f"sleep 0.2; echo end $SHIPFLOW_RUN_ID >> {log}']}}\n"
    )


async def test_queue_serialises_twenty_simultaneous_starts_across_flows(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    flows = [flow("qa", "shared", "queue", logged(log)), flow("qb", "shared", "queue", logged(log))]
    async with new_worker(temporal_client, settings):
        handles = await asyncio.gather(
            *(start_flow(temporal_client, settings, flows[i % 2]) for i in range(20))
        )
        # While they wait, runs show `queued` with their place in line.
        queued = await wait_until(
            lambda: _queued(temporal_client, [h.id for h in handles]), timeout=30
        )
        # Positions are pushed to each run as the line moves, so a snapshot may lag by one.
        assert all(1 <= p <= 19 for p in queued) and max(queued) >= 10
        statuses = await asyncio.gather(*(finish(h) for h in handles))
    assert all(s.state == "succeeded" for s in statuses)
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 40
    # Strictly one at a time: every start is followed by the end of the same run.
    for begin, end in zip(lines[0::2], lines[1::2], strict=True):
        assert begin.startswith("start ") and end == "end " + begin.removeprefix("start ")


async def _queued(client: Client, run_ids: list[str]) -> list[int] | None:
    statuses = await asyncio.gather(*(read_status(client, r) for r in run_ids))
    positions = [s.queue_position for s in statuses if s.state == "queued" and s.queue_position]
    return positions if len(positions) >= 10 else None


async def test_forbid_refuses_while_the_stage_is_busy(
    temporal_client: Client, settings: Settings
) -> None:
    holder_flow = flow("holder", "locked", "forbid", "  - wait: {id: soak, duration: 1h}\n")
    other_flow = flow("other", "locked", "forbid", "  - wait: {id: w, duration: 1s}\n")
    async with new_worker(temporal_client, settings):
        holder = await start_flow(temporal_client, settings, holder_flow)
        await wait_until(lambda: _state(temporal_client, holder.id, "running"))
        others = await asyncio.gather(
            *(start_flow(temporal_client, settings, other_flow) for _ in range(20))
        )
        refused = await asyncio.gather(*(finish(h) for h in others))
        assert {s.state for s in refused} == {"failed"}
        assert {s.blocked_by for s in refused} == {holder.id}
        assert f"busy with run {holder.id}" in (refused[0].error or "")
        assert all(
            step.state == "skipped" or step.state == "pending" for s in refused for step in s.steps
        )
        await holder.cancel()
        assert (await finish(holder)).state == "cancelled"
        # Once the stage is free, the next run goes through.
        after = await start_flow(temporal_client, settings, other_flow)
        assert (await finish(after)).state == "succeeded"


async def test_cancel_previous_compensates_the_running_one_first(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    first = flow(
        "prev",
        "hot",
        "cancel-previous",
        f"  - migrate: {{id: m, command: [sh, -c, 'echo do >> {log}'], undo: {{command: [sh, -c, 'echo undo >> {log}']}}}}\n"
        "  - wait: {id: soak, duration: 1h}\n",
    )
    second = flow(
        "next",
        "hot",
        "cancel-previous",
        f"  - migrate: {{id: n, command: [sh, -c, 'echo next >> {log}']}}\n",
    )
    async with new_worker(temporal_client, settings):
        old = await start_flow(temporal_client, settings, first)
        await wait_until(lambda: _step_running(temporal_client, old.id, "soak"))
        new = await start_flow(temporal_client, settings, second)
        new_status = await finish(new)
        old_status = await finish(old)
    assert old_status.state == "rolled_back"
    assert new_status.state == "succeeded"
    assert log.read_text().splitlines() == ["do", "undo", "next"]


async def test_a_terminated_holder_does_not_block_the_stage(
    temporal_client: Client, settings: Settings
) -> None:
    text = flow("gone", "orphaned", "queue", "  - wait: {id: soak, duration: 1h}\n")
    quick = flow("after", "orphaned", "queue", "  - wait: {id: w, duration: 100ms}\n")
    async with new_worker(temporal_client, settings):
        holder = await start_flow(temporal_client, settings, text)
        await wait_until(lambda: _state(temporal_client, holder.id, "running"))
        waiting = await start_flow(temporal_client, settings, quick)
        await wait_until(lambda: _state(temporal_client, waiting.id, "queued"))
        await holder.terminate("operator pulled the plug")
        status = await asyncio.wait_for(finish(waiting), timeout=60)
    assert status.state == "succeeded"


async def _state(client: Client, run_id: str, state: str) -> bool:
    return (await read_status(client, run_id)).state == state


async def _step_running(client: Client, run_id: str, step: str) -> bool:
    return (await read_status(client, run_id)).step(step).state == "running"


async def test_cancel_previous_under_twenty_simultaneous_starts(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    text = flow(
        "stampede", "busy", "cancel-previous", "  - wait: {id: soak, duration: 2s}\n" + logged(log)
    )
    async with new_worker(temporal_client, settings):
        handles = await asyncio.gather(
            *(start_flow(temporal_client, settings, text) for _ in range(20))
        )
        statuses = await asyncio.wait_for(
            asyncio.gather(*(finish(h) for h in handles)), timeout=120
        )
    states = [s.state.value for s in statuses]
    # Each newcomer supersedes the run before it. A start that reaches the lock only after
    # its predecessor finished (its request was retried) finds nothing to cancel and runs too:
    # so at least one run succeeds, every other was cancelled, and none ran side by side.
    assert "succeeded" in states and set(states) <= {"succeeded", "cancelled"}, states
    lines = log.read_text().split("\n")[:-1]
    for status in statuses:
        if status.state == "succeeded":
            at = lines.index(f"start {status.run_id}")
            assert lines[at + 1] == f"end {status.run_id}", lines  # nobody started in between
