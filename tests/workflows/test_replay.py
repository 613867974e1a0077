"""Replay recorded histories against today's interpreter: a change to the order of its
commands fails here, loudly, instead of breaking runs in flight (use workflow.patched())."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from shipflow.activities.core.client import make_data_converter
from shipflow.activities.core.codec import parse_keys
from shipflow.activities.core.settings import Settings
from shipflow.workflows.release import ReleaseWorkflow
from tests.conftest import TEST_PAYLOAD_KEYS
from tests.helpers import new_worker, run_flow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_histories_to_replay() -> None:
    assert len(HISTORIES) >= 2


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_replay(path: Path) -> None:
    # The converter every client uses: histories recorded in clear (before encryption)
    # pass through its codec; encrypted ones decrypt with the session's test key.
    converter = make_data_converter(parse_keys(TEST_PAYLOAD_KEYS, source="tests"))
    replayer = Replayer(workflows=[ReleaseWorkflow], data_converter=converter)
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer.replay_workflow(history)
    assert result.replay_failure is None


async def test_replay_of_an_encrypted_history(temporal_client: Client, settings: Settings) -> None:
    """Today's histories are encrypted: the Replayer needs the clients' converter (with the
    key) to replay them, and the plain one cannot read them."""
    flow = """
apiVersion: shipflow/v1
name: replay-encrypted
stage: test
steps:
  - migrate: {id: one, command: [sh, -c, "echo replayed"]}
"""
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, flow)
    assert status.state == "succeeded"
    history = await temporal_client.get_workflow_handle(status.run_id).fetch_history()
    assert base64.b64encode(b"binary/encrypted").decode() in history.to_json()

    converter = make_data_converter(parse_keys(TEST_PAYLOAD_KEYS, source="tests"))
    replayed = await Replayer(
        workflows=[ReleaseWorkflow], data_converter=converter
    ).replay_workflow(history)
    assert replayed.replay_failure is None
    plain = Replayer(workflows=[ReleaseWorkflow], data_converter=pydantic_data_converter)
    failed = await plain.replay_workflow(history, raise_on_replay_failure=False)
    assert failed.replay_failure is not None
