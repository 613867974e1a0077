"""`shipflow flow validate|schema|apply|list`: flow files, checked locally and applied to the API."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from shipflow.infra.cli.client import ApiError
from shipflow.infra.cli.common import (
    EXIT_BAD_INPUT,
    api_errors,
    cli_state,
    fail,
    out,
    read_file,
)
from shipflow.infra.cli.graph import dot, mermaid, plan_tree
from shipflow.infra.cli.render import fitting_columns, table_console
from shipflow.infra.cli.runs import examples
from shipflow.workflows.flowdiff import diff_flows
from shipflow.workflows.spec import FlowError, FlowSpec, flow_json_schema, load_flow_text
from shipflow.workflows.validation import Report, validate_text


class GraphFormat(StrEnum):
    tree = "tree"
    mermaid = "mermaid"
    dot = "dot"


app = typer.Typer(
    help="Flow files: validate, diff, graph, show the schema, apply to the API.",
    no_args_is_help=True,
)


def validate_file(path: Path) -> Report:
    """The one validation pass the API runs on apply, for a file on disk."""
    return validate_text(read_file(path), is_json=path.suffix.lower() == ".json")


@app.command(
    "validate",
    epilog=examples(
        "shipflow flow validate infra/flows/demo.yaml",
        "shipflow flow validate flows/*.yaml --json",
    ),
)
def flow_validate(
    files: list[Path] = typer.Argument(..., metavar="FILE...", help="flow files (YAML or JSON)"),
    as_json: bool = typer.Option(False, "--json", help="print the problems as JSON"),
) -> None:
    """Check flow files as `flow apply` will; print every problem at once.

    Each problem is one line, `FILE:LINE:COLUMN: PATH: what is wrong`, with a suggestion
    when a known name is close ("did you mean deploy?"). Exit 2 if any file has one.
    """
    reports = [(path, validate_file(path)) for path in files]
    if as_json:
        listing = [
            {
                "file": str(path),
                "ok": report.ok,
                "name": report.spec.name if report.spec else None,
                "steps": report.steps,
                "problems": [p.as_detail() for p in report.problems],
            }
            for path, report in reports
        ]
        typer.echo(json.dumps(listing, indent=2))
    bad = [(path, report) for path, report in reports if not report.ok]
    for path, report in reports:
        if as_json:
            break
        if report.spec is not None:
            typer.echo(f"ok: {report.spec.name} ({report.steps} steps)")
        for problem in report.problems:
            typer.echo(problem.render(str(path)))
    if bad:
        count = sum(len(report.problems) for _, report in bad)
        files_text = str(bad[0][0]) if len(bad) == 1 else f"{len(bad)} files"
        raise fail(
            f"{count} problem{'s' if count != 1 else ''} in {files_text}",
            EXIT_BAD_INPUT,
        )


@app.command(
    "schema",
    epilog=examples("shipflow flow schema > shipflow-flow.schema.json"),
)
def flow_schema() -> None:
    """Print the JSON Schema of flow files (for editors and linters)."""
    typer.echo(json.dumps(flow_json_schema(), indent=2))


@app.command("apply", epilog=examples("shipflow flow apply infra/flows/demo.yaml"))
def flow_apply(
    ctx: typer.Context, file: Path = typer.Argument(..., metavar="FILE", help="flow file")
) -> None:
    """Create or update a flow on the API (a new version when its text changed)."""
    state = cli_state(ctx)
    source = read_file(file)
    with api_errors(state, file=str(file)), state.client() as client:
        flow = client.apply_flow(source)
    name, version, stage = (escape(str(flow.get(k))) for k in ("name", "version", "stage"))
    if flow.get("created"):
        what = f"created [bold]{name}[/bold] version {version}"
    elif flow.get("changed") is False:
        what = f"unchanged [bold]{name}[/bold] version {version}"
    else:
        what = f"updated [bold]{name}[/bold] to version {version}"
    out.print(f"{what} (stage {stage})", highlight=False, soft_wrap=True)


def _valid_or_exit(path: Path) -> Report:
    """The file's report; print its problems and exit 2 if it has any."""
    report = validate_file(path)
    if report.spec is None or report.plan is None:
        for problem in report.problems:
            typer.echo(problem.render(str(path)))
        count = len(report.problems)
        raise fail(
            f"{path} is not a valid flow ({count} problem{'s' if count != 1 else ''})",
            EXIT_BAD_INPUT,
            f"see them all with `shipflow flow validate {path}`",
        )
    return report


@app.command(
    "diff",
    epilog=examples(
        "shipflow flow diff infra/flows/demo.yaml",
        "shipflow flow diff infra/flows/demo.yaml --json",
    ),
)
def flow_diff(
    ctx: typer.Context,
    file: Path = typer.Argument(..., metavar="FILE", help="flow file"),
    as_json: bool = typer.Option(False, "--json", help="print the changes as JSON"),
) -> None:
    """Show what `flow apply FILE` would change: steps, triggers, schedules, settings.

    Compares FILE with the version applied on the API (`+` added, `-` removed,
    `~` changed). Exit 0 whether or not there are changes.
    """
    report = _valid_or_exit(file)
    assert report.spec is not None
    state = cli_state(ctx)
    applied: FlowSpec | None = None
    version: int | None = None
    with api_errors(state), state.client() as client:
        try:
            current = client.get_flow(report.spec.name)
        except ApiError as e:
            if e.status_code != 404:
                raise
            current = None
    if current is not None:
        version = current.get("version")
        try:
            applied = load_flow_text(str(current.get("source", "")))
        except FlowError:
            applied = None  # stored under an older schema: everything shows as new
    diff = diff_flows(applied, report.spec, version)
    if as_json:
        body = {
            "flow": diff.flow,
            "applied_version": diff.applied_version,
            "changes": [c.as_json() for c in diff.changes],
        }
        typer.echo(json.dumps(body, indent=2))
        return
    if diff.unchanged:
        out.print(f"unchanged: {diff.flow} (version {version})", highlight=False, soft_wrap=True)
        return
    against = f"version {version}" if version is not None else "nothing applied yet"
    out.print(f"{diff.flow}: {file} against {against}", highlight=False, soft_wrap=True)
    styles = {"+": "green", "-": "red", "~": "yellow"}
    for change in diff.changes:
        out.print(
            Text(change.line(), style=styles.get(change.sign, "")), soft_wrap=True, highlight=False
        )


@app.command(
    "graph",
    epilog=examples(
        "shipflow flow graph infra/flows/demo.yaml",
        "shipflow flow graph infra/flows/demo.yaml --format mermaid > demo.mmd",
        "shipflow flow graph infra/flows/demo.yaml --format dot | dot -Tsvg > demo.svg",
    ),
)
def flow_graph(
    file: Path = typer.Argument(..., metavar="FILE", help="flow file"),
    format: GraphFormat = typer.Option(
        GraphFormat.tree, "--format", metavar="FORMAT", help="tree (terminal), mermaid or dot"
    ),
) -> None:
    """Draw the flow as a run executes it: groups, steps, defaults and undo links."""
    report = _valid_or_exit(file)
    assert report.plan is not None
    if format == GraphFormat.mermaid:
        typer.echo(mermaid(report.plan), nl=False)
    elif format == GraphFormat.dot:
        typer.echo(dot(report.plan), nl=False)
    else:
        out.print(plan_tree(report.plan))


@app.command("list", epilog=examples("shipflow flow list", "shipflow flow list --json"))
def flow_list(
    ctx: typer.Context,
    wide: bool = typer.Option(False, "--wide", help="every column, whatever the terminal width"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List the applied flows."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        flows = client.list_flows()
    if as_json:
        typer.echo(json.dumps(flows, indent=2, default=str))
        return
    rows = [
        {
            "name": str(flow.get("name", "")),
            "stage": str(flow.get("stage", "")),
            "version": str(flow.get("version", "")),
            "updated": str(flow.get("updated_at", ""))[:19].replace("T", " "),
        }
        for flow in flows
    ]
    columns = ("name", "stage", "version", "updated")
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    console = table_console(out, wide)
    # A flow name is what `run` and `diff` take: whole columns go first, never the name.
    kept = fitting_columns(widths, None if wide else console.width, ("updated", "version", "stage"))
    table = Table(header_style="bold")
    for column in kept:
        table.add_column(column, no_wrap=True, min_width=widths[column])
    for row in rows:
        table.add_row(*(row[c] for c in kept))
    console.print(table, soft_wrap=True)
