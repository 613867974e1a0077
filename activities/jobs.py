"""Job activities: a `migrate` step, or an `undo: {command}`, run on the flow's target."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.steplogs import StepLogWriter
from shipflow.activities.envrefs import resolve_env, resolve_env_in, secret_values
from shipflow.activities.group_env import NONE, GroupEnv
from shipflow.activities.progress import ActivityProgress
from shipflow.activities.targets.base import JobFailed, JobRequest, Target, TargetError
from shipflow.workflows.io.jobs import RUN_JOB, JobInput, JobOutput
from shipflow.workflows.redaction import redact


def job_name(run_id: str, step_id: str, purpose: str) -> str:
    """A name unique per run and step that is also a valid Kubernetes object name."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"sf-{run_id}-{step_id}-{purpose}".lower()).strip("-")
    if len(base) > 63:
        import hashlib

        digest = hashlib.sha256(base.encode()).hexdigest()[:8]
        base = base[:54].rstrip("-") + "-" + digest
    return base


class _JobProgress(ActivityProgress):
    """A worker that shuts down is not a cancelled run: the command is left to its supervisor
    (local) or its Job (kubernetes), and the execution that resumes the step re-attaches."""

    def __init__(self, resume: dict[str, Any] | None, log: StepLogWriter):
        super().__init__(resume)
        self._log = log
        self.streamed = False

    def cancelled(self) -> bool:
        return activity.is_cancelled() and not activity.is_worker_shutdown()

    def output(self, text: str) -> None:
        """New output of the running command (targets that can stream it call this)."""
        self.streamed = True
        self._log.write(text)


class JobActivities:
    """Given a way to build targets (and the database, for step logs), runs one-off commands."""

    def __init__(
        self,
        targets: Callable[[dict[str, Any]], Target],
        logs: Engine | None = None,
        settings: Settings | None = None,
    ):
        self._targets = targets
        self._logs = logs
        # Groups are read through the same database (none without one: plain commands).
        self._groups = GroupEnv(logs, settings) if logs is not None else None

    @activity.defn(name=RUN_JOB)
    def run_job(self, input: JobInput) -> JobOutput:
        groups = self._groups.for_job(input) if self._groups is not None else NONE
        secrets = secret_values([input.command, input.env]) + groups.secrets
        request = JobRequest(
            run_id=input.context.run_id,
            step_id=input.context.step_id,
            name=job_name(input.context.run_id, input.context.step_id, input.purpose),
            command=[resolve_env(part) for part in input.command],
            image=input.image,
            # Group values under the step's own `env:` (the author's explicit word wins).
            env={**groups.env, **resolve_env_in(input.env)},
            cwd=input.cwd,
            service_account=input.service_account,
            timeout_s=input.timeout_s,
            retries=input.retries,
            execution=activity.info().workflow_run_id or "",
            group_sources=groups.sources,
            redact=secrets,
        )
        target = self._targets(input.target)
        log = StepLogWriter(self._logs, input.context.run_id, input.context.step_id, secrets)
        what = "undo command" if input.purpose != "migrate" else "command"
        log.write(f"{what} (attempt {activity.info().attempt}): {' '.join(input.command)}")
        progress = _JobProgress(input.resume, log)
        try:
            result = target.run_job(request, progress)
        except JobFailed as e:
            if not progress.streamed and e.output:
                log.write(e.output)
            log.write(f"{what} failed: {e}")
            details = {"exit_code": e.exit_code, "output": redact(e.output, secrets)}
            raise ApplicationError(
                redact(str(e), secrets), details, type="JobFailed", non_retryable=not e.retryable
            ) from None
        except TargetError as e:
            log.write(f"{what} failed: {e}")
            raise ApplicationError(
                redact(str(e), secrets), type=type(e).__name__, non_retryable=not e.retryable
            ) from None
        if not progress.streamed and result.output:
            log.write(result.output)
        log.write(f"{what} exited with code {result.exit_code} after {result.duration_s:.1f}s")
        return JobOutput(
            exit_code=result.exit_code,
            output=redact(result.output, secrets),
            duration_s=result.duration_s,
            groups=groups.versions,
        )
