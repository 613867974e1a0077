"""Golden tests: a corpus of broken flows, each a mistake a newcomer makes, and what we say.

Each `corpus/NAME.yaml` has a `corpus/NAME.expected` holding exactly what
`shipflow flow validate` prints for it: one line per problem, `FILE:LINE:COLUMN: PATH:
problem; did you mean X?`. A change of wording, position or suggestion shows up as a
diff here; regenerate with `SHIPFLOW_UPDATE_GOLDEN=1` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shipflow.infra.cli.main import app
from shipflow.workflows.validation import validate_text

CORPUS = Path(__file__).parent / "corpus"
FLOWS = sorted(CORPUS.glob("*.yaml"))
UPDATE = os.environ.get("SHIPFLOW_UPDATE_GOLDEN") == "1"


def rendered(path: Path) -> str:
    report = validate_text(path.read_text())
    return "".join(problem.render(path.name) + "\n" for problem in report.problems)


def test_the_corpus_is_large_enough() -> None:
    assert len(FLOWS) >= 30


@pytest.mark.parametrize("path", FLOWS, ids=[p.stem for p in FLOWS])
def test_golden(path: Path) -> None:
    expected_file = path.with_suffix(".expected")
    got = rendered(path)
    if UPDATE:
        expected_file.write_text(got)
    assert got, f"{path.name} is meant to be broken, but it validates"
    assert got == expected_file.read_text()


def test_cli_prints_the_golden_lines_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """`shipflow flow validate` over several files: every problem of every file, exit 2."""
    monkeypatch.chdir(CORPUS)
    names = [p.name for p in FLOWS[:5]]
    result = CliRunner().invoke(app, ["flow", "validate", *names])
    assert result.exit_code == 2, result.output
    assert result.stdout == "".join(rendered(CORPUS / name) for name in names)
    count = result.stdout.count("\n")
    assert result.stderr == f"error: {count} problems in 5 files\n"
