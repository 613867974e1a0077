"""`shipflow flow graph`: the compiled plan as a tree, Mermaid or dot; `flow validate --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from shipflow.infra.cli.main import app

FLOWS = Path(__file__).resolve().parents[2] / "infra" / "flows"
CORPUS = Path(__file__).parent / "corpus"
runner = CliRunner()


def test_tree_shows_every_step_with_its_defaults() -> None:
    # A process of its own: the CLI's console takes COLUMNS when it is imported, and in this
    # test process another test may have imported it at another width first.
    shipflow = Path(sys.executable).parent / "shipflow"
    result = subprocess.run(
        [str(shipflow), "flow", "graph", str(FLOWS / "demo.yaml")],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "demo → demo"
    text = result.stdout
    for step in ("db-backup backup", "migrate migrate", "web deploy", "admin deploy", "smoke check"):
        assert step in text
    assert "undo: restore db-backup" in text and "retries 2, timeout 1h" in text
    assert any(line.strip().startswith(("├── parallel", "│   ├── web")) for line in lines)


def test_mermaid_chains_sequences_and_fans_parallel_branches_out_and_in() -> None:
    result = runner.invoke(app, ["flow", "graph", str(FLOWS / "demo.yaml"), "--format", "mermaid"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "flowchart TD"
    nodes = {line.split("[", 1)[0].strip(): line for line in lines if '["' in line}
    by_id = {line.split('["', 1)[1].split(" ", 1)[0]: name for name, line in nodes.items()}
    edge = lambda a, b: f"  {by_id[a]} --> {by_id[b]}"  # noqa: E731
    assert edge("db-backup", "migrate") in lines
    assert edge("migrate", "web") in lines and edge("migrate", "admin") in lines
    assert edge("web", "smoke") in lines and edge("admin", "smoke") in lines
    assert edge("web", "admin") not in lines
    assert f"  {by_id['migrate']} -.->|undo: restore| {by_id['db-backup']}" in lines


def test_dot_is_a_digraph_with_dashed_undo_links() -> None:
    path = FLOWS / "web-app-with-migration.yaml"
    result = runner.invoke(app, ["flow", "graph", str(path), "--format", "dot"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith('digraph "web-app" {')
    assert '[style=dashed, label="undo: restore"];' in result.stdout
    assert result.stdout.rstrip().endswith("}")


def test_graph_of_a_broken_flow_prints_its_problems_and_exits_2() -> None:
    path = CORPUS / "01-step-kind-typo.yaml"
    result = runner.invoke(app, ["flow", "graph", str(path)])
    assert result.exit_code == 2
    assert "did you mean deploy?" in result.stdout
    assert result.stderr.startswith(f"error: {path} is not a valid flow (1 problem)")


def test_validate_json_lists_problems_with_positions_and_suggestions() -> None:
    good, bad = FLOWS / "demo.yaml", CORPUS / "02-field-typo.yaml"
    result = runner.invoke(app, ["flow", "validate", "--json", str(good), str(bad)])
    assert result.exit_code == 2
    first, second = json.loads(result.stdout)
    assert first == {"file": str(good), "ok": True, "name": "demo", "steps": 6, "problems": []}
    assert second["ok"] is False and second["name"] is None
    assert {"loc": "steps[0].deploy.imgae", "msg": "unknown field", "line": 10, "column": 37,
            "suggestion": "image"} in second["problems"]
