"""Builds every activity once, with its clients: the one place activities are wired."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import Engine
from temporalio.client import Client

from shipflow.activities.checks import CheckActivities
from shipflow.activities.core.settings import Settings
from shipflow.activities.jobs import JobActivities
from shipflow.activities.locks import LockActivities
from shipflow.activities.notify import NotifyActivities
from shipflow.activities.records import RecordActivities
from shipflow.activities.targets import make_target


def build_activities(
    settings: Settings, engine: Engine, client: Client, task_queue: str
) -> list[Callable[..., Any]]:
    """Every activity callable the worker registers."""
    targets = partial(make_target, settings=settings)
    jobs = JobActivities(targets, logs=engine, settings=settings)
    checks = CheckActivities(logs=engine)
    notify = NotifyActivities(api_url=settings.api_url, ui_url=settings.ui_url)
    records = RecordActivities(engine)
    locks = LockActivities(client, task_queue)
    out: list[Callable[..., Any]] = [
        jobs.run_job,
        checks.probe,
        notify.send,
        notify.run_event,
        records.record_run,
        locks.acquire,
        locks.closed_runs,
    ]
    out += _optional(settings, engine, targets)
    return out


def _optional(
    settings: Settings, engine: Engine, targets: Callable[..., Any]
) -> list[Callable[..., Any]]:
    """Domains added by their own modules (deploy, backup)."""
    out: list[Callable[..., Any]] = []
    # deploy activities
    from shipflow.activities.deploy import DeployActivities

    deploy = DeployActivities(targets, engine, settings)
    out += [deploy.rollout, deploy.resolve_promotion, deploy.promote_pause, deploy.abort_kept]
    # backup activities
    from shipflow.activities.backup.activity import BackupActivities
    from shipflow.activities.s3 import S3Factory

    backups = BackupActivities(S3Factory(settings), settings, logs=engine)
    out += [backups.create, backups.restore]
    return out
