"""Rich renderings of runs: the step tree `status` and `run --follow` show, and the runs table.

The tree is rebuilt from each step's `path` (`steps[2].parallel[1].deploy`), so nested
`parallel`/`sequence` groups show as they are written in the flow file without the
status having to carry the groups themselves.
"""

from __future__ import annotations

import json
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


def step_line(
    step: StepStatus,
    now: datetime | None = None,
    *,
    run_id: str | None = None,
    outputs: bool = False,
) -> Text:
    """One step: symbol, id, kind, state, attempts, duration, then error or what it waits for.

    With `run_id`, a waiting approval shows the exact command to approve it; with
    `outputs`, the step's output fields follow, one per line (long values cut).
    """
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
        line.append(f"  (shipflow approve {run_id or 'RUN'} {step.id})", style="magenta")
    if step.summary and step.summary != step.id:
        line.append(f"  {step.summary}", style="dim italic")
    if step.error:
        line.append(f"\n  error: {step.error}", style="red")
    if step.approval is not None:
        by = f" by {step.approval.by}" if step.approval.by else ""
        comment = f": {step.approval.comment}" if step.approval.comment else ""
        line.append(f"\n  {step.approval.decision}{by}{comment}", style="magenta")
    if outputs and step.output:
        for key, value in step.output.items():
            line.append(f"\n  {key}: ", style="dim")
            line.append(output_text(value))
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


#: An output value longer than this is cut (`shipflow status --json` has it whole).
OUTPUT_CHARS = 200


def output_text(value: Any) -> str:
    """One output value on one line: text as is, anything else as JSON; cut when long."""
    if value == "":
        return "(empty)"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= OUTPUT_CHARS else text[: OUTPUT_CHARS - 1] + "…"


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


def step_tree(status: RunStatus, now: datetime | None = None, *, outputs: bool = False) -> Tree:
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
        parent.add(step_line(step, now, run_id=status.run_id, outputs=outputs))
    return tree


def run_view(status: RunStatus, *, outputs: bool = False) -> RenderableType:
    """The tree plus the run's arguments and error: what `status` prints above the link."""
    parts: list[RenderableType] = [step_tree(status, outputs=outputs)]
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
#: Which columns go first when the terminal is narrow (the run id and state never go).
_DROP_ORDER = ("error", "ended", "stage", "started", "flow")
#: The widest console `--wide` (or output to a pipe with no COLUMNS) uses.
WIDE = 100_000


def table_console(console: Console, wide: bool) -> Console:
    """The console to print a table on: `console` itself, or one without a width limit."""
    if not wide:
        return console
    return Console(
        file=console.file,
        width=WIDE,
        color_system=console.color_system,  # type: ignore[arg-type]
        force_terminal=console.is_terminal,
        highlight=False,
    )


def fitting_columns(widths: dict[str, int], width: int | None, drop: tuple[str, ...]) -> list[str]:
    """The columns that fit in `width` whole, dropping those in `drop` order first.

    A table has 3 characters of border and padding per column, plus 1. The last column
    kept may be `error`, which is cut with an ellipsis rather than dropped while it can
    show 10 characters.
    """
    kept = list(widths)
    if width is None:
        return kept

    def needed(columns: list[str]) -> int:
        return sum(10 if c == "error" else widths[c] for c in columns) + 3 * len(columns) + 1

    for column in drop:
        if needed(kept) <= width:
            break
        kept.remove(column)
    return kept


def runs_table(runs: list[dict[str, Any]], width: int | None = 120) -> RenderableType:
    """The runs listing. Columns are read leniently: the index row or a full status.

    A run id is what the user copies into the next command: it is never cut. On a narrow
    terminal whole columns are left out (error, ended, stage, started, flow in that order)
    and the error is cut with an ellipsis; `width=None` shows every column in full.
    """
    rows: list[dict[str, str]] = []
    for run in runs:
        rows.append(
            {
                "run_id": str(run.get("run_id", "")),
                "flow": str(run.get("flow", "")),
                "stage": str(run.get("stage", "")),
                "state": str(run.get("state") or run.get("status") or ""),
                "started": _short_time(run.get("started_at") or run.get("created_at")),
                "ended": _short_time(run.get("ended_at")),
                "error": " ".join(str(run.get("error") or "").split()),
            }
        )
    widths = {c: max([len(c)] + [len(row[c]) for row in rows]) for c in RUN_COLUMNS}
    kept = fitting_columns(widths, width, _DROP_ORDER)
    fixed = sum(widths[c] for c in kept if c != "error") + 3 * len(kept) + 1
    if width is not None and fixed > width:
        # Not even the id and state fit in a table: one run a line, nothing cut.
        lines = Text()
        for index, row in enumerate(rows):
            lines.append(("\n" if index else "") + row["run_id"], style="bold")
            lines.append(f"  {row['state']}", style=_state_style(row["state"]))
        return lines
    table = Table(show_lines=False, header_style="bold")
    for column in kept:
        if column == "error":
            room = widths[column] if width is None else max(width - fixed, 10)
            table.add_column(column, overflow="ellipsis", no_wrap=True, max_width=room)
        else:
            table.add_column(column, no_wrap=True, min_width=widths[column])
    for row in rows:
        cells: list[str | Text] = []
        for column in kept:
            if column == "state":
                cells.append(Text(row[column], style=_state_style(row[column])))
            elif column == "error":
                cells.append(Text(row[column], style="red"))
            else:
                cells.append(row[column])
        table.add_row(*cells)
    return table


def _state_style(state: str) -> str:
    try:
        return RUN_STYLE.get(RunState(state), "")
    except ValueError:
        return ""


def _short_time(value: Any) -> str:
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return moment.strftime("%m-%d %H:%M:%S")
