"""What every command module of the CLI shares: consoles, the API address, errors, exit codes.

Exit codes are part of the contract, so scripts and CI can rely on them:
0 success; 1 a run that did not succeed, an unreachable API or a server error;
2 bad input (an invalid flow file, a bad argument, any 4xx answer of the API);
130 interrupted with Ctrl-C (e.g. while following a run, which goes on).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from shipflow.activities.core.settings import get_settings
from shipflow.infra.cli.client import ApiClient, ApiError, ApiUnreachable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

out = Console()
err = Console(stderr=True)


def api_base_url(value: str) -> str:
    """`127.0.0.1:8000` -> `http://127.0.0.1:8000`: an address without a scheme is plain HTTP."""
    text = value.strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    return text


@dataclass
class CliState:
    api: str
    token: str | None

    def client(self) -> ApiClient:
        return ApiClient(api_base_url(self.api), self.token)


def cli_state(ctx: typer.Context) -> CliState:
    state = ctx.find_root().obj
    if not isinstance(state, CliState):  # a sub-app invoked on its own
        settings = get_settings()
        token = settings.api_token.get_secret_value() if settings.api_token else None
        state = CliState(settings.api_url, token)
    return state


def print_error(message: str, hint: str | None = None) -> None:
    """`error: ...` on stderr, and `hint: ...` below it when there is something to do."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"hint: {escape(hint)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int, hint: str | None = None) -> typer.Exit:
    """Print the error (and hint); return the Exit to raise."""
    print_error(message, hint)
    return typer.Exit(code)


@contextmanager
def api_errors(state: CliState, *, file: str | None = None) -> Iterator[None]:
    """Map API failures to messages and exit codes: 4xx -> 2, 5xx and no answer -> 1.

    With `file` (a flow file sent to the API), problems that carry a line are printed as
    `FILE:LINE:COLUMN: PATH: message`, exactly as `shipflow flow validate` prints them.
    """
    try:
        yield
    except ApiError as e:
        placed = [item for item in e.items if item.get("line") is not None]
        if file is not None and placed and e.status_code == 422:
            for item in e.items:
                typer.echo(_flow_problem(file, item))
            count = len(e.items)
            print_error(f"the API refused {file}: {count} problem{'s' if count != 1 else ''}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        problems = e.problems or [("", f"HTTP {e.status_code}")]
        for path, message in problems:
            print_error(f"{path}: {message}" if path else message)
        if e.status_code == 401:
            err.print(
                "hint: give a token with --token or the SHIPFLOW_TOKEN environment variable "
                "(`shipflow dev` prints one)",
                highlight=False,
                soft_wrap=True,
            )
        elif e.status_code == 403:
            err.print(
                "hint: this needs a token with a higher role (viewer < operator < admin)",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(EXIT_BAD_INPUT if e.is_client_error else EXIT_FAILED) from None
    except ApiUnreachable as e:
        print_error(
            str(e),
            f"is the API running at {e.url}? Start the local stack with `shipflow dev`, or set "
            "--api / SHIPFLOW_API to the API's address",
        )
        raise typer.Exit(EXIT_FAILED) from None


def _flow_problem(file: str, item: dict[str, Any]) -> str:
    where = ":".join(str(p) for p in (file, item.get("line"), item.get("column")) if p is not None)
    path, message = str(item.get("loc") or ""), str(item.get("msg", ""))
    if path.startswith("line "):  # a syntax error: its position is already in `where`
        path = ""
    text = f"{path}: {message}" if path else message
    if item.get("suggestion"):
        text += f"; did you mean {item['suggestion']}?"
    return f"{where}: {text}"


def read_file(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise fail(f"cannot read {path}: it is not UTF-8 text", EXIT_BAD_INPUT) from None
    except OSError as e:
        raise fail(f"cannot read {path}: {e.strerror or e}", EXIT_BAD_INPUT) from None
