"""The one protocol every deploy target implements (`local`, `kubernetes`).

Activities never talk to a platform directly: they call a Target. A Target is
synchronous (the platform clients block) and is called from sync activities on the
worker's thread pool. Long operations report progress through `Progress`, which the
activity turns into Temporal heartbeats; an attempt that follows a lost worker gets the
last reported progress back in `Progress.resume` and continues from it.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

from shipflow.activities.core.group_select import GroupSource
from shipflow.workflows.spec import Probes, Strategy


class TargetError(Exception):
    """A target failed. `retryable=False` makes the step fail without further attempts."""

    retryable = True

    def __init__(self, message: str, *, retryable: bool | None = None):
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class NotFound(TargetError):
    retryable = False


class Forbidden(TargetError):
    retryable = False


class Invalid(TargetError):
    retryable = False


class Conflict(TargetError):
    retryable = True


class Transient(TargetError):
    retryable = True


class StateKept(Transient):
    """A retryable failure after which the target kept its work for the step's next attempt
    (a Kubernetes canary's or green Deployment, its state and traffic split). Should no
    attempt come (the run is cancelled in the back-off), the step aborts it
    (`deploy.abort_kept`)."""


class RolloutFailed(TargetError):
    """The new version did not become ready in time; the old one kept serving."""

    retryable = False


class JobFailed(TargetError):
    """A job (migration, undo command) exited unsuccessfully. Retried per the step's retries."""

    def __init__(self, message: str, *, exit_code: int | None, output: str, retryable: bool = True):
        super().__init__(message, retryable=retryable)
        self.exit_code = exit_code
        self.output = output


class Progress(Protocol):
    """What a target gets to report progress and to notice cancellation."""

    @property
    def resume(self) -> dict[str, Any] | None:
        """The last progress an earlier attempt of this step reported, if any."""
        ...

    def beat(self, details: dict[str, Any]) -> None:
        """Report progress (JSON-able). Also the moment a cancellation is noticed."""
        ...

    def cancelled(self) -> bool:
        """True once the run asked this step to stop; the target cleans up and raises."""
        ...


def _env_keys_only(args: Any) -> Any:
    """repr/str of a request shows the keys of its `env`, never the values (group secrets,
    resolved `${env.X}`): a request printed in a log or a traceback leaks nothing."""
    for name, value in args:
        if name == "redact":
            yield name, f"<{len(value)} values>"
        else:
            yield name, (sorted(value) if name == "env" else value)


class RolloutRequest(BaseModel):
    run_id: str
    step_id: str
    service: str
    image: str
    container: str | None = None
    probes: Probes | None = None
    progress_deadline_s: float | None = None
    strategy: Strategy | None = None
    env: dict[str, str] = Field(
        default_factory=dict, description="from secret/config groups, resolved on the worker"
    )
    groups: dict[str, int] = Field(default_factory=dict, description="the group versions in env")
    group_sources: list[GroupSource] = Field(
        default_factory=list,
        description="kubernetes: each group version to reference (a Secret or ConfigMap)",
    )
    redact: list[str] = Field(
        default_factory=list,
        description="secret values in `env` (secret groups): a target that keeps the "
        "service's output masks them before it is stored",
    )
    another_attempt: bool = Field(
        False,
        description="a retryable failure of this attempt is followed by another attempt of "
        "the step: a Kubernetes canary or blue-green then keeps its state and traffic split "
        "for it to resume, instead of aborting",
    )

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        return _env_keys_only(super().__repr_args__())


class RolloutResult(BaseModel):
    service: str
    image: str
    previous_image: str | None
    instances: list[dict[str, Any]] = Field(default_factory=list, description="what runs where")
    duration_s: float = 0.0
    strategy: str | None = None
    rounds: int | None = None
    downtime_s: float | None = None


class JobRequest(BaseModel):
    run_id: str
    step_id: str
    name: str = Field(description="unique per run and step, safe as a Kubernetes name")
    command: list[str]
    image: str | None = None
    env: dict[str, str] = {}
    cwd: str | None = None
    service_account: str | None = None
    timeout_s: float | None = None
    retries: int = 0
    execution: str = Field(
        "", description="Temporal's id of the workflow execution: tells apart two runs "
        "that reuse a run id, so a job record of one is never taken for the other's"
    )
    group_sources: list[GroupSource] = Field(
        default_factory=list,
        description="kubernetes: each group version to reference (a Secret or ConfigMap)",
    )
    redact: list[str] = Field(
        default_factory=list,
        description="secret values the command was given (groups, `${env.X}`): a target "
        "that keeps the command's output masks them before it is stored",
    )

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        return _env_keys_only(super().__repr_args__())


class JobResult(BaseModel):
    exit_code: int
    output: str = Field(description="the tail of the job's output")
    duration_s: float


class Target(Protocol):
    """A place services run. Implementations: `LocalTarget`, `KubernetesTarget`."""

    def current_image(self, service: str, *, container: str | None = None) -> str | None:
        """The image the service runs now, or None if it was never deployed."""
        ...

    def rollout(self, request: RolloutRequest, progress: Progress) -> RolloutResult:
        """Roll the service out to `request.image`, health-gated, and wait until done.

        Raises:
            RolloutFailed: it did not become ready in time (the old version still serves).
            TargetError: anything else, retryable or not.
        """
        ...

    def run_job(self, request: JobRequest, progress: Progress) -> JobResult:
        """Run a one-off command (migration, undo) to completion.

        Raises:
            JobFailed: it ran and failed.
            TargetError: it could not run.
        """
        ...
