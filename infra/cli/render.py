"""Rich renderings of runs: the step tree `status` and `run --follow` show, and the runs table.

The tree is rebuilt from each step's `path` (`steps[2].parallel[1].deploy`), so nested
`parallel`/`sequence` groups show as they are written in the flow file without the
status having to carry the groups themselves.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from shipflow.workflows.status import RunState, RunStatus, StepState, StepStatus

STEP_STYLE: dict[StepState, tuple[str, str]] = {
    StepState.PENDING: ("·", "dim"),
    StepState.RUNNING: ("▶", "cyan"),
    StepState.RETRYING: ("↻", "yellow"),
    StepState.WAITING: ("⏸", "magenta"),
    StepState.SUCCEEDED: ("✔", "green"),
    StepState.FAILED: ("✘", "red"),
    StepState.CANCELLED: ("■", "yellow"),
    StepState.SKIPPED: ("-", "dim"),
    StepState.COMPENSATING: ("↺", "yellow"),
    StepState.COMPENSATED: ("↺", "blue"),
    StepState.COMPENSATION_FAILED: ("✘", "bold red"),
}

RUN_STYLE: dict[RunState, str] = {
    RunState.QUEUED: "dim",
    RunState.PENDING: "dim",
    RunState.RUNNING: "cyan",
    RunState.WAITING: "magenta",
    RunState.SUCCEEDED: "bold green",
    RunState.FAILED: "bold red",
    RunState.CANCELLED: "bold yellow",
    RunState.ROLLED_BACK: "bold blue",
    RunState.ROLLBACK_FAILED: "bold red",
}

_SEGMENT = re.compile(r"^([A-Za-z_]+)(?:\[(\d+)\])?$")


def duration_text(start: datetime | None, end: datetime | None, now: datetime | None = None) -> str:
    """`850ms`, `12.3s`, `4m05s`, `1h02m`; a running step counts up to `now`."""
    if start is None:
        return ""
    stop = end or now or datetime.now(UTC)
    seconds = max((stop - start).total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def step_line(step: StepStatus, now: datetime | None = None) -> Text:
    """One step: symbol, id, kind, state, attempts, duration, then error or what it waits for."""
    symbol, style = STEP_STYLE.get(step.state, ("?", ""))
    line = Text()
    line.append(f"{symbol} ", style=style)
    line.append(step.id, style="bold")
    line.append(f" {step.kind}", style="dim")
    line.append(f"  {step.state.value}", style=style)
    if step.attempts > 0 and (step.attempts > 1 or step.max_attempts > 1):
        line.append(f"  attempt {step.attempts}/{step.max_attempts}", style="dim")
    elapsed = duration_text(step.started_at, step.ended_at, now)
    if elapsed:
        line.append(f"  {elapsed}", style="dim")
    if step.state == StepState.RETRYING and step.next_attempt_at is not None:
        line.append(f"  next attempt at {step.next_attempt_at:%H:%M:%S}", style="yellow")
    if step.state == StepState.WAITING:
        line.append(f"  (shipflow approve RUN {step.id})", style="magenta")
    if step.summary and step.summary != step.id:
        line.append(f"  {step.summary}", style="dim italic")
    if step.error:
        line.append(f"\n  error: {step.error}", style="red")
    if step.approval is not None:
        by = f" by {step.approval.by}" if step.approval.by else ""
        comment = f": {step.approval.comment}" if step.approval.comment else ""
        line.append(f"\n  {step.approval.decision}{by}{comment}", style="magenta")
    comp = step.compensation
    if comp is not None:
        comp_style = "red" if comp.error else "blue"
        line.append(f"\n  undo ({comp.kind})", style=comp_style)
        if comp.attempts:
            line.append(f" attempt {comp.attempts}", style="dim")
        took = duration_text(comp.started_at, comp.ended_at, now)
        if took:
            line.append(f" {took}", style="dim")
        if comp.error:
            line.append(f": {comp.error}", style="red")
    return line


def _groups(path: str) -> list[tuple[str, str]]:
    """The enclosing groups of a step path, outermost first, as (group id, kind).

    `steps[2].parallel[1].sequence[0].migrate` -> `[("steps[2]", "parallel"),
    ("steps[2].parallel[1]", "sequence")]`: the same ids the Plan gives its groups.
    """
    segments = path.split(".")
    out: list[tuple[str, str]] = []
    for k in range(1, len(segments) - 1):
        match = _SEGMENT.match(segments[k])
        kind = match.group(1) if match else segments[k]
        out.append((".".join(segments[:k]), kind))
    return out


def run_title(status: RunStatus) -> Text:
    title = Text()
    title.append(status.run_id, style="bold")
    title.append(f"  {status.flow} → {status.stage}", style="dim")
    title.append(f"  {status.state.value}", style=RUN_STYLE.get(status.state, ""))
    elapsed = duration_text(status.started_at, status.ended_at)
    if elapsed:
        title.append(f"  {elapsed}", style="dim")
    return title


def step_tree(status: RunStatus, now: datetime | None = None) -> Tree:
    """The run as a tree: groups as branches, steps as leaves, in flow order."""
    tree = Tree(run_title(status), guide_style="dim")
    branches: dict[str, Tree] = {}
    for step in status.steps:
        parent = tree
        for group_id, kind in _groups(step.path):
            branch = branches.get(group_id)
            if branch is None:
                branch = parent.add(Text(kind, style="bold dim"))
                branches[group_id] = branch
            parent = branch
        parent.add(step_line(step, now))
    return tree


def run_view(status: RunStatus) -> RenderableType:
    """The tree plus the run's arguments and error: what `status` prints above the link."""
    parts: list[RenderableType] = [step_tree(status)]
    if status.args:
        args = ", ".join(f"{k}={v}" for k, v in sorted(status.args.items()))
        parts.append(Text(f"args: {args}", style="dim"))
    if status.error and status.state != RunState.SUCCEEDED:
        parts.append(Text(f"error: {status.error}", style="red"))
    return Group(*parts)


def print_link(console: Console, ui_url: str | None) -> None:
    """The Web UI link on a line of its own, never wrapped nor cut, so it stays clickable."""
    if ui_url:
        console.print(f"Temporal UI: {ui_url}", style="dim", highlight=False, soft_wrap=True)


RUN_COLUMNS = ("run_id", "flow", "stage", "state", "started", "ended", "error")


def runs_table(runs: list[dict[str, Any]], width: int = 120) -> Table:
    """The runs listing. Columns are read leniently: the index row or a full status.

    Every column but `error` keeps its full width (a run id is what the user copies into
    the next command); the error gets what is left, cut with an ellipsis.
    """
    rows: list[list[str]] = []
    for run in runs:
        rows.append(
            [
                str(run.get("run_id", "")),
                str(run.get("flow", "")),
                str(run.get("stage", "")),
                str(run.get("state") or run.get("status") or ""),
                _short_time(run.get("started_at") or run.get("created_at")),
                _short_time(run.get("ended_at")),
                " ".join(str(run.get("error") or "").split()),
            ]
        )
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(RUN_COLUMNS)]
    # Borders and padding take 3 characters per column, plus 1.
    room = width - sum(widths[:-1]) - 3 * len(RUN_COLUMNS) - 1
    with_error = room >= 10  # on a narrow terminal the error column is left out
    table = Table(show_lines=False, header_style="bold")
    for index, column in enumerate(RUN_COLUMNS):
        if column != "error":
            table.add_column(column, no_wrap=True, width=widths[index])
        elif with_error:
            table.add_column(column, overflow="ellipsis", no_wrap=True, width=room)
    for row in rows:
        try:
            style = RUN_STYLE.get(RunState(row[3]), "")
        except ValueError:
            style = ""
        cells: list[str | Text] = [*row[:3], Text(row[3], style=style), *row[4:6]]
        if with_error:
            cells.append(Text(row[6], style="red"))
        table.add_row(*cells)
    return table


def _short_time(value: Any) -> str:
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return moment.strftime("%m-%d %H:%M:%S")
