"""`/flows/{name}/backups`: the backups a flow's `backup` steps wrote, listed where they live.

The API reads them with its own settings and environment (the same S3 endpoint,
credentials and `${env.X}` values the worker has), so `shipflow backup list --flow demo`
works from any shell with just the API address: no bucket, endpoint or AWS variables.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import APIRouter, HTTPException, status
from starlette.concurrency import run_in_threadpool
from temporalio.exceptions import ApplicationError

from shipflow.activities.backup.catalog import BackupManifest, list_backups, open_store
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import Flow
from shipflow.activities.envrefs import resolve_env
from shipflow.activities.s3 import S3Factory
from shipflow.api.deps import SessionDep, SettingsDep, Viewer
from shipflow.api.errors import error_responses
from shipflow.workflows.spec import FlowError, load_flow_text, walk_steps

router = APIRouter(
    prefix="/flows/{name}/backups", tags=["backups"], responses=error_responses(401, 403, 404, 422, 503)
)


def backup_targets(source: str) -> list[tuple[str, str | None]]:
    """`(to, endpoint)` of every backup step of a flow, in flow order, without repeats."""
    try:
        spec = load_flow_text(source)
    except FlowError:
        return []
    found = [
        (body.to, body.endpoint)
        for _, kind, body in walk_steps(spec.steps, "steps")
        if kind == "backup"
    ]
    return list(dict.fromkeys(found))


def _list(
    settings: Settings, flow: str, targets: list[tuple[str, str | None]]
) -> list[BackupManifest]:
    factory = S3Factory(settings)
    rows: list[BackupManifest] = []
    for to, endpoint in targets:
        store, prefix = open_store(resolve_env(to), factory, endpoint)
        rows += list_backups(store, prefix, flow)
    rows.sort(key=lambda m: (m.created_at, m.key), reverse=True)
    return rows


@router.get("", response_model=list[BackupManifest])
async def list_flow_backups(
    name: str, _caller: Viewer, session: SessionDep, settings: SettingsDep
) -> list[Any]:
    """The complete backups of the flow, newest first, from every place its steps write to."""
    row = session.get(Flow, name)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no flow named {name!r}")
    targets = backup_targets(row.source)
    try:
        return await run_in_threadpool(_list, settings, name, targets)
    except (ApplicationError, BotoCoreError, ClientError, OSError) as e:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the backups of flow {name!r} could not be listed: {e}",
        ) from None
