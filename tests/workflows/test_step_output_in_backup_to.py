"""A step output quoted in a backup's `to:` is data: its `${env.X}` is never the worker's value.

Regression (review of issue #9): the interpreter decoded `to` to plain text before the
backup activity resolved `${env.X}` in it, so a step output (a command's output, an
approver's comment) reading `${env.SECRET}` became the secret, in the backup's URL (history,
`GET /runs/{id}`) and in the name of the folder on disk.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from tests.helpers import new_worker, run_flow

SECRET = "Hunter2-from-the-worker"


async def test_a_step_output_in_backup_to_is_not_expanded_on_the_worker(
    temporal_client: Client, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SF_TEST_SECRET", SECRET)
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    store = tmp_path / "bk"
    text = f"""apiVersion: shipflow/v1
name: out-in-to
stage: test
steps:
  - migrate: {{id: m, command: [printf, "%s", "$${{env.SF_TEST_SECRET}}"]}}
  - backup: {{id: b, database: "sqlite:///{db}", to: "file://{store}/${{steps.m.output}}/"}}
"""
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    steps = {step.id: step for step in status.steps}
    assert status.state == "succeeded", steps["b"].error
    assert steps["m"].output["output"] == "${env.SF_TEST_SECRET}"  # what the command printed
    url = steps["b"].output["url"]
    # Used as data: percent-encoded as one path component, never resolved on the worker.
    assert url.startswith(f"file://{store}/%24%7Benv.SF_TEST_SECRET%7D/")
    assert SECRET not in status.model_dump_json()
    assert not any(SECRET in str(path) for path in store.rglob("*"))


async def test_an_authors_literal_dollar_brace_in_backup_to_stays_literal(
    temporal_client: Client, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`$${` in `to:` is a literal `${`: decoded once, on the worker, never resolved after."""
    monkeypatch.setenv("SF_TEST_SECRET", SECRET)
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    store = tmp_path / "bk"
    text = f"""apiVersion: shipflow/v1
name: literal-in-to
stage: test
steps:
  - backup: {{id: b, database: "sqlite:///{db}", to: "file://{store}/$${{env.SF_TEST_SECRET}}/"}}
"""
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    (step,) = status.steps
    assert status.state == "succeeded", step.error
    assert step.output["url"].startswith(f"file://{store}/${{env.SF_TEST_SECRET}}/")
    assert SECRET not in status.model_dump_json()
