"""`shipflow backup list|restore`: the backups a flow's `backup` steps wrote, and restoring one by hand.

`list` asks the API by default (it reads where the flow's backup steps write, with the
worker's settings), or reads a bucket directly with `--bucket`. `restore` talks to the
store and the database directly (not through Temporal): it is what an operator reaches
for when the orchestrator itself is the thing being repaired.
The restore is the same verified restore the `undo: {restore}` compensation runs.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from botocore.exceptions import NoCredentialsError
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text
from temporalio.exceptions import ApplicationError

from shipflow.activities.backup.catalog import list_backups, open_store
from shipflow.activities.backup.restore import restore_backup
from shipflow.activities.core.settings import get_settings
from shipflow.activities.dbdump.database import DumpError, parse_database
from shipflow.activities.envrefs import resolve_env
from shipflow.activities.s3 import S3Factory
from shipflow.infra.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, api_errors, cli_state, fail
from shipflow.infra.cli.render import fitting_columns, table_console
from shipflow.infra.cli.runs import examples

app = typer.Typer(
    help="Database backups in S3 or under file://: list them, restore one.", no_args_is_help=True
)

_out = Console()


BACKUP_COLUMNS = ("created (UTC)", "url", "size", "database", "run", "step")
_DROP_ORDER = ("database", "run", "step", "size")


def _rows(manifests: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for m in manifests:
        created = str(m.get("created_at", ""))[:19].replace("T", " ")
        rows.append(
            {
                "created (UTC)": created,
                "url": str(m.get("url", "")),
                "size": f"{int(m.get('size') or 0):,}",
                "database": str(m.get("database", "")),
                "run": str(m.get("run_id", "")),
                "step": str(m.get("step_id", "")),
            }
        )
    return rows


def backups_table(manifests: list[dict[str, Any]], width: int | None) -> RenderableType:
    """The backups; a URL (what `backup restore` takes) is never cut: columns go instead."""
    rows = _rows(manifests)
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in BACKUP_COLUMNS}
    kept = fitting_columns({c: widths[c] for c in BACKUP_COLUMNS}, width, _DROP_ORDER)
    if width is not None and sum(widths[c] for c in kept) + 3 * len(kept) + 1 > width:
        return Text("\n".join(f"{r['created (UTC)']}  {r['url']}" for r in rows))
    table = Table(header_style="bold")
    for column in kept:
        table.add_column(column, no_wrap=True, min_width=widths[column])
    for row in rows:
        table.add_row(*(row[c] for c in kept))
    return table


@app.command(
    "list",
    epilog=examples(
        "shipflow backup list --flow demo",
        "shipflow backup list --flow demo --json",
        "shipflow backup list --flow web --bucket s3://backups/web/ --endpoint http://minio:9000",
    ),
)
def list_command(
    ctx: typer.Context,
    flow: str = typer.Option(..., "--flow", metavar="FLOW", help="flow name"),
    bucket: str | None = typer.Option(
        None,
        "--bucket",
        metavar="URL",
        help="read s3://bucket/prefix/ or file:///dir/ directly, with this machine's AWS "
        "settings (default: ask the API, which reads where the flow's backup steps write)",
    ),
    endpoint: str | None = typer.Option(
        None,
        "--endpoint",
        metavar="URL",
        help="with --bucket: S3 endpoint URL (default: SHIPFLOW_S3_ENDPOINT, else AWS)",
    ),
    wide: bool = typer.Option(False, "--wide", help="every column, whatever the terminal width"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Show the complete backups of FLOW, newest first.

    By default the API lists them (it has the worker's settings: S3 endpoint, credentials,
    data directory), so this needs nothing but the API address.
    """
    if bucket:
        manifests = _list_directly(flow, bucket, endpoint)
    else:
        state = cli_state(ctx)
        with api_errors(state), state.client() as client:
            manifests = client.list_backups(flow)
    if as_json:
        typer.echo(json.dumps(manifests, indent=2))
        return
    if not manifests:
        _out.print(f"no backups of flow {flow} yet", highlight=False)
        return
    console = table_console(_out, wide)
    # A URL wider than the terminal is printed whole (soft wrap): it is copied, not read.
    console.print(backups_table(manifests, None if wide else console.width), soft_wrap=True)


def _list_directly(flow: str, bucket: str, endpoint: str | None) -> list[dict[str, Any]]:
    factory = S3Factory(get_settings())
    try:
        store, prefix = open_store(resolve_env(bucket), factory, endpoint)
        rows = list_backups(store, prefix, flow)
    except (ApplicationError, NoCredentialsError) as e:
        message = e.message if isinstance(e, ApplicationError) else str(e)
        if isinstance(e, NoCredentialsError) or "Unable to locate credentials" in message:
            raise fail(
                f"cannot read {bucket}: there are no AWS credentials on this machine",
                EXIT_FAILED,
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or leave out "
                "--bucket to let the API list the backups",
            ) from None
        raise fail(message, EXIT_FAILED) from None
    rows.sort(key=lambda m: m.created_at, reverse=True)
    return [m.model_dump(mode="json") for m in rows]


@app.command(
    "restore",
    epilog=examples(
        "shipflow backup restore file:///srv/.shipflow/backups/demo/KEY.dump "
        "--to sqlite:///srv/.shipflow/demo.db",
        "shipflow backup restore s3://backups/web/KEY.dump --to '${env.DATABASE_URL}' --yes",
    ),
)
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
        raise fail(
            "--bucket takes s3://bucket",
            EXIT_BAD_INPUT,
            "give a file:// backup as file:///path/to/dump, as `shipflow backup list` shows it",
        )
    else:
        raise fail(
            f"{key!r} is not an s3:// or file:// URL",
            EXIT_BAD_INPUT,
            "give the URL `shipflow backup list --flow FLOW` shows, or --bucket s3://bucket",
        )
    try:
        db = parse_database(resolve_env(to))
    except (DumpError, ApplicationError) as e:
        raise fail(str(e), EXIT_FAILED) from None
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
        raise fail(str(e), EXIT_FAILED) from None
    _out.print(
        f"restored {url} ({result.size:,} bytes, verified) into {db.display} "
        f"in {result.duration_s:.1f}s",
        highlight=False,
        soft_wrap=True,  # the URL stays whole, as `backup list` shows it
    )
