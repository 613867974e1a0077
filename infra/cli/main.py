"""`shipflow`: the command line. Talks to the HTTP API; also starts the processes (dev, demo, worker, api).

Exit codes are part of the contract, so scripts and CI can rely on them:
0 success; 1 a run that did not succeed, an unreachable API or a server error;
2 bad input (an invalid flow file, a bad argument, any 4xx answer of the API).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from shipflow.activities.core.settings import get_settings
from shipflow.infra.cli.client import ApiClient, ApiError, ApiUnreachable
from shipflow.infra.cli.render import print_link, run_view, runs_table
from shipflow.workflows.spec import FlowError, flow_json_schema, load_flow_text
from shipflow.workflows.status import RunState, RunStatus

if TYPE_CHECKING:
    from shipflow.infra.demo_driver import NotifySink
    from shipflow.infra.stack import EmbeddedStack

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

app = typer.Typer(
    name="shipflow",
    help="Release flows on Temporal: durable, inspectable, reversible.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
flow_app = typer.Typer(
    help="Flow files: validate, show the schema, apply to the API.", no_args_is_help=True
)
app.add_typer(flow_app, name="flow")

from shipflow.infra.cli.backup import app as backup_app  # noqa: E402  (after `app`)

app.add_typer(backup_app, name="backup")

out = Console()
err = Console(stderr=True)


@dataclass
class CliState:
    api: str
    token: str | None

    def client(self) -> ApiClient:
        return ApiClient(self.api, self.token)


def _state(ctx: typer.Context) -> CliState:
    state = ctx.find_root().obj
    if not isinstance(state, CliState):  # a sub-app invoked on its own
        settings = get_settings()
        token = settings.api_token.get_secret_value() if settings.api_token else None
        state = CliState(settings.api_url, token)
    return state


@app.callback()
def _global(
    ctx: typer.Context,
    api: str | None = typer.Option(
        None, "--api", envvar="SHIPFLOW_API", help="API base URL (default: settings api_url)"
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="SHIPFLOW_TOKEN",
        help="Bearer token for the API",
        show_default=False,
    ),
) -> None:
    settings = get_settings()
    if token is None and settings.api_token is not None:
        token = settings.api_token.get_secret_value()
    ctx.obj = CliState(api or settings.api_url, token)


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _api_errors(state: CliState) -> Iterator[None]:
    """Map API failures to messages and exit codes: 4xx -> 2, 5xx and no answer -> 1."""
    try:
        yield
    except ApiError as e:
        for path, message in e.problems:
            typer.echo(f"{path}: {message}" if path else message, err=True)
        raise typer.Exit(EXIT_BAD_INPUT if e.is_client_error else EXIT_FAILED) from None
    except ApiUnreachable as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        err.print(
            "hint: start the local stack with `shipflow dev`, or point --api / SHIPFLOW_API "
            "at a running API",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_FAILED) from None


# ---------------------------------------------------------------- flow files


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise _fail(f"cannot read {path}: {e.strerror or e}", EXIT_BAD_INPUT) from None


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


@flow_app.command("validate")
def flow_validate(file: Path = typer.Argument(..., help="flow file (YAML or JSON)")) -> None:
    """Check a flow file; print every problem as `path: message`."""
    try:
        name, steps = check_flow_text(_read(file))
    except FlowError as e:
        for path, message in e.problems:
            typer.echo(f"{path}: {message}" if path else message)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    typer.echo(f"ok: {name} ({steps} steps)")


@flow_app.command("schema")
def flow_schema() -> None:
    """Print the JSON Schema of flow files (for editors and linters)."""
    typer.echo(json.dumps(flow_json_schema(), indent=2))


@flow_app.command("apply")
def flow_apply(ctx: typer.Context, file: Path = typer.Argument(..., help="flow file")) -> None:
    """Create or update a flow on the API (a new version when its text changed)."""
    state = _state(ctx)
    source = _read(file)
    with _api_errors(state), state.client() as client:
        flow = client.apply_flow(source)
    out.print(
        f"applied [bold]{escape(str(flow.get('name')))}[/bold] version {flow.get('version')} "
        f"(stage {escape(str(flow.get('stage')))})",
        highlight=False,
    )


@flow_app.command("list")
def flow_list(ctx: typer.Context) -> None:
    """List the applied flows."""
    state = _state(ctx)
    with _api_errors(state), state.client() as client:
        flows = client.list_flows()
    table = Table(header_style="bold")
    for column in ("name", "stage", "version", "updated"):
        table.add_column(column)
    for flow in flows:
        table.add_row(
            str(flow.get("name", "")),
            str(flow.get("stage", "")),
            str(flow.get("version", "")),
            str(flow.get("updated_at", ""))[:19],
        )
    out.print(table)


# ---------------------------------------------------------------- runs


def parse_args(pairs: list[str]) -> dict[str, str]:
    """`["image=demo:2", "x=a=b"]` -> `{"image": "demo:2", "x": "a=b"}`."""
    args: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--arg {pair!r}: expected KEY=VALUE", EXIT_BAD_INPUT)
        args[key.strip()] = value
    return args


def follow_run(
    client: ApiClient,
    run_id: str,
    *,
    console: Console | None = None,
    poll_s: float = 0.5,
    unreachable_grace_s: float = 30.0,
    show_link: bool = True,
) -> tuple[RunStatus, str | None]:
    """Show the run's step tree, updated live, until the run reaches a final state.

    A short API outage (a restart) is ridden out for `unreachable_grace_s`; the run
    itself does not depend on the API, only this view does.
    """
    console = console or out
    status, ui_url = client.get_run(run_id)
    down_since: float | None = None

    with Live(run_view(status), console=console, refresh_per_second=4) as live:
        while not status.state.is_final:
            time.sleep(poll_s)
            try:
                status, ui_url = client.get_run(run_id)
                down_since = None
            except ApiUnreachable:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > unreachable_grace_s:
                    raise
                continue
            live.update(run_view(status))
    if not console.is_terminal:
        console.line()  # Live leaves its last line open when it cannot redraw
    if show_link:
        print_link(console, ui_url)
    return status, ui_url


@app.command("run")
def run(
    ctx: typer.Context,
    flow: str = typer.Argument(..., help="name of an applied flow"),
    arg: list[str] = typer.Option([], "--arg", "-a", help="run argument KEY=VALUE (repeatable)"),
    reason: str | None = typer.Option(None, "--reason", "-r", help="why: shown with the run"),
    follow: bool = typer.Option(False, "--follow", "-f", help="show the steps live until the end"),
) -> None:
    """Start a run of FLOW. With --follow, exit 0 only if it succeeds."""
    state = _state(ctx)
    args = parse_args(arg)
    with _api_errors(state), state.client() as client:
        started = client.start_run(flow, args, reason)
        run_id = str(started["run_id"])
        out.print(f"started run [bold]{escape(run_id)}[/bold]", highlight=False)
        print_link(out, started.get("ui_url"))
        out.print(
            f"console: {client.base_url}/runs/{quote(run_id, safe='')}",
            style="dim",
            highlight=False,
            soft_wrap=True,
        )
        if not follow:
            return
        try:
            status, _ = follow_run(client, run_id, show_link=False)  # printed above
        except KeyboardInterrupt:
            err.print(
                f"stopped following; the run goes on. See it with `shipflow status {run_id}`",
                highlight=False,
            )
            raise typer.Exit(130) from None
    if status.state != RunState.SUCCEEDED:
        raise _fail(f"run {run_id} ended {status.state.value}", EXIT_FAILED)


@app.command("runs")
def runs(
    ctx: typer.Context,
    flow: str | None = typer.Option(None, "--flow", help="only this flow"),
    stage: str | None = typer.Option(None, "--stage", help="only this stage"),
    status: str | None = typer.Option(None, "--status", help="only runs in this state"),
    limit: int | None = typer.Option(None, "--limit", help="at most this many (newest first)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List runs, newest first."""
    state = _state(ctx)
    if status is not None and status not in {s.value for s in RunState}:
        known = ", ".join(s.value for s in RunState)
        raise _fail(f"--status {status!r}: not a run state (one of {known})", EXIT_BAD_INPUT)
    with _api_errors(state), state.client() as client:
        found = client.list_runs(flow=flow, stage=stage, status=status, limit=limit)
    if as_json:
        typer.echo(json.dumps(found, indent=2, default=str))
        return
    out.print(runs_table(found, width=out.width))


@app.command("status")
def status(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    as_json: bool = typer.Option(False, "--json", help="print the API's JSON"),
) -> None:
    """Show a run: every step's state, attempts, duration and error, and the Web UI link."""
    state = _state(ctx)
    with _api_errors(state), state.client() as client:
        if as_json:
            typer.echo(json.dumps(client.run_json(run_id), indent=2))
            return
        raw = client.run_json(run_id)
    run_status, ui_url = RunStatus.model_validate(raw), raw.get("ui_url")
    out.print(run_view(run_status))
    stuck = raw.get("stuck")
    if isinstance(stuck, dict):
        out.print(
            f"[red]stuck[/red] after {stuck.get('attempts')} workflow task attempts: "
            f"{escape(str(stuck.get('reason')))}\n"
            f"it cannot carry out a cancel; `shipflow terminate {escape(run_id)}` stops it "
            "(without compensation)",
            highlight=False,
        )
    print_link(out, ui_url)


@app.command("logs")
def logs(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    step: str | None = typer.Argument(None, metavar="[STEP]", help="one step (default: all)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines"),
) -> None:
    """Print a run's step logs (command output, rollout progress, probes, backups)."""
    from shipflow.infra.cli.logs import show_run, show_step

    state = _state(ctx)
    with _api_errors(state), state.client() as client:
        if step is None:
            show_run(client, run_id, follow=follow)
        else:
            show_step(client, run_id, step, follow=follow)


@app.command("cancel")
def cancel(ctx: typer.Context, run_id: str = typer.Argument(..., metavar="RUN")) -> None:
    """Cancel a run; what it already did is undone (compensation)."""
    state = _state(ctx)
    with _api_errors(state), state.client() as client:
        client.cancel(run_id)
    out.print(f"cancel requested for {escape(run_id)}", highlight=False)


@app.command("terminate")
def terminate(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    reason: str | None = typer.Option(None, "--reason", "-r"),
) -> None:
    """Stop RUN at once, WITHOUT compensation (admin): for a run that is stuck."""
    state = _state(ctx)
    with _api_errors(state), state.client() as client:
        client.request("POST", f"/runs/{run_id}/terminate", json={"reason": reason})
    out.print(f"terminated {escape(run_id)} (nothing was undone)", highlight=False)


@app.command("approve")
def approve(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    step: str = typer.Argument(..., help="the approval step's id"),
    comment: str | None = typer.Option(None, "--comment", "-m"),
) -> None:
    """Approve the waiting approval STEP of RUN."""
    state = _state(ctx)
    with _api_errors(state), state.client() as client:
        client.approve(run_id, step, comment)
    out.print(f"approved {escape(step)} of {escape(run_id)}", highlight=False)


@app.command("reject")
def reject(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    step: str | None = typer.Argument(None, help="default: the one step that waits"),
    comment: str | None = typer.Option(None, "--comment", "-m"),
) -> None:
    """Reject a waiting approval: the run fails and compensates."""
    state = _state(ctx)
    with _api_errors(state), state.client() as client:
        client.reject(run_id, step, comment)
    out.print(f"rejected {escape(step or 'the waiting step')} of {escape(run_id)}", highlight=False)


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    reason: str | None = typer.Option(None, "--reason", "-r"),
    restore_data: bool = typer.Option(
        False, "--restore-data", help="also restore the data to what it was right after RUN"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="show the plan, start nothing"),
    follow: bool = typer.Option(False, "--follow", "-f", help="show the steps live until the end"),
) -> None:
    """Start a run that returns the stage to its state right after RUN."""
    state = _state(ctx)
    with _api_errors(state), state.client() as client:
        started = client.rollback(run_id, reason, restore_data=restore_data, dry_run=dry_run)
        _print_recovery_plan(started)
        if dry_run:
            return
        _started_recovery(client, started, "rollback", follow)


@app.command("retry")
def retry(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN"),
    follow: bool = typer.Option(False, "--follow", "-f", help="show the steps live until the end"),
) -> None:
    """Start a run of RUN's plan and args that skips what succeeded and starts at the failed step."""
    state = _state(ctx)
    with _api_errors(state), state.client() as client:
        started = client.retry(run_id)
        _started_recovery(client, started, "retry", follow)


def _print_recovery_plan(answer: dict[str, Any]) -> None:
    for item in answer.get("plan") or []:
        out.print(
            f"  {escape(str(item.get('step')))}: {escape(str(item.get('summary')))}",
            highlight=False,
        )


def _started_recovery(client: ApiClient, started: dict[str, Any], what: str, follow: bool) -> None:
    run_id = str(started.get("run_id"))
    out.print(f"started {what} run [bold]{escape(run_id)}[/bold]", highlight=False)
    print_link(out, started.get("ui_url"))
    if follow:
        status, _ = follow_run(client, run_id, show_link=False)
        if status.state != RunState.SUCCEEDED:
            raise _fail(f"run {run_id} ended {status.state.value}", EXIT_FAILED)


# ---------------------------------------------------------------- processes


@app.command("worker")
def worker() -> None:
    """Run the worker (ReleaseWorkflow and every activity) until SIGINT/SIGTERM."""
    from shipflow.worker.main import main as worker_main

    _check_payload_keys()
    worker_main()


def _check_payload_keys() -> None:
    """Malformed payload keys: exit 2 naming the setting, before connecting to anything."""
    from shipflow.activities.core.client import payload_keys
    from shipflow.activities.core.codec import PayloadKeyError

    try:
        payload_keys(get_settings())
    except PayloadKeyError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from None


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 8000


@app.command("api")
def api(
    host: str | None = typer.Option(None, "--host", help="default: host of settings api_url"),
    port: int | None = typer.Option(None, "--port", help="default: port of settings api_url"),
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
        raise _fail(str(e), EXIT_BAD_INPUT) from None
    uvicorn.run(served, host=host or default_host, port=port or default_port, log_level="info")


@app.command("runtime")
def runtime(
    data_dir: Path = typer.Option(Path(".shipflow/runtime"), "--data-dir"),
    port: int = typer.Option(7300, "--port"),
) -> None:
    """Run the local target's runtime (the processes of `target: local` services)."""
    from shipflow.activities.targets.local.runtime import main as runtime_main

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


@app.command("dev")
def dev(
    data_dir: Path = typer.Option(Path(".shipflow"), "--data-dir", help="state and logs"),
    api_port: int = typer.Option(8000, "--api-port"),
    temporal_port: int = typer.Option(7233, "--temporal-port"),
    ui_port: int = typer.Option(8233, "--ui-port"),
    runtime_port: int = typer.Option(7300, "--runtime-port"),
    s3_port: int = typer.Option(7400, "--s3-port"),
    sink_port: int = typer.Option(
        7500, "--sink-port", help="a webhook inbox for notify steps; 0: none"
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
    from shipflow.infra.stack import EmbeddedStack

    stack = EmbeddedStack(
        data_dir,
        api_port=api_port,
        temporal_port=temporal_port,
        ui_port=ui_port,
        runtime_port=runtime_port,
        s3_port=s3_port,
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
            err.print(
                f"[red]error:[/red] port {sink_port} (webhook sink) is already in use on "
                "127.0.0.1; pick another with --sink-port (0: none)",
                highlight=False,
                soft_wrap=True,
            )
            return EXIT_BAD_INPUT
    try:
        return _keep_up(stack, sink)
    finally:
        if sink is not None:
            sink.stop()


def _keep_up(stack: EmbeddedStack, sink: NotifySink | None) -> int:
    from shipflow.infra.stack import PortInUse, StackError

    try:
        stack.start()
    except PortInUse as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except StackError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130  # start() already stopped what it had started
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
        err.print(
            "[red]error:[/red] "
            + escape(stack.failure or f"{dead.name} exited with code {dead.proc.returncode}"),
            highlight=False,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("stopping…", highlight=False)
        return EXIT_OK
    finally:
        stack.stop()


@app.command("demo")
def demo(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="keep state here (default: a temporary directory, removed after)"
    ),
    api_port: int = typer.Option(0, "--api-port", help="0: any free port"),
    temporal_port: int = typer.Option(0, "--temporal-port", help="0: any free port"),
    ui_port: int = typer.Option(0, "--ui-port", help="0: any free port"),
    runtime_port: int = typer.Option(0, "--runtime-port", help="0: any free port"),
    s3_port: int = typer.Option(0, "--s3-port", help="0: any free port"),
) -> None:
    """Start the stack, run the example release end to end, stop; exit 0 if all went as expected."""
    from shipflow.infra.demo_driver import run_demo
    from shipflow.infra.stack import PortInUse, StackError

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
        raise _fail(str(e), EXIT_BAD_INPUT) from None
    except StackError as e:
        raise _fail(str(e), EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
