"""The example flows in infra/flows/: each validates, and editors can check them against the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shipflow.infra.cli.main import app
from shipflow.workflows.spec import flow_json_schema
from shipflow.workflows.validation import validate_text

FLOWS = Path(__file__).resolve().parents[2] / "infra" / "flows"
EXAMPLES = sorted(FLOWS.glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=./flow.schema.json"


def test_the_three_shapes_are_there() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "demo.yaml",
        "web-app-with-migration.yaml",
        "promote-staging-to-production.yaml",
        "kubernetes-with-jobs.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates_and_names_the_schema(path: Path) -> None:
    text = path.read_text()
    report = validate_text(text)
    assert report.ok, [p.render(path.name) for p in report.problems]
    assert text.splitlines()[0] == MODELINE


def test_the_schema_file_is_the_current_schema() -> None:
    """infra/flows/flow.schema.json is what `shipflow flow schema` prints today.

    A field added to the flow models changes the schema: regenerate the file with
    `shipflow flow schema > infra/flows/flow.schema.json`.
    """
    stored = json.loads((FLOWS / "flow.schema.json").read_text())
    assert stored == flow_json_schema()
    result = CliRunner().invoke(app, ["flow", "schema"])
    assert json.loads(result.stdout) == stored


def test_the_schema_knows_every_step_kind_and_field() -> None:
    schema = flow_json_schema()
    assert {"apiVersion", "name", "stage", "steps", "triggers", "target"} <= set(
        schema["properties"]
    )
    text = json.dumps(schema)
    for kind in ("backup", "migrate", "deploy", "promote", "check", "approve", "wait", "notify"):
        assert f'"{kind}"' in text
