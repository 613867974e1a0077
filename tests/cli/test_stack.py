"""The CLI against a real embedded stack: Temporal, runtime, S3, worker and API as processes.

One stack per module (it is the expensive part); each test applies its own flows with
unique names. The last test stops the stack and checks that no process is left.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from shipflow.infra.cli.client import ApiClient
from shipflow.infra.cli.main import app
from shipflow.infra.demo_driver import (
    BASE_ARGS,
    DEFAULT_PORTS,
    FLOW_FILES,
    DemoContext,
    NotifySink,
    Scenario,
    apply_flows,
    run_scenarios,
)
from shipflow.infra.stack.embedded import EmbeddedStack
from shipflow.infra.stack.processes import Child
from shipflow.workflows.status import RunState
from tests.helpers import free_ports, stack_on_free_ports, wait_until_sync

runner = CliRunner()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    stack = stack_on_free_ports(
        tmp_path_factory.mktemp("stack"),
        queue="cli",
        say=lambda _line: None,
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def cli(stack: EmbeddedStack, *args: str) -> Result:
    return runner.invoke(app, ["--api", stack.api_url, "--token", stack.token, *args])


def apply(stack: EmbeddedStack, tmp_path: Path, text: str) -> str:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("NAME", name))
    result = cli(stack, "flow", "apply", str(path))
    assert result.exit_code == 0, result.output
    assert f"created {name} version 1" in result.output
    return name


def run_id_of(result: Result) -> str:
    match = re.search(r"started run (\S+)", result.output)
    assert match, result.output
    return match.group(1)


def wait_state(stack: EmbeddedStack, run_id: str, state: str, timeout: float = 60) -> None:
    with ApiClient(stack.api_url, stack.token) as client:
        wait_until_sync(
            lambda: client.get_run(run_id)[0].state.value == state,
            timeout=timeout,
            interval=0.1,
            what=lambda: f"{run_id} is {client.get_run(run_id)[0].state.value}, not {state}",
        )


OK_FLOW = """\
apiVersion: shipflow/v1
name: NAME
stage: cli-test
args: {greeting: {default: hello}}
steps:
  - migrate: {id: greet, command: [python, -c, "print('${args.greeting}')"]}
  - parallel:
      - wait: {id: pause, duration: 300ms}
      - migrate: {id: side, command: ["true"]}
"""

FAILING_FLOW = """\
apiVersion: shipflow/v1
name: NAME
stage: cli-test
steps:
  - migrate: {id: first, command: ["true"]}
  - migrate:
      id: boom
      retries: 1
      command: [python, -c, "import sys; sys.exit('the database is on fire')"]
  - wait: {id: never, duration: 1s}
"""

APPROVAL_FLOW = """\
apiVersion: shipflow/v1
name: NAME
stage: cli-test
steps:
  - migrate: {id: prepare, command: ["true"]}
  - approve: {id: go-live, timeout: 10m}
  - migrate: {id: after, command: ["true"]}
"""


def test_stack_is_fully_up(stack: EmbeddedStack) -> None:
    assert set(stack.pids()) == {"temporal", "runtime", "s3", "worker", "api"}
    assert stack.notes == []
    rows = dict(stack.endpoints())
    assert rows["API"] == stack.api_url and rows["token"] == stack.token
    # The token is hashed at rest: its clear text is nowhere in the children's logs.
    for log in stack.logs_dir.iterdir():
        assert stack.token not in log.read_text(errors="replace"), log


def test_api_needs_the_generated_token(stack: EmbeddedStack) -> None:
    result = runner.invoke(app, ["--api", stack.api_url, "runs"])
    assert result.exit_code == 2, result.output
    result = runner.invoke(app, ["--api", stack.api_url, "--token", "sf_wrong", "runs"])
    assert result.exit_code == 2, result.output


def test_run_follow_succeeds_and_status_and_runs_show_it(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    flow = apply(stack, tmp_path, OK_FLOW)
    result = cli(stack, "run", flow, "--arg", "greeting=hi there", "--reason", "test", "--follow")
    assert result.exit_code == 0, result.output
    run_id = run_id_of(result)
    text = result.output
    assert f"{stack.ui_url}/namespaces/default/workflows/{run_id}" in text
    assert f"console: {stack.api_url}/runs/{run_id}\n" in text  # opens the run page
    for step in ("greet", "pause", "side"):
        assert re.search(rf"✔ {step} \w+  succeeded", text), text
    assert "parallel" in text

    status = cli(stack, "status", run_id)
    assert status.exit_code == 0, status.output
    assert f"{run_id}  {flow} → cli-test  succeeded" in status.output
    assert "greeting=hi there" in status.output

    listed = cli(stack, "runs", "--flow", flow, "--json")
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output and '"succeeded"' in listed.output
    table = cli(stack, "runs", "--flow", flow, "--status", "succeeded")
    assert table.exit_code == 0 and run_id[:12] in table.output
    none = cli(stack, "runs", "--flow", flow, "--status", "failed", "--json")
    assert none.exit_code == 0 and run_id not in none.output


def test_run_follow_of_a_failing_flow_exits_1_with_the_error(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    flow = apply(stack, tmp_path, FAILING_FLOW)
    result = cli(stack, "run", flow, "--follow")
    assert result.exit_code == 1, result.output
    run_id = run_id_of(result)
    text = result.output
    assert re.search(r"✘ boom migrate  failed  attempt 2/2", text), text
    assert "the database is on fire" in text
    assert re.search(r"- never wait  skipped", text), text
    assert f"run {run_id} ended failed" in text


def test_cancel_a_waiting_run(stack: EmbeddedStack, tmp_path: Path) -> None:
    flow = apply(stack, tmp_path, APPROVAL_FLOW)
    started = cli(stack, "run", flow)
    assert started.exit_code == 0, started.output
    run_id = run_id_of(started)
    wait_state(stack, run_id, "waiting")
    # A second run of the stage queues behind it.
    second = run_id_of(cli(stack, "run", flow))
    wait_state(stack, second, "queued")
    shown = cli(stack, "status", run_id)
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert "go-live approve  waiting" in text
    assert f"(shipflow approve {run_id} go-live)" in " ".join(text.replace("│", "").split())
    assert "approve RUN" not in text  # the real id, not a placeholder
    assert "waiting for approval: go-live" in text
    assert re.search(r"deadline: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in (9m\d\ds|10m00s)\)", text), text
    assert f"approve: shipflow approve {run_id} go-live -m 'why'" in text
    assert f"reject:  shipflow reject {run_id} go-live -m 'why'" in text
    assert re.search(r"prepare migrate  succeeded.*\n.*exit_code: 0", text), text  # outputs
    queued = cli(stack, "status", second)
    assert queued.exit_code == 0, queued.output
    assert "queued: position 1 in the queue of stage cli-test" in queued.output
    assert f"waits for: run {run_id} (waiting, flow {flow}) to end" in queued.output
    assert cli(stack, "cancel", second).exit_code == 0
    wait_state(stack, second, "cancelled")

    result = cli(stack, "cancel", run_id)
    assert result.exit_code == 0, result.output
    wait_state(stack, run_id, "cancelled")
    again = cli(stack, "cancel", run_id)  # already final: the API's 409, said as it is
    assert again.exit_code == 2
    assert "cancelled" in again.output


def test_approve_and_reject(stack: EmbeddedStack, tmp_path: Path) -> None:
    flow = apply(stack, tmp_path, APPROVAL_FLOW)
    approved = run_id_of(cli(stack, "run", flow))
    rejected = run_id_of(cli(stack, "run", flow))
    wait_state(stack, approved, "waiting")

    wrong = cli(stack, "approve", approved, "prepare")
    assert wrong.exit_code == 2
    assert "prepare" in wrong.output and "not an approval" in wrong.output

    ok = cli(stack, "approve", approved, "go-live", "--comment", "ship it")
    assert ok.exit_code == 0, ok.output
    wait_state(stack, approved, "succeeded")

    wait_state(stack, rejected, "waiting")  # concurrency: queue, so it waited for the first
    no = cli(stack, "reject", rejected, "--comment", "not today")
    assert no.exit_code == 0, no.output
    wait_state(stack, rejected, "failed")
    shown = cli(stack, "status", rejected)
    assert "not today" in shown.output


def test_api_errors_are_printed_with_paths(stack: EmbeddedStack, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: shipflow/v1\nname: cli-bad\nstage: s\nsteps:\n  - migrate: {id: m}\n"
    )
    result = cli(stack, "flow", "apply", str(bad))
    assert result.exit_code == 2
    assert "steps[0].migrate.command: field required" in result.output

    flow = apply(stack, tmp_path, OK_FLOW)
    undeclared = cli(stack, "run", flow, "--arg", "colour=red")
    assert undeclared.exit_code == 2
    assert "args.colour" in undeclared.output

    missing = cli(stack, "status", "no-such-run")
    assert missing.exit_code == 2
    assert "no-such-run" in missing.output


DEPLOY_FLOW = """\
apiVersion: shipflow/v1
name: NAME
stage: cli-test
target:
  kind: local
  services:
    web:
      command: [python, APP, --port, "{port}", --version, "{image}"]
      port: PORT
      termination_grace: 2s
      probes:
        readiness: {http: {path: /healthz}, period: 200ms, failure_threshold: 3}
args: {image: {default: v1}}
steps:
  - deploy: {id: web, service: web, image: "${args.image}"}
"""

#: Instance pids of services the tests deployed: the stack must stop them too.
SERVICE_PIDS: list[int] = []


def test_a_local_deploy_runs_on_the_stacks_runtime(stack: EmbeddedStack, tmp_path: Path) -> None:
    port = free_ports(1)[0]
    app_path = Path(__file__).resolve().parents[2] / "infra" / "demo" / "app.py"
    text = DEPLOY_FLOW.replace("APP", str(app_path)).replace("PORT", str(port))
    flow = apply(stack, tmp_path, text)
    result = cli(stack, "run", flow, "--arg", "image=v7", "--follow")
    assert result.exit_code == 0, result.output
    assert re.search(r"✔ web deploy  succeeded", result.output), result.output
    assert httpx.get(f"http://127.0.0.1:{port}/version").json()["version"] == "v7"
    key = (stack.data_dir / "runtime" / "runtime.key").read_text().strip()
    service = httpx.get(
        f"{stack.runtime_url}/services/web", headers={"Authorization": f"Bearer {key}"}
    ).json()
    SERVICE_PIDS.extend(i["pid"] for i in service["instances"])
    assert SERVICE_PIDS and all(_alive(pid) for pid in SERVICE_PIDS)


def test_demo_judges_a_scenario_that_goes_wrong(stack: EmbeddedStack) -> None:
    """A run that ends otherwise than expected, or whose check fails, fails the demo."""
    wrong = [
        # The broken version is rolled back, so expecting success must fail.
        Scenario("broken, expected to pass", "demo", {**BASE_ARGS, "version": "v9-broken"},
                 RunState.SUCCEEDED),
        # It succeeds, but the check expects a database it cannot have.
        Scenario("good, wrong check", "demo", {**BASE_ARGS, "version": "v8"},
                 RunState.SUCCEEDED, lambda ctx, status: [] if ctx.database()[0] == 99 else ["db"]),
    ]  # fmt: skip
    sink = NotifySink().start()
    console = Console(record=True, width=150)
    try:
        with ApiClient(stack.api_url, stack.token) as client:
            ctx = DemoContext(
                client, sink, stack.data_dir, f"127.0.0.1:{stack.api_port}",
                ports=dict(zip(DEFAULT_PORTS, free_ports(len(DEFAULT_PORTS)), strict=True)),
            )
            apply_flows(ctx, FLOW_FILES, console)
            outcomes = run_scenarios(ctx, wrong, console)
    finally:
        sink.stop()
    assert [(o.state, o.ok) for o in outcomes] == [("rolled_back", False), ("succeeded", False)]
    assert outcomes[0].problems == ["ended rolled_back, expected succeeded"]
    assert outcomes[1].problems == ["db"]
    assert "✘ ended rolled_back, expected succeeded" in console.export_text()
    assert ctx.database()[0] == 3  # v9-broken's migration was undone, v8 migrated to schema 3
    assert ctx.serving("web") == {"v8"}
    assert sink.messages() == ["demo version v8 is live"]


def _processes_in_groups(groups: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in groups:
            found.append(int(entry.name))
    return found


def test_zz_stop_leaves_no_process(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs last in this module: stopping the stack ends every child and its group.

    The user's shell holds a `SHIPFLOW_RUNTIME_KEY` that is not the runtime's (which
    never sees it): stopping must use the runtime's own key and still stop everything.
    """
    monkeypatch.setenv("SHIPFLOW_RUNTIME_KEY", "a-key-from-the-users-shell-" + "w" * 20)
    pids = stack.pids()
    groups = {pid for name, pid in pids.items() if name != "s3"}
    assert all(_alive(pid) for pid in pids.values())
    order: list[str] = []
    stop_child = stack._stop_child

    def recording(child: Child) -> None:
        order.append(child.name)
        stop_child(child)

    stack._stop_child = recording  # type: ignore[method-assign]
    stack.stop()
    assert order == ["api", "worker", "s3", "runtime", "temporal"]  # reverse of start
    assert SERVICE_PIDS, "the deploy test must run before this one"
    assert [pid for pid in SERVICE_PIDS if _alive(pid)] == []  # services stopped too
    assert stack.children == []
    assert [name for name, pid in pids.items() if _alive(pid)] == []
    assert _processes_in_groups(groups) == []
    stack.stop()  # idempotent
    # The data dir's lock is released: the next stack on it can start.
    following = EmbeddedStack(stack.data_dir)
    following._lock_data_dir()
    following.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")
