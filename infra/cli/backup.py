"""`shipflow backup list|restore`: the backups a flow's `backup` steps wrote, and restoring one by hand.

These commands talk to S3 and the database directly (not through Temporal): they are
what an operator reaches for when the orchestrator itself is the thing being repaired.
The restore is the same verified restore the `undo: {restore}` compensation runs.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from temporalio.exceptions import ApplicationError

from shipflow.activities.backup import list_backups, open_store, restore_backup
from shipflow.activities.core.settings import get_settings
from shipflow.activities.dbdump import DumpError, parse_database
from shipflow.activities.envrefs import resolve_env
from shipflow.activities.s3 import S3Factory

app = typer.Typer(
    help="Database backups in S3 or under file://: list them, restore one.", no_args_is_help=True
)

_out = Console()
_err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def _flow_backup_targets(flow: str) -> list[str]:
    """The `to:` of every backup step of the applied flow `flow` (from the API database)."""
    from sqlmodel import Session

    from shipflow.activities.core.db import make_engine
    from shipflow.activities.core.tables import Flow

    engine = make_engine(get_settings().sqlalchemy_url())
    with Session(engine) as session:
        row = session.get(Flow, flow)
        spec = dict(row.spec) if row is not None else None
    engine.dispose()
    if spec is None:
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            backup = node.get("backup")
            if isinstance(backup, dict) and isinstance(backup.get("to"), str):
                found.append(backup["to"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec.get("steps", []))
    return list(dict.fromkeys(found))


@app.command("list")
def list_command(
    flow: str = typer.Option(..., "--flow", help="flow name"),
    bucket: str | None = typer.Option(
        None,
        "--bucket",
        help="s3://bucket/prefix/ or file:///dir/ the flow backs up to "
        "(default: read from the applied flow)",
    ),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="S3 endpoint URL (default: SHIPFLOW_S3_ENDPOINT, else AWS)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Show the complete backups of FLOW, newest first."""
    targets = [bucket] if bucket else _flow_backup_targets(flow)
    if not targets:
        raise _fail(
            f"flow {flow!r} has no backup step in the API database: give --bucket s3://… or file:///…"
        )
    factory = S3Factory(get_settings())
    rows = []
    try:
        for target in targets:
            store, prefix = open_store(resolve_env(target), factory, endpoint)
            rows += list_backups(store, prefix, flow)
    except ApplicationError as e:
        raise _fail(str(e)) from None
    rows.sort(key=lambda m: m.created_at, reverse=True)
    if as_json:
        typer.echo(json.dumps([m.model_dump(mode="json") for m in rows], indent=2))
        return
    if not rows:
        _out.print(f"no backups of flow {flow}")
        return
    table = Table("created (UTC)", "url", "size", "database", "run", "step")
    for m in rows:
        table.add_row(
            m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            m.url,
            f"{m.size:,}",
            m.database,
            m.run_id,
            m.step_id,
        )
    _out.print(table)


@app.command("restore")
def restore_command(
    key: str = typer.Argument(
        ..., help="s3://bucket/key or file:///path/to/dump, or a key inside --bucket"
    ),
    to: str = typer.Option(..., "--to", help="database URL to restore into (${env.X} allowed)"),
    bucket: str | None = typer.Option(None, "--bucket", help="s3://bucket when KEY is a bare key"),
    endpoint: str | None = typer.Option(None, "--endpoint", help="S3 endpoint URL"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    drop_owners: bool = typer.Option(
        False,
        "--drop-owners",
        help="PostgreSQL: give every object to the restoring user and restore no grants "
        "(default: owners and grants as in the backup; their roles must exist)",
    ),
) -> None:
    """Verify backup KEY against its manifest, then restore it into --to (replacing its data)."""
    if key.startswith(("s3://", "file://")):
        url = key
    elif bucket and bucket.startswith("s3://"):
        # A key is the whole path inside the bucket (what `backup list` shows).
        url = f"s3://{bucket[len('s3://') :].split('/', 1)[0]}/{key.lstrip('/')}"
    elif bucket:
        raise _fail("--bucket takes s3://bucket; give a file:// backup as file:///path/to/dump", 2)
    else:
        raise _fail("KEY is not an s3:// or file:// URL: give --bucket s3://bucket", 2)
    try:
        db = parse_database(resolve_env(to))
    except (DumpError, ApplicationError) as e:
        raise _fail(str(e)) from None
    if not yes:
        typer.confirm(f"Replace the data of {db.display} with {url}?", abort=True)
    try:
        store, inner = open_store(url, S3Factory(get_settings()), endpoint)
        result = restore_backup(
            store,
            inner,
            db,
            size=None,
            sha256=None,
            beat=lambda _d: None,
            owners="drop" if drop_owners else "keep",
        )
    except (DumpError, ApplicationError) as e:
        raise _fail(str(e)) from None
    _out.print(
        f"restored {url} ({result.size:,} bytes, verified) into {db.display} "
        f"in {result.duration_s:.1f}s",
        highlight=False,
    )
