"""ReleaseWorkflow on a real Temporal dev server with a real worker: every step kind built
in the engine, nesting, retries, parallel failure, compensation order, cancellation,
approvals, and status readable without a worker."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import read_status
from shipflow.workflows.release import ApproveInput, RejectInput, ReleaseWorkflow
from tests.helpers import (
    HttpSink,
    decoded_history_text,
    finish,
    free_port,
    new_worker,
    run_flow,
    start_flow,
    step_state,
    wait_until,
)

HEAD = "apiVersion: shipflow/v1\nname: {name}\nstage: test\n"


def flow(name: str, body: str) -> str:
    return HEAD.format(name=name) + body


async def test_every_engine_step_kind_in_nested_groups(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "migrated"
    with HttpSink() as sink:
        text = flow(
            "all-kinds",
            f"""
args: {{version: "v7"}}
steps:
  - migrate: {{id: migrate, command: [sh, -c, "echo migrating $SHIPFLOW_STEP_ID to $V > {marker}; echo done", x], env: {{V: "${{args.version}}"}}}}
  - parallel:
      - sequence:
          - wait: {{id: pause, duration: 200ms}}
          - check: {{id: smoke, http: {{url: "{sink.url}/healthz"}}, period: 100ms, success_threshold: 2}}
      - check: {{id: port, tcp: {{port: {sink.url.rsplit(":", 1)[1]}}}, period: 100ms}}
  - approve: {{id: go-live, timeout: 1m}}
  - notify: {{id: tell, webhook: "{sink.url}/hook", message: "released ${{args.version}} ({{exit=${{steps.migrate.exit_code}}}})"}}
""",
        )
        async with new_worker(temporal_client, settings):
            handle = await start_flow(temporal_client, settings, text)
            await wait_until(lambda: step_state(handle, "go-live"), timeout=30)
            await wait_until(lambda: _is(handle, "go-live", "waiting"), timeout=30)
            assert (await read_status(temporal_client, handle.id)).state == "waiting"
            await handle.execute_update(
                ReleaseWorkflow.approve, ApproveInput(step="go-live", comment="ship it", by="alice")
            )
            status = await finish(handle)
    assert status.state == "succeeded", status
    assert [s.state for s in status.steps] == ["succeeded"] * 6
    assert marker.read_text() == "migrating migrate to v7\n"
    assert status.step("migrate").output == {
        "exit_code": 0,
        "output": "done\n",
        "duration_s": status.step("migrate").output["duration_s"],
    }  # type: ignore[index]
    assert status.step("smoke").output["successes"] == 2  # type: ignore[index]
    assert (
        status.step("go-live").approval is not None
        and status.step("go-live").approval.by == "alice"
    )
    assert status.step("go-live").output["comment"] == "ship it"  # type: ignore[index]
    assert sink.received[-1]["body"]["message"] == "released v7 ({exit=0})"
    assert sink.received[-1]["body"]["run_id"] == handle.id
    smoke, pause = status.step("smoke"), status.step("pause")
    assert pause.ended_at and smoke.started_at and smoke.started_at >= pause.ended_at
    assert (
        status.step("smoke").parent == "steps[1]"
        or status.step("smoke").parent == "steps[1].parallel[0]"
    )
    assert all(s.started_at and s.ended_at for s in status.steps)


async def _is(handle, step: str, state: str) -> bool:  # type: ignore[no-untyped-def]
    return await step_state(handle, step) == state


async def test_retries_then_success(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    counter = tmp_path / "count"
    script = f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; echo "attempt $n"; [ $n -ge 3 ]'
    text = flow(
        "flaky", f"steps:\n  - migrate: {{id: flaky, command: [sh, -c, '{script}'], retries: 3}}\n"
    )
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    step = status.step("flaky")
    assert status.state == "succeeded"
    assert step.attempts == 3 and step.max_attempts == 4
    assert step.output is not None and step.output["output"] == "attempt 3\n"
    assert counter.read_text() == "3\n"


async def test_retries_exhausted(temporal_client: Client, settings: Settings) -> None:
    text = flow(
        "broken",
        "steps:\n  - migrate: {id: m, command: [sh, -c, 'echo no such table >&2; exit 4'], retries: 1}\n  - wait: {id: after, duration: 1s}\n",
    )
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    step = status.step("m")
    assert status.state == "failed"
    assert step.state == "failed" and step.attempts == 2
    assert step.error == "sh exited with code 4: no such table"
    assert step.output == {"exit_code": 4, "output": "no such table\n"}
    assert status.step("after").state == "skipped"
    assert status.failed_step == "m" and "step m failed" in (status.error or "")


async def test_missing_command_fails_without_retrying(
    temporal_client: Client, settings: Settings
) -> None:
    text = flow(
        "nocmd", "steps:\n  - migrate: {id: m, command: [no-such-binary-xyz, up], retries: 3}\n"
    )
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    assert status.step("m").attempts == 1
    assert status.step("m").error == "command not found: 'no-such-binary-xyz'"


async def test_step_timeout_kills_the_command(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    text = flow(
        "slow",
        f"steps:\n  - migrate: {{id: m, command: [sh, -c, 'echo $$ > {pidfile}; sleep 60'], timeout: 1500ms}}\n",
    )
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    assert status.state == "failed"
    assert "timed out" in (status.step("m").error or "")
    assert not _group_alive(int(pidfile.read_text()))


async def test_failing_branch_cancels_siblings_and_compensates_in_reverse(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    slow_pid = tmp_path / "slow.pid"

    def step(step_id: str, script: str) -> str:
        return (
            f"{{id: {step_id}, command: [sh, -c, '{script}'], "
            f"undo: {{command: [sh, -c, 'echo undo {step_id} >> {log}']}}}}"
        )

    text = flow(
        "saga",
        f"""
steps:
  - migrate: {step("first", f"echo do first >> {log}")}
  - parallel:
      - migrate: {step("quick", f"echo do quick >> {log}")}
      - migrate: {step("slow", f"echo $$ > {slow_pid}; sleep 60")}
      - sequence:
          - wait: {{id: settle, duration: 1s}}
          - migrate: {{id: boom, command: [sh, -c, 'exit 1']}}
  - migrate: {step("never", "true")}
""",
    )
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    states = {s.id: s.state.value for s in status.steps}
    assert states == {
        "first": "compensated",
        "quick": "compensated",
        "slow": "cancelled",
        "settle": "succeeded",
        "boom": "failed",
        "never": "skipped",
    }
    assert status.state == "rolled_back"
    # Compensations ran newest first; the cancelled sibling was never undone.
    assert log.read_text().splitlines() == ["do first", "do quick", "undo quick", "undo first"]
    assert not _group_alive(int(slow_pid.read_text()))
    assert (
        status.step("first").compensation is not None
        and status.step("first").compensation.attempts == 1
    )


async def test_failed_compensation_is_recorded_and_the_others_still_run(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    text = flow(
        "badundo",
        f"""
steps:
  - migrate: {{id: a, command: ["true"], undo: {{command: [sh, -c, 'echo undo a >> {log}']}}}}
  - migrate: {{id: b, command: ["true"], undo: {{command: [sh, -c, 'echo cannot undo b >&2; exit 9']}}}}
  - migrate: {{id: c, command: ["false"]}}
""",
    )
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    assert status.state == "rollback_failed"
    b = status.step("b")
    assert b.state == "compensation_failed"
    assert b.compensation is not None and b.compensation.attempts == 3
    assert b.compensation.error == "sh exited with code 9: cannot undo b"
    assert status.step("a").state == "compensated"
    assert log.read_text() == "undo a\n"


async def test_cancel_during_a_wait(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    text = flow(
        "cancelwait",
        f"steps:\n  - migrate: {{id: a, command: ['true'], undo: {{command: [sh, -c, 'echo undone >> {log}']}}}}\n"
        "  - wait: {id: soak, duration: 1h}\n",
    )
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, text)
        await wait_until(lambda: _is(handle, "soak", "running"))
        await handle.cancel()
        status = await finish(handle)
    assert status.step("soak").state == "cancelled"
    assert status.step("a").state == "compensated"
    assert status.state == "rolled_back"
    assert log.read_text() == "undone\n"


async def test_cancel_with_nothing_to_undo(temporal_client: Client, settings: Settings) -> None:
    text = flow("cancelplain", "steps:\n  - wait: {id: soak, duration: 1h}\n")
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, text)
        await wait_until(lambda: _is(handle, "soak", "running"))
        await handle.cancel()
        status = await finish(handle)
    assert status.state == "cancelled" and status.step("soak").state == "cancelled"


async def test_cancel_during_a_running_command_kills_its_process_group(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    child = tmp_path / "child"
    script = f"echo $$ > {pidfile}; sleep 120 & echo $! > {child}; wait"
    text = flow("cancelcmd", f"steps:\n  - migrate: {{id: m, command: [sh, -c, '{script}']}}\n")
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, text)
        await wait_until(lambda: child.exists() and child.read_text().strip())
        pgid = int(pidfile.read_text())
        assert _group_alive(pgid)
        await handle.cancel()
        status = await finish(handle)
    assert status.state == "cancelled"
    assert status.step("m").state == "cancelled"
    assert not _group_alive(pgid)
    assert not _pid_alive(int(child.read_text()))


async def test_approval_rejections_and_reject(temporal_client: Client, settings: Settings) -> None:
    text = flow(
        "gate",
        "steps:\n  - wait: {id: first, duration: 100ms}\n  - approve: {id: go, timeout: 10m}\n  - wait: {id: later, duration: 1s}\n",
    )
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, text)
        await wait_until(lambda: _is(handle, "go", "waiting"))
        for step, message in [
            ("nope", "unknown step 'nope'"),
            ("first", "'first' is a wait step, not an approval"),
        ]:
            with pytest.raises(WorkflowUpdateFailedError) as caught:
                await handle.execute_update(ReleaseWorkflow.approve, ApproveInput(step=step))
            assert message in str(caught.value.cause)
        await handle.execute_update(
            ReleaseWorkflow.reject, RejectInput(comment="not today", by="bob")
        )
        status = await finish(handle)
        with pytest.raises((WorkflowUpdateFailedError, RPCError)):
            await handle.execute_update(ReleaseWorkflow.approve, ApproveInput(step="go"))
    assert status.state == "failed"
    assert status.step("go").error == "rejected by bob: not today"
    assert status.step("later").state == "skipped"
    # Rejected updates never reached history: only the accepted reject did.
    history = await handle.fetch_history()
    accepted = [
        e
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert len(accepted) == 1


async def test_approval_not_waiting_is_rejected(
    temporal_client: Client, settings: Settings
) -> None:
    text = flow("early", "steps:\n  - wait: {id: first, duration: 1h}\n  - approve: {id: go}\n")
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, text)
        await wait_until(lambda: _is(handle, "first", "running"))
        with pytest.raises(WorkflowUpdateFailedError) as caught:
            await handle.execute_update(ReleaseWorkflow.approve, ApproveInput(step="go"))
        assert "step 'go' is not waiting for approval (it is pending)" in str(caught.value.cause)
        await handle.cancel()
        await finish(handle)


async def test_approval_times_out(temporal_client: Client, settings: Settings) -> None:
    text = flow("lapse", "steps:\n  - approve: {id: go, timeout: 1s}\n")
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    assert status.state == "failed" and status.step("go").error == "no approval within 1s"


async def test_check_fails_after_its_failure_threshold(
    temporal_client: Client, settings: Settings
) -> None:
    port = free_port()
    text = flow(
        "nohealth",
        f"steps:\n  - check: {{id: c, tcp: {{port: {port}}}, period: 100ms, failure_threshold: 3}}\n",
    )
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    error = status.step("c").error or ""
    assert status.state == "failed"
    assert error.startswith(f"tcp 127.0.0.1:{port} failed 3 times in a row")


async def test_notify_to_a_failing_webhook_retries_then_fails(
    temporal_client: Client, settings: Settings
) -> None:
    with HttpSink(status=503) as sink:
        text = flow(
            "hook",
            f"steps:\n  - notify: {{id: n, webhook: '{sink.url}/x', message: hi, retries: 1}}\n",
        )
        async with new_worker(temporal_client, settings):
            status = await run_flow(temporal_client, settings, text)
    assert status.step("n").attempts == 2
    assert status.step("n").error == "webhook 127.0.0.1 answered HTTP 503"
    assert len(sink.received) == 2


async def test_status_is_readable_from_the_memo_without_a_worker(
    temporal_client: Client, settings: Settings
) -> None:
    text = flow("memo", "steps:\n  - wait: {id: a, duration: 100ms}\n  - approve: {id: go}\n")
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, text)
        await wait_until(lambda: _is(handle, "go", "waiting"))
    # The worker is gone; the memo still tells the whole story.
    status = await wait_until(lambda: _memo_state(temporal_client, handle.id, "waiting"))
    assert status.step("a").state == "succeeded" and status.step("go").state == "waiting"
    await handle.terminate("test over")


async def _memo_state(client: Client, run_id: str, state: str):  # type: ignore[no-untyped-def]
    status = await read_status(client, run_id)
    return status if status.state == state else None


async def test_secrets_from_env_stay_out_of_history(
    temporal_client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPFLOW_TEST_SECRET", "hunter2-very-secret")
    text = flow(
        "secret",
        "steps:\n  - migrate: {id: m, command: [sh, -c, 'echo token=$T'], env: {T: '${env.SHIPFLOW_TEST_SECRET}'}}\n",
    )
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, text)
        status = await finish(handle)
    assert status.state == "succeeded"
    assert (
        status.step("m").output is not None and status.step("m").output["output"] == "token=***\n"
    )
    # Decrypted: the raw history is ciphertext, which would hide the secret either way.
    history = await decoded_history_text(temporal_client, handle.id)
    assert "token=***" in history and "hunter2" not in history


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_cancel_is_not_lost_when_the_running_step_completes_anyway(
    temporal_client: Client, settings: Settings
) -> None:
    """A cancel that reaches a step just as it succeeds still stops the run before its next step."""
    text = flow(
        "racecancel",
        "concurrency: allow\nsteps:\n  - migrate: {id: quick, command: ['true']}\n  - wait: {id: soak, duration: 1h}\n",
    )
    async with new_worker(temporal_client, settings):
        handles = [await start_flow(temporal_client, settings, text) for _ in range(8)]
        await asyncio.gather(*(h.cancel() for h in handles))
        statuses = await asyncio.wait_for(asyncio.gather(*(finish(h) for h in handles)), timeout=60)
    assert {s.state.value for s in statuses} <= {"cancelled", "rolled_back"}
    assert all(s.step("soak").state in ("skipped", "cancelled") for s in statuses)


async def test_approval_distinct_from_the_trigger(
    temporal_client: Client, settings: Settings
) -> None:
    text = flow("four-eyes", "steps:\n  - approve: {id: go, distinct_from_trigger: true}\n")
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, text, triggered_by="alice")
        await wait_until(lambda: _is(handle, "go", "waiting"))
        with pytest.raises(WorkflowUpdateFailedError) as caught:
            await handle.execute_update(
                ReleaseWorkflow.approve, ApproveInput(step="go", by="alice")
            )
        assert "must be approved by someone other than alice" in str(caught.value.cause)
        await handle.execute_update(ReleaseWorkflow.approve, ApproveInput(step="go", by="bob"))
        status = await finish(handle)
    assert status.state == "succeeded"
    approval = status.step("go").approval
    assert approval is not None and approval.by == "bob" and approval.at is not None
