"""`shipflow demo`: start the embedded stack, run the example release end to end, check, stop.

The demo is a list of `Scenario`s: which flow to run with which arguments, the final
state it must reach, and an optional check of what the run did to the world (the demo
database, the messages the webhook sink received). Extending the demo is adding a
scenario (and, when needed, a flow file under `infra/flows/`). Everything goes through
the public HTTP API, as a user's script would.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from shipflow.activities.targets.local.process import free_ports
from shipflow.infra.cli.client import ApiClient, ApiClientError
from shipflow.infra.cli.processes import endpoints_table
from shipflow.infra.cli.runs import follow_run
from shipflow.infra.stack.embedded import EmbeddedStack
from shipflow.workflows.status import RunState, RunStatus, StepState

FLOWS_DIR = Path(__file__).resolve().parent / "flows"


# ---------------------------------------------------------------- the webhook sink


class NotifySink:
    """A tiny HTTP server that records every JSON body POSTed to it (the `notify` target).

    Args:
        port: loopback port; 0 picks a free one.
        on_message: called with each received body (e.g. to print it), on the server's thread.

    Raises:
        OSError: the port is taken.
    """

    def __init__(
        self, port: int = 0, on_message: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"raw": raw.decode(errors="replace")}
                if not isinstance(body, dict):
                    body = {"raw": body}
                with sink._lock:
                    sink.received.append({"path": self.path, **body})
                self.send_response(204)
                self.end_headers()
                if on_message is not None:
                    on_message(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> NotifySink:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self._server.shutdown()
        self._server.server_close()

    def messages(self) -> list[str]:
        with self._lock:
            return [str(m.get("message", "")) for m in self.received]


# ---------------------------------------------------------------- scenarios


@dataclass
class DemoContext:
    """What scenarios and their checks can see."""

    client: ApiClient
    sink: NotifySink
    data_dir: Path
    api_address: str
    ports: dict[str, int] = field(default_factory=dict)
    snapshots: dict[str, tuple[int, list[tuple[Any, ...]], str]] = field(default_factory=dict)

    @property
    def demo_db(self) -> Path:
        return self.data_dir / "demo.db"

    def database(self) -> tuple[int, list[tuple[Any, ...]], str]:
        """(schema version, rows of `items`, schema SQL) of the demo app's database."""
        with sqlite3.connect(self.demo_db) as conn:
            version = int(conn.execute("SELECT version FROM schema_version").fetchone()[0])
            schema = "\n".join(
                str(r[0])
                for r in conn.execute(
                    "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
                )
            )
            try:
                rows = [tuple(r) for r in conn.execute("SELECT * FROM items ORDER BY id")]
            except sqlite3.OperationalError:
                rows = []
        conn.close()
        return version, rows, schema

    def serving(self, service: str) -> set[str]:
        """The versions answering on a service's front port (a few requests, new connections)."""
        seen: set[str] = set()
        for _ in range(6):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.ports[service]}/version", timeout=5
                ) as response:
                    seen.add(str(json.loads(response.read())["version"]))
            except OSError as e:
                seen.add(f"error: {e}")
        return seen

    def fill(self, value: str) -> str:
        """Scenario args may say `{api}` and `{sink}`: the addresses of this demo's stack."""
        return value.format(api=self.api_address, sink=self.sink.address, data_dir=self.data_dir)

    def flow_text(self, path: Path) -> str:
        """A flow file with its services' front ports moved to this demo's free ports."""
        text = path.read_text()
        for service, default in DEFAULT_PORTS.items():
            if service in self.ports:
                text = text.replace(f":{default}/", f":{self.ports[service]}/")
                text = text.replace(f"port: {default}", f"port: {self.ports[service]}")
        return text


Check = Callable[[DemoContext, RunStatus], list[str]]


@dataclass
class Scenario:
    """One run of the demo: `flow` with `args` must end in `expect`, and `check` must be empty."""

    title: str
    flow: str
    args: dict[str, str]
    expect: RunState
    check: Check | None = None


@dataclass
class Outcome:
    scenario: Scenario
    run_id: str | None = None
    state: str | None = None
    ui_url: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == self.scenario.expect.value and not self.problems


def _released(release: str, schema: int) -> Check:
    def check(ctx: DemoContext, status: RunStatus) -> list[str]:
        problems = []
        version, _, _ = ctx.database()
        if version != schema:
            problems.append(f"the demo database is at schema {version}, expected {schema}")
        for service in ("web", "admin"):
            if ctx.serving(service) != {release}:
                problems.append(f"{service} serves {sorted(ctx.serving(service))}, expected {release}")
        if (status.step("web").output or {}).get("instances") is not None and len(
            (status.step("web").output or {})["instances"]
        ) != 3:
            problems.append("web does not run 3 instances")
        wanted = f"demo version {release} is live"
        if wanted not in ctx.sink.messages():
            problems.append(f"the sink did not receive {wanted!r} (got {ctx.sink.messages()})")
        ctx.snapshots[release] = ctx.database()
        return problems

    return check


def _compensated(release: str, back_to: str) -> Check:
    def check(ctx: DemoContext, status: RunStatus) -> list[str]:
        problems = []
        if ctx.database() != ctx.snapshots.get(back_to):
            problems.append(
                f"the demo database is not back to {back_to}'s: {ctx.database()[:2]} "
                f"!= {ctx.snapshots.get(back_to, (None, None))[:2]}"
            )
        if status.step("migrate").state != StepState.COMPENSATED:
            problems.append(f"migrate is {status.step('migrate').state.value}, not compensated")
        if status.step("migrate").compensation is None or (
            status.step("migrate").compensation.kind != "restore"  # type: ignore[union-attr]
        ):
            problems.append("the migration was not undone by restoring the backup")
        for service in ("web", "admin"):
            if ctx.serving(service) != {back_to}:
                problems.append(f"{service} serves {sorted(ctx.serving(service))}, expected {back_to}")
        if status.step("announce").state != StepState.SKIPPED:
            problems.append(f"announce is {status.step('announce').state.value}, not skipped")
        if any(f"version {release} " in m for m in ctx.sink.messages()):
            problems.append(f"version {release} was announced although it was rolled back")
        return problems

    return check


BASE_ARGS = {"sink": "{sink}"}
#: The front ports in infra/flows/demo.yaml; the demo moves them to free ports.
DEFAULT_PORTS = {"web": 18080, "admin": 18081}

#: The demo, in order: two releases, then a broken one compensated back automatically.
SCENARIOS: list[Scenario] = [
    Scenario(
        "release v1",
        "demo",
        {**BASE_ARGS, "version": "v1"},
        RunState.SUCCEEDED,
        _released("v1", 1),
    ),
    Scenario(
        "release v2 (rolling update)",
        "demo",
        {**BASE_ARGS, "version": "v2"},
        RunState.SUCCEEDED,
        _released("v2", 2),
    ),
    Scenario(
        "broken v3, rolled back to v2",
        "demo",
        {**BASE_ARGS, "version": "v3-broken"},
        RunState.ROLLED_BACK,
        _compensated("v3-broken", "v2"),
    ),
]

FLOW_FILES: list[Path] = [FLOWS_DIR / "demo.yaml"]


# ---------------------------------------------------------------- driver


def apply_flows(ctx: DemoContext, files: list[Path], console: Console) -> None:
    for path in files:
        flow = ctx.client.apply_flow(ctx.flow_text(path))
        console.print(
            f"applied flow [bold]{flow.get('name')}[/bold] v{flow.get('version')} from {path.name}",
            highlight=False,
        )


def run_scenarios(ctx: DemoContext, scenarios: list[Scenario], console: Console) -> list[Outcome]:
    """Run each scenario to its end, show its step tree, and judge it. Never raises for a run."""
    outcomes: list[Outcome] = []
    for scenario in scenarios:
        outcome = Outcome(scenario)
        outcomes.append(outcome)
        console.rule(f"{scenario.title}  (expect {scenario.expect.value})")
        args = {k: ctx.fill(v) for k, v in scenario.args.items()}
        try:
            started = ctx.client.start_run(scenario.flow, args, reason=f"demo: {scenario.title}")
            outcome.run_id = str(started["run_id"])
            status, outcome.ui_url = follow_run(ctx.client, outcome.run_id, console=console)
        except ApiClientError as e:
            outcome.problems.append(f"API: {e}")
            continue
        outcome.state = status.state.value
        if status.state != scenario.expect:
            outcome.problems.append(f"ended {status.state.value}, expected {scenario.expect.value}")
        if scenario.check is not None:
            outcome.problems += scenario.check(ctx, status)
        for problem in outcome.problems:
            console.print(f"[red]✘ {escape(problem)}[/red]", highlight=False)
        if outcome.ok:
            console.print(
                f"[green]✔ {escape(scenario.title)}: {status.state.value} as expected[/green]"
            )
    return outcomes


def outcomes_table(outcomes: list[Outcome]) -> Table:
    table = Table(title="demo", header_style="bold")
    for column in ("scenario", "run", "expected", "got", "ok"):
        table.add_column(column, no_wrap=column != "scenario")
    for o in outcomes:
        table.add_row(
            o.scenario.title,
            o.run_id or "",
            o.scenario.expect.value,
            o.state or "",
            Text("yes", style="green") if o.ok else Text("NO", style="bold red"),
        )
    return table


def run_demo(
    data_dir: Path | None,
    *,
    ports: dict[str, int] | None = None,
    console: Console | None = None,
    scenarios: list[Scenario] | None = None,
) -> bool:
    """Start a stack, apply the demo flows, run every scenario, stop the stack.

    Args:
        data_dir: where the stack keeps its state; None: a temporary directory, removed
            afterwards unless something failed (then its logs are kept and named).
        ports: `api_port`, `temporal_port`, ... ; 0 or missing means any free port.

    Returns:
        True if every scenario ended as expected.
    """
    console = console or Console()
    temporary = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="shipflow-demo-")) if data_dir is None else data_dir
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo.db").unlink(missing_ok=True)  # each demo starts from an empty database
    wanted = dict(ports or {})
    names = ["api_port", "temporal_port", "ui_port", "runtime_port", "s3_port"]
    spare = iter(free_ports(len(names)))
    chosen = {name: wanted.get(name) or next(spare) for name in names}
    stack = EmbeddedStack(
        root,
        api_port=chosen["api_port"],
        temporal_port=chosen["temporal_port"],
        ui_port=chosen["ui_port"],
        runtime_port=chosen["runtime_port"],
        s3_port=chosen["s3_port"],
        say=lambda line: console.print(line, style="dim", highlight=False),
    )
    sink = NotifySink().start()
    ok = False
    try:
        stack.start()
        console.print(endpoints_table(stack.endpoints(show_token=False)))
        for note in stack.notes:
            console.print(f"note: {escape(note)}", style="yellow", highlight=False)
        with ApiClient(stack.api_url, stack.token) as client:
            ctx = DemoContext(
                client,
                sink,
                stack.data_dir,
                f"127.0.0.1:{stack.api_port}",
                ports=dict(zip(DEFAULT_PORTS, free_ports(len(DEFAULT_PORTS)), strict=True)),
            )
            try:
                apply_flows(ctx, FLOW_FILES, console)
            except ApiClientError as e:
                console.print(
                    f"[red]error:[/red] applying the demo flows: {escape(str(e))}", highlight=False
                )
                return False
            outcomes = run_scenarios(ctx, scenarios or SCENARIOS, console)
        console.print(outcomes_table(outcomes))
        ok = all(o.ok for o in outcomes)
    finally:
        stack.stop()
        sink.stop()
        if temporary and ok:
            shutil.rmtree(root, ignore_errors=True)
        elif not ok:
            console.print(f"state and logs kept in {escape(str(root))}", highlight=False)
        console.print(
            "[bold green]demo passed[/bold green]" if ok else "[bold red]demo FAILED[/bold red]"
        )
    return ok
