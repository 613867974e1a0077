"""`shipflow run|runs|status|cancel|terminate|approve|reject|rollback|retry`: runs through the API."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from shipflow.infra.cli.client import ApiClient, ApiError, ApiUnreachable
from shipflow.infra.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    api_errors,
    cli_state,
    err,
    fail,
    out,
)
from shipflow.infra.cli.render import print_link, run_view, runs_table, table_console
from shipflow.infra.cli.status_view import approval_lines, queued_lines
from shipflow.workflows.status import RunState, RunStatus, StepState


def examples(*lines: str) -> str:
    """An `Examples:` epilog for a command's help, one example a line."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def parse_args(pairs: list[str]) -> dict[str, str]:
    """`["image=demo:2", "x=a=b"]` -> `{"image": "demo:2", "x": "a=b"}`."""
    args: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(
                f"--arg {pair!r} is not KEY=VALUE",
                EXIT_BAD_INPUT,
                "write each argument as --arg NAME=VALUE, e.g. --arg image=demo:2",
            )
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


def _follow(client: ApiClient, run_id: str) -> None:
    """Follow to the end; exit 1 unless the run succeeded, 130 on Ctrl-C (the run goes on)."""
    try:
        status, _ = follow_run(client, run_id, show_link=False)  # printed at start
    except KeyboardInterrupt:
        err.print(
            f"stopped following; the run goes on. See it with `shipflow status {run_id}`",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if status.state != RunState.SUCCEEDED:
        raise fail(
            f"run {run_id} ended {status.state.value}",
            EXIT_FAILED,
            f"see why with `shipflow status {run_id}`",
        )


def run(
    ctx: typer.Context,
    flow: str = typer.Argument(..., metavar="FLOW", help="name of an applied flow"),
    arg: list[str] = typer.Option(
        [], "--arg", "-a", metavar="KEY=VALUE", help="run argument (repeatable)"
    ),
    reason: str | None = typer.Option(
        None, "--reason", "-r", metavar="TEXT", help="why: shown with the run"
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="show the steps live until the end"),
) -> None:
    """Start a run of FLOW. With --follow, exit 0 only if it succeeds (130 on Ctrl-C)."""
    state = cli_state(ctx)
    args = parse_args(arg)
    with api_errors(state), state.client() as client:
        started = client.start_run(flow, args, reason)
        run_id = str(started["run_id"])
        out.print(f"started run [bold]{escape(run_id)}[/bold]", highlight=False, soft_wrap=True)
        print_link(out, started.get("ui_url"))
        out.print(
            f"console: {client.base_url}/runs/{quote(run_id, safe='')}",
            style="dim",
            highlight=False,
            soft_wrap=True,
        )
        if follow:
            _follow(client, run_id)


def runs(
    ctx: typer.Context,
    flow: str | None = typer.Option(None, "--flow", metavar="FLOW", help="only this flow"),
    stage: str | None = typer.Option(None, "--stage", metavar="STAGE", help="only this stage"),
    status: str | None = typer.Option(
        None, "--status", metavar="STATE", help="only runs in this state (e.g. failed)"
    ),
    limit: int | None = typer.Option(
        None, "--limit", metavar="N", help="at most this many (newest first)"
    ),
    cursor: str | None = typer.Option(
        None, "--cursor", metavar="CURSOR", help="the page after this cursor"
    ),
    every: bool = typer.Option(False, "--all", help="follow the cursor to the last page"),
    wide: bool = typer.Option(False, "--wide", help="every column, whatever the terminal width"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List runs, newest first, one page (`--all` for every page). Run ids are never cut:
    narrow terminals drop columns instead."""
    state = cli_state(ctx)
    if status is not None and status not in {s.value for s in RunState}:
        known = ", ".join(s.value for s in RunState)
        raise fail(f"--status {status!r} is not a run state", EXIT_BAD_INPUT, f"use one of {known}")
    with api_errors(state), state.client() as client:
        query = {"flow": flow, "stage": stage, "status": status, "limit": limit}
        found, following = client.runs_page(cursor=cursor, **query)
        while every and following is not None:
            page, following = client.runs_page(cursor=following, **query)
            found += page
    if following is not None:
        typer.echo(f"more runs: shipflow runs --cursor {following}", err=True)
    if as_json:
        typer.echo(json.dumps(found, indent=2, default=str))
        return
    console = table_console(out, wide)
    console.print(runs_table(found, width=None if wide else console.width), soft_wrap=True)


def status(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN", help="a run id, as `shipflow runs` shows"),
    as_json: bool = typer.Option(False, "--json", help="print the API's JSON"),
) -> None:
    """Show a run: every step's state, attempts, duration, error and outputs; for a queued
    run its queue position and the run it waits for; for a waiting approval its deadline
    and the exact command to approve it; and the Web UI link."""
    state = cli_state(ctx)
    plan_steps: dict[str, Any] = {}
    stage_runs: list[dict[str, Any]] = []
    with api_errors(state), state.client() as client:
        raw = client.run_json(run_id)
        if as_json:
            typer.echo(json.dumps(raw, indent=2))
            return
        run_status = RunStatus.model_validate(raw)
        if any(s.kind == "approve" and s.state == StepState.WAITING for s in run_status.steps):
            with contextlib.suppress(ApiError):
                plan_steps = client.request("GET", f"/runs/{run_id}/plan").get("steps") or {}
        if run_status.state == RunState.QUEUED:
            with contextlib.suppress(ApiError):
                stage_runs = client.list_runs(stage=run_status.stage, limit=50)
    ui_url = raw.get("ui_url")
    out.print(run_view(run_status, outputs=True))
    for line in queued_lines(run_status, stage_runs) + approval_lines(run_status, plan_steps):
        out.print(line, highlight=False, soft_wrap=True)
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


def cancel(
    ctx: typer.Context, run_id: str = typer.Argument(..., metavar="RUN", help="the run to cancel")
) -> None:
    """Cancel a run; what it already did is undone (compensation)."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        client.cancel(run_id)
    out.print(f"cancel requested for {escape(run_id)}", highlight=False, soft_wrap=True)


def terminate(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN", help="the run to stop"),
    reason: str | None = typer.Option(None, "--reason", "-r", metavar="TEXT"),
) -> None:
    """Stop RUN at once, WITHOUT compensation (admin): for a run that is stuck."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        client.request("POST", f"/runs/{run_id}/terminate", json={"reason": reason})
    out.print(f"terminated {escape(run_id)} (nothing was undone)", highlight=False, soft_wrap=True)


def approve(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN", help="the waiting run"),
    step: str = typer.Argument(..., metavar="STEP", help="the approval step's id"),
    comment: str | None = typer.Option(None, "--comment", "-m", metavar="TEXT"),
) -> None:
    """Approve the waiting approval STEP of RUN."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        client.approve(run_id, step, comment)
    out.print(f"approved {escape(step)} of {escape(run_id)}", highlight=False, soft_wrap=True)


def reject(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN", help="the waiting run"),
    step: str | None = typer.Argument(
        None, metavar="STEP", help="default: the one step that waits"
    ),
    comment: str | None = typer.Option(None, "--comment", "-m", metavar="TEXT"),
) -> None:
    """Reject a waiting approval: the run fails and compensates."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        client.reject(run_id, step, comment)
    out.print(
        f"rejected {escape(step or 'the waiting step')} of {escape(run_id)}",
        highlight=False,
        soft_wrap=True,
    )


def rollback(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN", help="the run whose result to return to"),
    reason: str | None = typer.Option(None, "--reason", "-r", metavar="TEXT"),
    restore_data: bool = typer.Option(
        False, "--restore-data", help="also restore the data to what it was right after RUN"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="show the plan, start nothing"),
    follow: bool = typer.Option(False, "--follow", "-f", help="show the steps live until the end"),
) -> None:
    """Start a run that returns the stage to its state right after RUN."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        started = client.rollback(run_id, reason, restore_data=restore_data, dry_run=dry_run)
        _print_recovery_plan(started)
        if dry_run:
            return
        _started_recovery(client, started, "rollback", follow)


def retry(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN", help="a failed run"),
    follow: bool = typer.Option(False, "--follow", "-f", help="show the steps live until the end"),
) -> None:
    """Start a run of RUN's plan and args that skips what succeeded and starts at the failed step."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        started = client.retry(run_id)
        _started_recovery(client, started, "retry", follow)


def _print_recovery_plan(answer: dict[str, Any]) -> None:
    for item in answer.get("plan") or []:
        out.print(
            f"  {escape(str(item.get('step')))}: {escape(str(item.get('summary')))}",
            highlight=False,
            soft_wrap=True,
        )


def _started_recovery(client: ApiClient, started: dict[str, Any], what: str, follow: bool) -> None:
    run_id = str(started.get("run_id"))
    out.print(f"started {what} run [bold]{escape(run_id)}[/bold]", highlight=False, soft_wrap=True)
    print_link(out, started.get("ui_url"))
    if follow:
        _follow(client, run_id)


def logs(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN", help="a run id, as `shipflow runs` shows"),
    step: str | None = typer.Argument(None, metavar="[STEP]", help="one step (default: all)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines"),
) -> None:
    """Print a run's step logs (command output, rollout progress, probes, backups)."""
    from shipflow.infra.cli.logs import show_run, show_step

    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        if step is None:
            show_run(client, run_id, follow=follow)
        else:
            show_step(client, run_id, step, follow=follow)


def promote(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., metavar="RUN", help="the run whose canary waits"),
    step: str | None = typer.Argument(None, metavar="[STEP]", help="default: the one canary that waits"),
) -> None:
    """Promote RUN's canary that waits in a pause: it goes on to its next canary step."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        done = client.promote(run_id, step)
    out.print(
        f"promoted {escape(done['service'])} ({escape(done['step'])} of {escape(run_id)}): "
        + (
            f"weight {done['weight']}%, next canary step {done['canary_step']}"
            if done.get("weight") is not None
            else f"{escape(done['rollout_id'])} goes on"  # kubernetes: the annotated Deployment
        ),
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the run commands to the root app, each with examples in its help."""
    commands: list[tuple[str, Any, tuple[str, ...]]] = [
        (
            "run",
            run,
            (
                "shipflow run demo",
                "shipflow run demo --arg image=demo:2 --reason 'hotfix' --follow",
            ),
        ),
        (
            "runs",
            runs,
            ("shipflow runs", "shipflow runs --flow demo --status failed", "shipflow runs --json"),
        ),
        ("status", status, ("shipflow status demo-1a2b3c4d", "shipflow status demo-1a2b3c4d --json")),
        (
            "logs",
            logs,
            ("shipflow logs demo-1a2b3c4d", "shipflow logs demo-1a2b3c4d migrate --follow"),
        ),
        ("cancel", cancel, ("shipflow cancel demo-1a2b3c4d",)),
        ("terminate", terminate, ("shipflow terminate demo-1a2b3c4d --reason 'stuck'",)),
        ("approve", approve, ("shipflow approve demo-1a2b3c4d go-live -m 'looks good'",)),
        ("reject", reject, ("shipflow reject demo-1a2b3c4d", "shipflow reject demo-1a2b3c4d go-live")),
        (
            "rollback",
            rollback,
            ("shipflow rollback demo-1a2b3c4d --dry-run", "shipflow rollback demo-1a2b3c4d -f"),
        ),
        ("retry", retry, ("shipflow retry demo-1a2b3c4d --follow",)),
        ("promote", promote, ("shipflow promote demo-1a2b3c4d", "shipflow promote demo-1a2b3c4d deploy-web")),
    ]
    for name, function, lines in commands:
        app.command(name, epilog=examples(*lines))(function)
