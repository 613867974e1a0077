"""What `shipflow status RUN` adds under the run's tree: what the run waits for, and how to
move it on.

A queued run: its place in the stage's queue and the run that holds the stage (from the
runs index). A waiting approval: since when, its deadline (the step's timeout from the
run's plan) and the exact commands to approve or reject it, with the real run id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rich.text import Text

from shipflow.infra.cli.render import duration_text
from shipflow.workflows.status import RunState, RunStatus, StepState

#: Run states that hold a stage (a queued run waits for them).
HOLDING = {RunState.PENDING.value, RunState.RUNNING.value, RunState.WAITING.value}


def holders(status: RunStatus, stage_runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The other runs of the stage that hold it now (the index's newest runs of the stage)."""
    return [r for r in stage_runs if r.get("run_id") != status.run_id and r.get("state") in HOLDING]


def queued_lines(status: RunStatus, stage_runs: list[dict[str, Any]]) -> list[Text]:
    """Where a queued run stands and whom it waits for."""
    if status.state != RunState.QUEUED:
        return []
    position = status.queue_position
    head = Text("queued", style="yellow")
    head.append(
        f": position {position} in the queue of stage {status.stage}"
        if position
        else f" for stage {status.stage}",
        style="",
    )
    if position and position > 1:
        head.append(f" ({position - 1} queued run(s) ahead)", style="dim")
    lines = [head]
    holding = holders(status, stage_runs)
    if holding:
        for run in holding:
            lines.append(
                Text(
                    f"  waits for: run {run['run_id']} ({run.get('state')}, flow {run.get('flow')}) "
                    "to end",
                )
            )
    elif status.blocked_by:
        lines.append(Text(f"  waits for: run {status.blocked_by} to end"))
    else:
        lines.append(Text("  waits for: the stage's lock (the run ahead is ending)", style="dim"))
    lines.append(Text(f"  give up its place: shipflow cancel {status.run_id}", style="dim"))
    return lines


def approval_lines(
    status: RunStatus, plan_steps: dict[str, dict[str, Any]], now: datetime | None = None
) -> list[Text]:
    """Each waiting approval: since when, its deadline, and the commands to decide it."""
    now = now or datetime.now(UTC)
    out: list[Text] = []
    for step in status.steps:
        if step.kind != "approve" or step.state != StepState.WAITING:
            continue
        line = Text("waiting for approval", style="magenta")
        line.append(f": {step.id}")
        if step.started_at is not None:
            line.append(f", since {step.started_at:%Y-%m-%d %H:%M:%S %Z}".rstrip(), style="dim")
        timeout = (plan_steps.get(step.id) or {}).get("timeout_s")
        if step.started_at is not None and isinstance(timeout, int | float):
            deadline = step.started_at + timedelta(seconds=float(timeout))
            line.append(f"\n  deadline: {deadline:%Y-%m-%d %H:%M:%S %Z}".rstrip())
            left = f" (in {duration_text(now, deadline)})" if deadline > now else " (passed)"
            line.append(left, style="dim")
            line.append(
                "; without a decision by then the step fails and the run compensates", style="dim"
            )
        else:
            line.append("\n  deadline: none (the step waits until decided)", style="dim")
        line.append(f"\n  approve: shipflow approve {status.run_id} {step.id} -m 'why'")
        line.append(f"\n  reject:  shipflow reject {status.run_id} {step.id} -m 'why'")
        out.append(line)
    return out
