"""A run's local activities never wait for a thread behind long regular activities.

A local activity (the run's runs-index records, the promotion lookup) holds its run's
workflow task open until it returns. The worker runs its non-async activities, regular and
local alike, on one thread pool; when that pool was only as large as the regular
activities' slots, a worker busy with as many rollouts, jobs or backups as it has slots had
no thread left for a local activity, and every other run on it stood still (no record, no
next step, no end) until one of those long activities ended.
"""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session
from temporalio.client import Client

from shipflow.activities.core.db import make_engine
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import Run
from shipflow.activities.targets.local.process import pid_alive
from tests.helpers import finish, new_worker, start_flow, wait_until

LONG = """
apiVersion: shipflow/v1
name: long-job
stage: slots-long
steps:
  - migrate: {{id: m, command: [sh, -c, 'echo $$ > {pidfile}; exec sleep 120']}}
"""

QUICK = """
apiVersion: shipflow/v1
name: quick
stage: slots-quick
concurrency: allow  # no stage lock: taking one is a regular activity, and the job holds the slot
steps:
  - wait: {id: w, duration: 1s}
"""


async def test_runs_go_on_while_every_activity_slot_holds_a_long_job(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"worker_activity_slots": 1})
    engine = make_engine(settings.sqlalchemy_url())
    pidfile = tmp_path / "job.pid"

    def indexed(run_id: str) -> str | None:
        with Session(engine) as session:
            row = session.get(Run, run_id)
            return None if row is None else str(row.state)

    async with new_worker(temporal_client, settings):
        long_run = await start_flow(
            temporal_client, settings, LONG.format(pidfile=pidfile), record_start=True
        )
        # The job holds the worker's only regular slot (and, before the fix, its only thread).
        await wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=30)
        job_pid = int(pidfile.read_text())

        quick = await start_flow(temporal_client, settings, QUICK, record_start=True)
        await wait_until(lambda: indexed(quick.id) == "succeeded", timeout=30)
        assert (await finish(quick)).state == "succeeded"
        assert pid_alive(job_pid), "the long job ended: the quick run proved nothing"
        assert indexed(long_run.id) == "running"

        await long_run.cancel()
        status = await finish(long_run)
    assert status.state == "cancelled"
    await wait_until(lambda: not pid_alive(job_pid), timeout=30)
    engine.dispose()
