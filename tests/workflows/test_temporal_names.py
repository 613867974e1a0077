"""Temporal names are the wire contract with running workflows: moving or renaming a module
must never change them. A workflow's name is its class name and an activity's is explicit,
so they survive `shipflow.*` and the move of modules between layers; this pins them so that
a later change (a `@activity.defn` without `name=` on a renamed method, a renamed class)
fails here instead of stranding in-flight runs on workers that no longer know their names."""

from __future__ import annotations

from sqlalchemy import create_engine
from temporalio import activity, workflow

from shipflow.activities.core.settings import Settings
from shipflow.worker.activities import build_activities
from shipflow.workflows.release import ReleaseWorkflow
from shipflow.workflows.stage_lock import StageLockWorkflow


def test_activity_names_are_unchanged() -> None:
    registered = build_activities(Settings(), create_engine("sqlite://"), None, "queue")  # type: ignore[arg-type]
    names = sorted(activity._Definition.must_from_callable(fn).name for fn in registered)
    assert names == [
        "backup.create", "backup.restore", "check.probe", "deploy.abort_kept", "deploy.promote_pause",
        "deploy.resolve_promotion",
        "deploy.rollout", "job.run", "lock.acquire", "lock.closed_runs", "notify.run_event",
        "notify.send",
        "records.run",
    ]


def test_workflow_names_and_handlers_are_unchanged() -> None:
    release = workflow._Definition.must_from_class(ReleaseWorkflow)
    lock = workflow._Definition.must_from_class(StageLockWorkflow)
    assert (release.name, lock.name) == ("ReleaseWorkflow", "StageLockWorkflow")
    assert (sorted(release.queries), sorted(release.signals), sorted(release.updates)) == (
        ["status"], ["lock_granted", "lock_position"], ["approve", "promote", "reject"]
    )
    assert (sorted(lock.queries), sorted(lock.signals), sorted(lock.updates)) == (
        ["state"], ["release"], ["acquire"]
    )
