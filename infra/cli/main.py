"""`shipflow`: the command line. This module only assembles the command groups.

Each group lives in its own module: `flows` (flow files), `runs` (runs through the API),
`backup` (backups in S3 or on disk), `processes` (dev, demo, worker, api, runtime).
What they share (consoles, the API address, errors, exit codes) is in `common`.

Exit codes (part of the contract): 0 success; 1 a run that did not succeed, an
unreachable API or a server error; 2 bad input (an invalid flow file, a bad argument,
any 4xx answer of the API); 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import typer

from shipflow.activities.core.settings import get_settings
from shipflow.infra.cli import flows, helpfmt, processes, runs
from shipflow.infra.cli.backup import app as backup_app
from shipflow.infra.cli.common import CliState
from shipflow.infra.cli.groups import app as group_app
from shipflow.infra.cli.processes import endpoints_table
from shipflow.infra.cli.runs import follow_run, parse_args

__all__ = ["app", "endpoints_table", "follow_run", "main", "parse_args"]

EPILOG = (
    "Exit codes: 0 success; 1 a run that did not succeed, an unreachable API or a server "
    "error; 2 bad input (invalid flow, bad argument, a 4xx answer); 130 interrupted (Ctrl-C)."
)

helpfmt.install()

app = typer.Typer(
    name="shipflow",
    help="Release flows on Temporal: durable, inspectable, reversible.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    api: str | None = typer.Option(
        None,
        "--api",
        envvar="SHIPFLOW_API",
        metavar="URL",
        help="API address, e.g. http://127.0.0.1:8000 (a bare host:port means http)",
        show_default=False,
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="SHIPFLOW_TOKEN",
        metavar="TOKEN",
        help="Bearer token for the API (`shipflow dev` prints one)",
        show_default=False,
    ),
) -> None:
    settings = get_settings()
    if token is None and settings.api_token is not None:
        token = settings.api_token.get_secret_value()
    ctx.obj = CliState(api or settings.api_url, token)


app.add_typer(flows.app, name="flow")
runs.register(app)
app.add_typer(backup_app, name="backup")
app.add_typer(group_app, name="group")
processes.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
