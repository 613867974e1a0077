"""The steps of a flow: each a one-key mapping (`- deploy: {...}`) whose key selects the
model, their undo, the kinds and their outputs, and walking a tree of steps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from shipflow.workflows.durations import Duration
from shipflow.workflows.spec.base import STEP_ID_PATTERN, GroupName, StrictModel
from shipflow.workflows.spec.probes import HttpCheck, Probes, TcpCheck
from shipflow.workflows.spec.strategies import Strategy

# ---------------------------------------------------------------- undo


class RestoreUndo(StrictModel):
    restore: str = Field(description="id of a backup step that runs earlier")
    owners: Literal["keep", "drop"] = Field(
        "keep",
        description="PostgreSQL: restore the backup's object owners and grants (keep; the "
        "roles must exist) or leave everything owned by the restoring user, no grants (drop)",
    )


class CommandUndo(StrictModel):
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = {}
    cwd: str | None = None
    image: str | None = None


Undo = Literal["none"] | RestoreUndo | CommandUndo


# ---------------------------------------------------------------- steps


class StepBase(StrictModel):
    id: str = Field(pattern=STEP_ID_PATTERN, max_length=63)
    retries: int | None = Field(None, ge=0, le=100, description="retries after the first attempt")
    timeout: Duration | None = None
    undo: Undo | None = None
    summary: str | None = Field(None, description="shown next to the step in the UI")


class BackupSpec(StepBase):
    database: str = Field(description="postgresql://... or sqlite:///path; ${env.X} for secrets")
    to: str = Field(
        pattern=r"^(s3://[^/]+(/.*)?|file://(/|\$\{\s*env\.).*)$",
        description="s3://bucket/prefix/, or file:///abs/dir/ (a directory on the worker; "
        "file://${env.X}/dir/ allowed)",
    )
    endpoint: str | None = None
    keep: int | None = Field(None, ge=1)
    sse: str | None = Field(None, description="server-side encryption, e.g. AES256 or aws:kms")
    storage_class: str | None = None


class MigrateSpec(StepBase):
    command: list[str] = Field(min_length=1)
    image: str | None = None
    env: dict[str, str] = {}
    cwd: str | None = None
    service_account: str | None = None
    env_from: list[GroupName] = Field(
        [], max_length=50, description="secret/config groups whose keys become its environment"
    )
    tags: list[GroupName] = Field(
        [], max_length=50, description="groups sharing a tag with these (or the flow's) apply too"
    )


class DeploySpec(StepBase):
    service: str
    image: str
    container: str | None = None
    probes: Probes | None = None
    progress_deadline: Duration | None = None
    strategy: Strategy | None = Field(None, description="overrides the service's strategy")


class PromoteSpec(StepBase):
    service: str
    from_: str = Field(alias="from", description="the stage whose last image is promoted")
    container: str | None = None
    probes: Probes | None = None
    progress_deadline: Duration | None = None
    strategy: Strategy | None = Field(None, description="overrides the service's strategy")


class CheckSpec(StepBase):
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    period: Duration = Field(default="1s", validate_default=True)  # type: ignore[assignment]
    probe_timeout: Duration = Field(default="2s", validate_default=True)  # type: ignore[assignment]
    initial_delay: Duration = Field(default="0s", validate_default=True)  # type: ignore[assignment]
    success_threshold: int = Field(1, ge=1)
    failure_threshold: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _one_probe(self) -> CheckSpec:
        if (self.http is None) == (self.tcp is None):
            raise ValueError("a check needs exactly one of http or tcp")
        return self


class ApproveSpec(StepBase):
    message: str | None = None
    distinct_from_trigger: bool = False


class WaitSpec(StepBase):
    duration: Duration


class NotifySpec(StepBase):
    webhook: str = Field(pattern=r"^(https?://|\$\{)")
    message: str
    headers: dict[str, str] = {}


class BackupStep(StrictModel):
    backup: BackupSpec


class MigrateStep(StrictModel):
    migrate: MigrateSpec


class DeployStep(StrictModel):
    deploy: DeploySpec


class PromoteStep(StrictModel):
    promote: PromoteSpec


class CheckStep(StrictModel):
    check: CheckSpec


class ApproveStep(StrictModel):
    approve: ApproveSpec


class WaitStep(StrictModel):
    wait: WaitSpec


class NotifyStep(StrictModel):
    notify: NotifySpec


class ParallelStep(StrictModel):
    parallel: list[Step] = Field(min_length=1)


class SequenceStep(StrictModel):
    sequence: list[Step] = Field(min_length=1)


ACTION_KINDS = ("backup", "migrate", "deploy", "promote", "check", "approve", "wait", "notify")
GROUP_KINDS = ("parallel", "sequence")
STEP_KINDS = ACTION_KINDS + GROUP_KINDS

#: What each step kind puts in its output, for `${steps.<id>.<output>}`.
STEP_OUTPUTS: dict[str, tuple[str, ...]] = {
    "backup": ("key", "url", "size", "sha256", "duration_s"),
    "migrate": ("exit_code", "output", "duration_s"),
    "deploy": ("service", "image", "previous_image", "duration_s"),
    "promote": ("service", "image", "previous_image", "from_stage", "duration_s"),
    "check": ("successes", "failures", "last_status", "duration_s"),
    "approve": ("approved_by", "comment", "approved_at"),
    "wait": ("duration_s",),
    "notify": ("status_code",),
}


def _step_key(value: Any) -> str | None:
    """Pick the step model from the single key the user wrote."""
    if isinstance(value, dict):
        keys = [k for k in value if k in STEP_KINDS]
        if len(keys) == 1 and len(value) == 1:
            return keys[0]
        return None
    for kind in STEP_KINDS:
        if hasattr(value, kind) and len(type(value).model_fields) == 1:
            return kind
    return None


Step = Annotated[
    Annotated[BackupStep, Tag("backup")]
    | Annotated[MigrateStep, Tag("migrate")]
    | Annotated[DeployStep, Tag("deploy")]
    | Annotated[PromoteStep, Tag("promote")]
    | Annotated[CheckStep, Tag("check")]
    | Annotated[ApproveStep, Tag("approve")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[NotifyStep, Tag("notify")]
    | Annotated[ParallelStep, Tag("parallel")]
    | Annotated[SequenceStep, Tag("sequence")],
    Discriminator(
        _step_key,
        custom_error_type="step_kind",
        custom_error_message="a step is a mapping with exactly one key, one of: "
        + ", ".join(STEP_KINDS),
    ),
]

ParallelStep.model_rebuild()
SequenceStep.model_rebuild()


def step_kind(step: BaseModel) -> str:
    """The key a step was written with (`deploy`, `parallel`, ...)."""
    (name,) = type(step).model_fields
    return name


def step_body(step: BaseModel) -> Any:
    return getattr(step, step_kind(step))


def walk_steps(steps: list[Any], path: str) -> Iterator[tuple[str, str, Any]]:
    """Every action step as (path, kind, body), depth first, as written."""
    for index, step in enumerate(steps):
        kind = step_kind(step)
        here = f"{path}[{index}].{kind}"
        body = step_body(step)
        if kind in GROUP_KINDS:
            yield from walk_steps(body, here)
        else:
            yield here, kind, body
