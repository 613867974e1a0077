"""What the API tells a caller whose run the stage's concurrency policy refused.

The stage lock decides atomically inside Temporal; the API only waits, briefly, for
the run to hear the lock's answer so that `forbid` becomes a 409 naming the run that
holds the stage. The refused run stays recorded (failed, `blocked_by` set).
"""

from __future__ import annotations

import asyncio
import time

from temporalio.client import Client

from shipflow.activities.core.starter import read_status
from shipflow.workflows.status import RunState, RunStatus

DECISION_TIMEOUT_S = 15.0


async def wait_for_admission(
    client: Client, run_id: str, timeout_s: float = DECISION_TIMEOUT_S
) -> RunStatus | None:
    """The run's status once the lock answered (or None if it did not in time)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while time.monotonic() < deadline:
        status = await read_status(client, run_id)
        if status.state != RunState.PENDING:
            return status
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
    return None
