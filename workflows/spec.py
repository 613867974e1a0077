"""The release-flow file, `apiVersion: shipflow/v1`: the public contract, as pydantic models.

Every step is a one-key mapping (`- deploy: {...}`); the key selects the model, so an
error names the path the user wrote, e.g. `steps[2].parallel[0].deploy.image`.
These models only check shape; cross-step rules (unique ids, references, arguments)
live in `workflows.plan`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from workflows.durations import Duration
from workflows.globs import check_glob

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
STEP_ID_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$"


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a flow file must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------- probes


class HttpProbe(StrictModel):
    path: str = "/"
    port: int | None = Field(None, ge=1, le=65535, description="defaults to the service port")
    scheme: Literal["http", "https"] = "http"
    host: str = "127.0.0.1"
    headers: dict[str, str] = {}
    status: list[int] = Field(
        [], description="accepted status codes; empty means 200-399 like Kubernetes"
    )


class TcpProbe(StrictModel):
    port: int | None = Field(None, ge=1, le=65535)
    host: str = "127.0.0.1"


class ExecProbe(StrictModel):
    command: list[str] = Field(min_length=1)


class Probe(StrictModel):
    """One probe with Kubernetes semantics: exactly one of http, tcp or exec."""

    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    exec: ExecProbe | None = None
    initial_delay: Duration = Field(default="0s", validate_default=True)  # type: ignore[assignment]
    period: Duration = Field(default="10s", validate_default=True)  # type: ignore[assignment]
    timeout: Duration = Field(default="1s", validate_default=True)  # type: ignore[assignment]
    success_threshold: int = Field(1, ge=1)
    failure_threshold: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _one_handler(self) -> Probe:
        given = [name for name in ("http", "tcp", "exec") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("a probe needs exactly one of http, tcp or exec")
        return self


class Probes(StrictModel):
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None


# ---------------------------------------------------------------- targets


class LocalService(StrictModel):
    """A service run as local processes behind one readiness-gated front port."""

    command: list[str] = Field(min_length=1, description="argv; {image} and {port} are filled in")
    port: int = Field(ge=1, le=65535, description="the stable front port clients connect to")
    replicas: int = Field(1, ge=1, le=50)
    env: dict[str, str] = {}
    cwd: str | None = None
    probes: Probes = Probes()
    termination_grace: Duration = Field(default="10s", validate_default=True)  # type: ignore[assignment]
    progress_deadline: Duration = Field(default="10m", validate_default=True)  # type: ignore[assignment]


class LocalTarget(StrictModel):
    kind: Literal["local"] = "local"
    services: dict[str, LocalService] = {}
    runtime: str | None = Field(None, description="URL of the local runtime; default from settings")


class KubernetesTarget(StrictModel):
    kind: Literal["kubernetes"]
    namespace: str = "default"
    context: str | None = None


Target = Annotated[LocalTarget | KubernetesTarget, Field(discriminator="kind")]


# ---------------------------------------------------------------- undo


class RestoreUndo(StrictModel):
    restore: str = Field(description="id of a backup step that runs earlier")


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
    to: str = Field(pattern=r"^s3://[^/]+(/.*)?$", description="s3://bucket/prefix/")
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


class DeploySpec(StepBase):
    service: str
    image: str
    container: str | None = None
    probes: Probes | None = None
    progress_deadline: Duration | None = None


class PromoteSpec(StepBase):
    service: str
    from_: str = Field(alias="from", description="the stage whose last image is promoted")
    container: str | None = None
    probes: Probes | None = None
    progress_deadline: Duration | None = None


class HttpCheck(StrictModel):
    url: str = Field(pattern=r"^https?://")
    method: Literal["GET", "HEAD", "POST"] = "GET"
    headers: dict[str, str] = {}
    status: list[int] = Field([], description="accepted codes; empty means 200-399")
    contains: str | None = Field(None, description="the body must contain this text")


class TcpCheck(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


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


# ---------------------------------------------------------------- flow


class ArgSpec(StrictModel):
    default: str | None = None
    description: str | None = None

    @field_validator("default", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # YAML turns `1` or `true` into numbers and booleans; args are always text.
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, int | float):
            return str(value)
        return value


class CronTrigger(StrictModel):
    cron: str
    timezone: str = "UTC"
    args: dict[str, str] = {}
    id: str | None = Field(None, pattern=STEP_ID_PATTERN)


#: A branch or path filter; a malformed one (`[z-a]`) is refused at apply, with its path.
Glob = Annotated[str, AfterValidator(check_glob)]


class GitMatch(StrictModel):
    repo: str
    branches: list[Glob] = ["main"]
    paths: list[Glob] = []
    args: dict[str, str] = {}


class GitTrigger(StrictModel):
    git: GitMatch


Trigger = CronTrigger | GitTrigger

Concurrency = Literal["allow", "queue", "forbid", "cancel-previous"]


class FlowSpec(StrictModel):
    """A release flow file."""

    api_version: Literal["shipflow/v1"] = Field(alias="apiVersion")
    kind: Literal["ReleaseFlow"] = "ReleaseFlow"
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    stage: str = Field(pattern=NAME_PATTERN, max_length=63)
    description: str | None = None
    target: Target = LocalTarget()
    concurrency: Concurrency = "queue"
    args: dict[str, ArgSpec] = {}
    triggers: list[Trigger] = []
    steps: list[Step] = Field(min_length=1)

    @field_validator("args", mode="before")
    @classmethod
    def _short_args(cls, value: Any) -> Any:
        # `args: {image: "demo:1"}` is shorthand for `{image: {default: "demo:1"}}`.
        if isinstance(value, dict):
            return {
                k: v if isinstance(v, dict) or v is None else {"default": v}
                for k, v in value.items()
            }
        return value

    @field_validator("args")
    @classmethod
    def _arg_names(cls, value: dict[str, ArgSpec]) -> dict[str, ArgSpec]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"argument name {name!r} must be a Python-style identifier")
        return value


def step_kind(step: BaseModel) -> str:
    """The key a step was written with (`deploy`, `parallel`, ...)."""
    (name,) = type(step).model_fields
    return name


def step_body(step: BaseModel) -> Any:
    return getattr(step, step_kind(step))


# ---------------------------------------------------------------- errors


class FlowError(ValueError):
    """A flow file is invalid. `problems` is a list of (path, message), path as written."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))

    def as_detail(self) -> list[dict[str, str]]:
        return [{"loc": path, "msg": msg} for path, msg in self.problems]


def format_loc(loc: tuple[int | str, ...]) -> str:
    """`('steps', 2, 'parallel', 0, 'deploy', 'deploy', 'image')` -> `steps[2].parallel[0].deploy.image`.

    Tagged unions repeat the tag before the field; that repeat is dropped so the path is
    the one in the user's file. Field aliases are shown as written (`from`, `apiVersion`).
    """
    parts: list[str] = []
    previous: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
        elif (item in STEP_KINDS and previous == item) or (
            isinstance(item, str) and item.startswith("function-")
        ):
            continue
        else:
            parts.append(str(item))
        previous = item
    return ".".join(parts)


_FRIENDLY = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
}


def problems_from(error: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for item in error.errors():
        message = _FRIENDLY.get(item["type"], item["msg"])
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        out.append((format_loc(tuple(item["loc"])), message))
    return out


def parse_flow(data: Any) -> FlowSpec:
    """Validate a decoded flow document (a dict) into a FlowSpec.

    Raises:
        FlowError: every problem, each with its path in the file.
    """
    if not isinstance(data, dict):
        raise FlowError([("", "a flow file is a YAML mapping with apiVersion, name, stage, steps")])
    try:
        return FlowSpec.model_validate(data)
    except ValidationError as e:
        raise FlowError(problems_from(e)) from None


def load_flow_text(text: str) -> FlowSpec:
    """Parse YAML (or JSON, which is YAML) flow text.

    Raises:
        FlowError: invalid YAML (with line and column) or an invalid flow.
    """
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise FlowError([(where, f"invalid YAML: {problem}")]) from None
    return parse_flow(data)


def flow_json_schema() -> dict[str, Any]:
    return FlowSpec.model_json_schema(by_alias=True)
