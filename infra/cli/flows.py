"""`shipflow flow validate|schema|apply|list`: flow files, checked locally and applied to the API."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from shipflow.infra.cli.common import EXIT_BAD_INPUT, api_errors, cli_state, out, read_file
from shipflow.infra.cli.render import table_console
from shipflow.infra.cli.runs import examples
from shipflow.workflows.spec import FlowError, flow_json_schema, load_flow_text

app = typer.Typer(
    help="Flow files: validate, show the schema, apply to the API.", no_args_is_help=True
)


def check_flow_text(text: str) -> tuple[str, int]:
    """Validate a flow file fully, as the API will: shape, then ids and references.

    Arguments without a default get placeholders, so that only the problems of the file
    itself are reported (a run must still give those arguments).

    Returns:
        The flow's name and its number of (action) steps.

    Raises:
        FlowError: every problem, each as `(path, message)`.
    """
    from shipflow.workflows.plan import compile
    from shipflow.workflows.spec import literal_secret_problems

    spec = load_flow_text(text)
    placeholders = {name: f"<{name}>" for name, arg in spec.args.items() if arg.default is None}
    secrets = literal_secret_problems(spec)
    try:
        plan = compile(spec, placeholders, placeholders=placeholders)
    except FlowError as e:
        raise FlowError(secrets + e.problems) from None
    if secrets:
        raise FlowError(secrets)
    return spec.name, sum(1 for _ in plan.actions())


@app.command("validate", epilog=examples("shipflow flow validate infra/flows/demo.yaml"))
def flow_validate(
    file: Path = typer.Argument(..., metavar="FILE", help="flow file (YAML or JSON)"),
) -> None:
    """Check a flow file; print every problem as `path: message`."""
    try:
        name, steps = check_flow_text(read_file(file))
    except FlowError as e:
        for path, message in e.problems:
            typer.echo(f"{path}: {message}" if path else message)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    typer.echo(f"ok: {name} ({steps} steps)")


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
    with api_errors(state), state.client() as client:
        flow = client.apply_flow(source)
    out.print(
        f"applied [bold]{escape(str(flow.get('name')))}[/bold] version {flow.get('version')} "
        f"(stage {escape(str(flow.get('stage')))})",
        highlight=False,
    )


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
    table = Table(header_style="bold")
    for column in ("name", "stage", "version", "updated"):
        table.add_column(column, no_wrap=True, overflow="fold")
    for flow in flows:
        table.add_row(
            str(flow.get("name", "")),
            str(flow.get("stage", "")),
            str(flow.get("version", "")),
            str(flow.get("updated_at", ""))[:19],
        )
    table_console(out, wide).print(table)
