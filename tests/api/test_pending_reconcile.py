"""Runs left `pending` by an API that died between recording a run and starting it.

The rows are written straight into the database, as the dead API left them; then the
API starts, and its reconciler must settle every stale row from what Temporal knows.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session
from temporalio.client import Client

from shipflow.activities.core.db import make_engine
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import Run, utcnow
from shipflow.api.runs_index import START_FAILED, insert_run
from tests.api.conftest import api_client
from tests.helpers import finish, new_worker, start_flow, wait_until

FLOW = """
apiVersion: shipflow/v1
name: pending-{tag}
stage: pending-test
steps:
  - wait: {{id: pause, duration: 10ms}}
"""


def _row(run_id: str, age_s: float) -> Run:
    return Run(
        run_id=run_id,
        flow="pending",
        stage="pending-test",
        state="pending",
        created_at=utcnow() - timedelta(seconds=age_s),
    )


def _state(settings: Settings, run_id: str) -> tuple[str, str | None]:
    engine = make_engine(settings.sqlalchemy_url())
    try:
        with Session(engine) as session:
            row = session.get(Run, run_id)
            assert row is not None
            return row.state, row.error
    finally:
        engine.dispose()


async def test_stale_pending_rows_are_settled_after_api_start(
    temporal_client: Client, db_settings: Settings, tmp_path: Path
) -> None:
    settings = db_settings.model_copy(
        update={"pending_grace_s": 30.0, "pending_reconcile_interval_s": 0.2}
    )
    tag = uuid.uuid4().hex[:8]
    # A run that did start on Temporal and finished, recorded by a worker on another
    # database: only the reconciler can tell this API's index what became of it.
    elsewhere = settings.model_copy(
        update={"data_dir": tmp_path / "elsewhere", "database_url": None}
    )
    async with new_worker(temporal_client, elsewhere):
        handle = await start_flow(temporal_client, elsewhere, FLOW.format(tag=tag))
        assert (await finish(handle)).state == "succeeded"
    started = handle.id
    never_started = f"pending-{tag}-never"
    fresh = f"pending-{tag}-fresh"
    engine = make_engine(settings.sqlalchemy_url())
    try:
        insert_run(engine, _row(started, age_s=600))
        insert_run(engine, _row(never_started, age_s=600))
        insert_run(engine, _row(fresh, age_s=0))  # a start in progress: left alone
    finally:
        engine.dispose()

    async with api_client(settings):
        await wait_until(lambda: _state(settings, never_started)[0] != "pending", timeout=20)
        await wait_until(lambda: _state(settings, started)[0] != "pending", timeout=20)
        state, error = _state(settings, never_started)
        assert state == "failed"
        assert error is not None and error.startswith(START_FAILED), error
        assert "before starting it" in error
        assert _state(settings, started) == ("succeeded", None)
        assert _state(settings, fresh) == ("pending", None)


async def test_a_redelivery_restarts_a_reconciled_never_started_run(
    temporal_client: Client, settings: Settings
) -> None:
    """The reason starts like a failed start's, so the same run id may be started again."""
    settings = settings.model_copy(
        update={"pending_grace_s": 0.0, "pending_reconcile_interval_s": 0.2}
    )
    run_id = f"pending-{uuid.uuid4().hex[:8]}-again"
    engine = make_engine(settings.sqlalchemy_url())
    try:
        insert_run(engine, _row(run_id, age_s=5))
        async with api_client(settings):
            await wait_until(lambda: _state(settings, run_id)[0] == "failed", timeout=20)
        insert_run(engine, _row(run_id, age_s=0))
        assert _state(settings, run_id) == ("pending", None)
    finally:
        engine.dispose()
