"""Replay recorded histories against today's interpreter: a change to the order of its
commands fails here, loudly, instead of breaking runs in flight (use workflow.patched())."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.conftest import TEST_PAYLOAD_KEYS
from worker.client import make_data_converter
from worker.codec import parse_keys
from workflows.release import ReleaseWorkflow

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
