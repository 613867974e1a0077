"""A run records its live states in the runs index (patch `index-run-states`): one local
activity per change of the run's state, whatever the number of steps, and its history
replays."""

from __future__ import annotations

from sqlmodel import Session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Replayer

from shipflow.activities.core.client import make_data_converter
from shipflow.activities.core.codec import parse_keys
from shipflow.activities.core.db import make_engine
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import Run
from shipflow.workflows.release import ApproveInput, ReleaseWorkflow
from tests.conftest import TEST_PAYLOAD_KEYS
from tests.helpers import finish, new_worker, start_flow, wait_until

FLOW = """
apiVersion: shipflow/v1
name: indexed
stage: indexed
concurrency: queue
steps:
  - migrate: {id: a, command: ["true"]}
  - migrate: {id: b, command: ["true"]}
  - approve: {id: go}
  - migrate: {id: c, command: ["true"]}
  - migrate: {id: d, command: ["true"]}
"""


def _local_activity_markers(history: object) -> int:
    return sum(
        1
        for e in history.events  # type: ignore[attr-defined]
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    )


async def test_live_states_are_recorded_few_times_and_replay(
    temporal_client: Client, settings: Settings
) -> None:
    engine = make_engine(settings.sqlalchemy_url())

    def indexed(run_id: str) -> str | None:
        with Session(engine) as session:
            row = session.get(Run, run_id)
            return None if row is None else str(row.state)

    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, FLOW, record_start=True)
        await wait_until(lambda: indexed(handle.id) == "waiting", timeout=30, interval=0.05)
        await handle.execute_update(ReleaseWorkflow.approve, ApproveInput(step="go"))
        status = await finish(handle)
    assert status.state == "succeeded"
    assert indexed(handle.id) == "succeeded"
    history = await handle.fetch_history()
    # start (pending), running, waiting, running, final: five records for five actions, and
    # as many for five hundred.
    assert _local_activity_markers(history) == 5
    converter = make_data_converter(parse_keys(TEST_PAYLOAD_KEYS, source="tests"))
    replayed = await Replayer(workflows=[ReleaseWorkflow], data_converter=converter).replay_workflow(
        history
    )
    assert replayed.replay_failure is None
    engine.dispose()
