"""The CLI against a real API over HTTP: apply/diff wording, ids whole at any width, errors with hints.

Each listed repro of issue 14 that concerns the CLI is a test here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from shipflow.infra.cli.client import ApiClient
from tests.authoring.conftest import Served, cli_env, write
from tests.helpers import free_port, wait_until_sync

FLOW = """\
apiVersion: shipflow/v1
name: {name}
stage: staging
args:
  version: {{default: "1"}}
triggers:
  - git: {{repo: org/web, branches: [main]}}
steps:
  - migrate: {{id: migrate, command: [echo, "${{args.version}}"]}}
  - wait: {{id: soak, duration: 1s}}
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_apply_says_created_unchanged_updated(served: Served, tmp_path: Path) -> None:
    name = unique("apply")
    path = write(tmp_path, "flow.yaml", FLOW.format(name=name))
    first = served.run("flow", "apply", str(path))
    assert first.exit_code == 0, first.stderr
    assert first.stdout.strip() == f"created {name} version 1 (stage staging)"
    again = served.run("flow", "apply", str(path))
    assert again.stdout.strip() == f"unchanged {name} version 1 (stage staging)"
    path.write_text(FLOW.format(name=name).replace("duration: 1s", "duration: 2s"))
    changed = served.run("flow", "apply", str(path))
    assert changed.stdout.strip() == f"updated {name} to version 2 (stage staging)"
    listed = served.run("flow", "list")
    assert listed.exit_code == 0 and name in listed.stdout
    as_json = served.run("flow", "list", "--json")
    assert [(f["name"], f["version"]) for f in json.loads(as_json.stdout)] == [(name, 2)]


def test_diff_against_the_applied_version(served: Served, tmp_path: Path) -> None:
    name = unique("diff")
    path = write(tmp_path, "flow.yaml", FLOW.format(name=name))
    before = served.run("flow", "diff", str(path))
    assert before.exit_code == 0, before.stderr
    assert f"{name}: {path} against nothing applied yet" in before.stdout
    assert "+ step migrate: migrate at steps[0].migrate" in before.stdout
    assert served.run("flow", "apply", str(path)).exit_code == 0
    same = served.run("flow", "diff", str(path))
    assert same.stdout.strip() == f"unchanged: {name} (version 1)"

    edited = (
        FLOW.format(name=name)
        .replace("duration: 1s", "duration: 5m")
        .replace("  - wait:", "  - notify: {id: tell, webhook: 'https://h.example/x', message: hi}\n  - wait:")
        .replace("triggers:\n", 'triggers:\n  - cron: "0 3 * * *"\n    id: nightly\n')
        .replace("  - migrate: {id: migrate, command: [echo, \"${args.version}\"]}\n", "")
    )
    path.write_text(edited)
    result = served.run("flow", "diff", str(path))
    lines = result.stdout.splitlines()
    assert lines[0] == f"{name}: {path} against version 1"
    assert "~ step soak: duration 1s -> 5m" in lines
    assert "+ step tell: notify at steps[0].notify" in lines
    assert "- step migrate: migrate at steps[0].migrate" in lines
    assert "+ trigger cron: 0 3 * * *, id: nightly" in lines
    assert f"+ schedule shipflow-{name}-nightly: cron '0 3 * * *' (UTC)" in lines
    as_json = served.run("flow", "diff", str(path), "--json")
    assert '"applied_version": 1' in as_json.stdout


def test_apply_of_a_broken_flow_prints_file_line_column_from_the_api(
    served: Served, tmp_path: Path
) -> None:
    text = FLOW.format(name=unique("broken")).replace("  - wait:", "  - wiat:")
    path = write(tmp_path, "broken.yaml", text)
    result = served.run("flow", "apply", str(path))
    assert result.stdout.strip() == (
        f"{path}:10:5: steps[1]: unknown step kind 'wiat' (one of: backup, migrate, deploy, "
        "promote, check, approve, wait, notify, parallel, sequence); did you mean wait?"
    )
    assert result.stderr.strip() == f"error: the API refused {path}: 1 problem"
    assert result.exit_code == 2


def start_runs(served: Served, flow: str, count: int) -> list[str]:
    with ApiClient(served.url) as client:
        return [str(client.start_run(flow)["run_id"]) for _ in range(count)]


def test_run_ids_are_whole_at_80_and_200_columns(served: Served, tmp_path: Path) -> None:
    """Repro: `shipflow runs` cut run ids at 80 columns, so they could not be copied."""
    short, long = unique("narrow"), unique("a-rather-long-flow-name-for-narrow-terminals")
    for name in (short, long):
        path = write(tmp_path, f"{name}.yaml", FLOW.format(name=name))
        assert served.run("flow", "apply", str(path)).exit_code == 0
    ids = start_runs(served, short, 2) + start_runs(served, long, 1)
    for columns in (80, 200):
        result = served.cli("runs", columns=columns)
        assert result.returncode == 0, result.stderr
        # Every line fits, but for one that is a whole run id (longer ids than fit in a table).
        for line in result.stdout.splitlines():
            assert len(line) <= columns or line.split()[0] in ids, (columns, result.stdout)
        for run_id in ids:
            assert run_id in result.stdout, (columns, result.stdout)
    wide = served.cli("runs", "--wide", columns=80)
    assert "error" in wide.stdout.splitlines()[1] and all(i in wide.stdout for i in ids)
    # At 80 columns the narrow flow's runs still show in a table, its error column left out.
    header = served.cli("runs", "--flow", short, columns=80).stdout.splitlines()[1]
    assert "run_id" in header and "state" in header and "error" not in header


def test_api_address_without_a_scheme_is_accepted(served: Served) -> None:
    """Repro: `SHIPFLOW_API=127.0.0.1:8000` gave "UnsupportedProtocol"."""
    bare = served.url.removeprefix("http://")
    result = served.cli("runs", "--json", env={"SHIPFLOW_API": bare})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("[")


def test_unreachable_api_names_the_url_tried() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "shipflow.infra.cli.main", "runs"],
        env=cli_env(f"127.0.0.1:{port}", 80),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: cannot reach the shipflow API at http://127.0.0.1:{port}")
    assert lines[-1].startswith(f"hint: is the API running at http://127.0.0.1:{port}?")
    assert "Traceback" not in result.stderr


def test_follow_exits_130_on_ctrl_c_and_the_run_goes_on(served: Served, tmp_path: Path) -> None:
    """No worker polls this test's task queue: the run stays pending while it is followed."""
    name = unique("follow")
    path = write(tmp_path, "f.yaml", FLOW.format(name=name))
    assert served.run("flow", "apply", str(path)).exit_code == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "shipflow.infra.cli.main", "run", name, "--follow"],
        env=cli_env(served.url, 120),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("started run "), first
        run_id = first.split()[2]
        wait_until_sync(lambda: run_id in _runs_json(served), timeout=30, what="the run listed")
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 130
    assert process.stderr is not None
    assert f"the run goes on. See it with `shipflow status {run_id}`" in process.stderr.read()


def _runs_json(served: Served) -> str:
    with ApiClient(served.url) as client:
        return str(client.list_runs())
