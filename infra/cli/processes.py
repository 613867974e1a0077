"""`shipflow dev|demo|worker|api|runtime`: the processes, started from the command line."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import typer
from rich.markup import escape
from rich.table import Table

from shipflow.activities.core.settings import get_settings
from shipflow.infra.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    err,
    fail,
    out,
    print_error,
)

if TYPE_CHECKING:
    from shipflow.infra.demo_driver import NotifySink
    from shipflow.infra.stack.embedded import EmbeddedStack

def worker() -> None:
    """Run the worker (ReleaseWorkflow and every activity) until SIGINT/SIGTERM."""
    from shipflow.worker.main import main as worker_main

    _check_payload_keys()
    worker_main()


def _check_payload_keys() -> None:
    """Malformed payload keys: exit 2 naming the setting, before connecting to anything."""
    from shipflow.activities.core.client import payload_keys
    from shipflow.activities.core.codec import PayloadKeyError
    from shipflow.activities.core.group_crypto import GroupKeyError, check_key

    try:
        payload_keys(get_settings())
        check_key(get_settings())
    except (PayloadKeyError, GroupKeyError) as e:
        raise fail(str(e), EXIT_BAD_INPUT) from None


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 8000


def api(
    host: str | None = typer.Option(None, "--host", help="default: host of settings api_url"),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="default: port of settings api_url"
    ),
) -> None:
    """Serve the HTTP API with uvicorn."""
    import uvicorn

    from shipflow.api.app import create_app

    settings = get_settings()
    _check_payload_keys()
    default_host, default_port = _host_port(settings.api_url)
    try:
        served = create_app(settings)
    except ValueError as e:  # no tokens and not an open dev instance, or malformed tokens
        raise fail(str(e), EXIT_BAD_INPUT) from None
    uvicorn.run(served, host=host or default_host, port=port or default_port, log_level="info")


def runtime(
    data_dir: Path = typer.Option(Path(".shipflow/runtime"), "--data-dir"),
    port: int = typer.Option(7300, "--port", min=1, max=65535),
) -> None:
    """Run the local target's runtime (the processes of `target: local` services)."""
    from shipflow.worker.runtime.__main__ import main as runtime_main

    raise typer.Exit(runtime_main(["--data-dir", str(data_dir), "--port", str(port)]))


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (e.g. from a supervisor) stops the stack like Ctrl-C does.

    SIGINT gets Python's default handler back too: a shell starts background jobs with
    SIGINT ignored, and `kill -INT` must still stop the stack cleanly.
    """

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, handler)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def endpoints_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(title="shipflow dev stack", header_style="bold", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("where", overflow="fold")
    for name, where in rows:
        table.add_row(name, where)
    return table


def dev(
    data_dir: Path = typer.Option(Path(".shipflow"), "--data-dir", help="state and logs"),
    api_port: int = typer.Option(8000, "--api-port", min=1, max=65535),
    temporal_port: int = typer.Option(7233, "--temporal-port", min=1, max=65535),
    ui_port: int = typer.Option(8233, "--ui-port", min=1, max=65535),
    runtime_port: int = typer.Option(7300, "--runtime-port", min=1, max=65535),
    s3_port: int = typer.Option(7400, "--s3-port", min=1, max=65535),
    sink_port: int = typer.Option(
        7500, "--sink-port", min=0, max=65535, help="a webhook inbox for notify steps; 0: none"
    ),
    metrics_port: int = typer.Option(
        7600,
        "--metrics-port",
        min=0,
        max=65535,
        help="the worker's Prometheus metrics (/metrics); 0: none",
    ),
    keep_services: bool = typer.Option(
        False,
        "--keep-services",
        help="leave local services running at exit, for the next `shipflow dev` to adopt",
    ),
) -> None:
    """Start the embedded stack (Temporal, runtime, S3, worker, API) and keep it up until Ctrl-C.

    It also listens for webhooks on 127.0.0.1:SINK_PORT and prints every message a
    `notify` step sends there (the demo flow's default), so flows can be tried offline.
    """
    from shipflow.infra.stack.embedded import EmbeddedStack

    stack = EmbeddedStack(
        data_dir,
        api_port=api_port,
        temporal_port=temporal_port,
        ui_port=ui_port,
        runtime_port=runtime_port,
        s3_port=s3_port,
        metrics_port=metrics_port,
        say=lambda line: err.print(line, style="dim", highlight=False),
        keep_services=keep_services,
    )
    with _sigterm_as_interrupt():
        code = _serve_stack(stack, sink_port)
    raise typer.Exit(code)


def _print_notification(body: dict[str, Any]) -> None:
    out.print(
        "[magenta]webhook[/magenta] "
        + escape(
            f"{body.get('flow', '?')}/{body.get('step', '?')} "
            f"({body.get('run_id', '?')}): {body.get('message', body)}"
        ),
        highlight=False,
        soft_wrap=True,
    )


def _serve_stack(stack: EmbeddedStack, sink_port: int) -> int:
    """Start the stack, show where everything is, keep it up; stop it however this ends."""
    from shipflow.infra.demo_driver import NotifySink

    sink: NotifySink | None = None
    if sink_port:
        try:
            sink = NotifySink(sink_port, on_message=_print_notification)
        except OSError:
            print_error(
                f"port {sink_port} (webhook sink) is already in use on 127.0.0.1",
                "pick another with --sink-port (0: none)",
            )
            return EXIT_BAD_INPUT
    try:
        return _keep_up(stack, sink)
    finally:
        if sink is not None:
            sink.stop()


def _keep_up(stack: EmbeddedStack, sink: NotifySink | None) -> int:
    from shipflow.infra.stack.ports import PortInUse
    from shipflow.infra.stack.processes import StackError

    try:
        stack.start()
    except PortInUse as e:
        print_error(str(e))
        return EXIT_BAD_INPUT
    except StackError as e:
        print_error(str(e))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # start() already stopped what it had started
    try:
        rows = stack.endpoints()
        rows.insert(1, ("console", f"{stack.api_url}/ (log in with the token)"))
        if sink is not None:
            sink.start()
            rows.insert(5, ("webhook sink", f"http://{sink.address}/ (notify steps print here)"))
        out.print(endpoints_table(rows))
        for note in stack.notes:
            err.print(f"note: {escape(note)}", style="yellow", highlight=False)
        out.print(
            f"use it: export SHIPFLOW_API={stack.api_url} SHIPFLOW_TOKEN=<token above>; "
            "a crashed process is restarted; Ctrl-C stops everything",
            highlight=False,
            soft_wrap=True,
        )
        # Crashed children are restarted (each restart is logged); this returns only
        # when one keeps crashing.
        dead = stack.wait()
        print_error(
            stack.failure or f"{dead.name} exited with code {dead.proc.returncode}",
            f"its log is under {stack.logs_dir}; start the stack again with `shipflow dev`",
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("stopping…", highlight=False)
        return EXIT_OK
    finally:
        stack.stop()


def demo(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="keep state here (default: a temporary directory, removed after)"
    ),
    api_port: int = typer.Option(0, "--api-port", min=0, max=65535, help="0: any free port"),
    temporal_port: int = typer.Option(0, "--temporal-port", min=0, max=65535, help="0: any free port"),
    ui_port: int = typer.Option(0, "--ui-port", min=0, max=65535, help="0: any free port"),
    runtime_port: int = typer.Option(0, "--runtime-port", min=0, max=65535, help="0: any free port"),
    s3_port: int = typer.Option(0, "--s3-port", min=0, max=65535, help="0: any free port"),
) -> None:
    """Start the stack, run the example release end to end, stop; exit 0 if all went as expected."""
    from shipflow.infra.demo_driver import run_demo
    from shipflow.infra.stack.ports import PortInUse
    from shipflow.infra.stack.processes import StackError

    try:
        with _sigterm_as_interrupt():
            ok = run_demo(
                data_dir,
                ports={
                    "api_port": api_port,
                    "temporal_port": temporal_port,
                    "ui_port": ui_port,
                    "runtime_port": runtime_port,
                    "s3_port": s3_port,
                },
                console=out,
            )
    except PortInUse as e:
        raise fail(str(e), EXIT_BAD_INPUT) from None
    except StackError as e:
        raise fail(str(e), EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


def register(app: typer.Typer) -> None:
    """Add the process commands to the root app, each with examples in its help."""
    from shipflow.infra.cli.runs import examples

    app.command("dev", epilog=examples("shipflow dev", "shipflow dev --data-dir /tmp/sf --api-port 8100"))(dev)
    app.command("demo", epilog=examples("shipflow demo", "shipflow demo --data-dir ./demo-state"))(demo)
    app.command("worker", epilog=examples("SHIPFLOW_TEMPORAL_ADDRESS=temporal:7233 shipflow worker"))(worker)
    app.command("api", epilog=examples("shipflow api", "shipflow api --host 0.0.0.0 --port 8000"))(api)
    app.command("runtime", epilog=examples("shipflow runtime --data-dir .shipflow/runtime --port 7300"))(runtime)
