"""The release-flow file, `apiVersion: shipflow/v1`: the public contract, as pydantic models.

Every step is a one-key mapping (`- deploy: {...}`); the key selects the model, so an
error names the path the user wrote, e.g. `steps[2].parallel[0].deploy.image`.
These models only check shape; cross-step rules (unique ids, references, arguments)
live in `shipflow.workflows.plan`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from shipflow.workflows.conditions import parse_condition
from shipflow.workflows.durations import Duration
from shipflow.workflows.globs import check_glob

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
STEP_ID_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$"
#: A secret/config group's name, or a tag: the flow's name rule.
GroupName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]


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


# ---------------------------------------------------------------- rollout strategies
# (issue #17) Per service in the local target, or per deploy/promote step (the step wins).

#: A count (`2`) or a percentage of the replicas (`"25%"`), as Kubernetes' IntOrString.
CountOrPercent = Annotated[int | Annotated[str, Field(pattern=r"^[0-9]{1,3}%$")], Field(union_mode="left_to_right")]


def resolve_count(value: int | str, replicas: int, *, round_up: bool) -> int:
    """A count or percentage of `replicas`, rounded as Kubernetes does (surge up, unavailable down)."""
    if isinstance(value, int):
        return value
    percent = int(value[:-1])
    scaled = replicas * percent
    return -(-scaled // 100) if round_up else scaled // 100


class RollingStrategy(StrictModel):
    """Kubernetes' RollingUpdate: at most `max_surge` instances above the replicas, at most
    `max_unavailable` below them. The default (1, 0) replaces one instance at a time."""

    max_surge: CountOrPercent = Field(1, description="count or percentage, rounded up")
    max_unavailable: CountOrPercent = Field(0, description="count or percentage, rounded down")

    @field_validator("max_surge", "max_unavailable")
    @classmethod
    def _not_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be 0 or more (a count) or a percentage like '25%'")
        return value

    @model_validator(mode="after")
    def _progress_possible(self) -> RollingStrategy:
        if _is_zero(self.max_surge) and _is_zero(self.max_unavailable):
            raise ValueError(
                "max_surge and max_unavailable cannot both be 0: the rollout could neither add "
                "a new instance nor remove an old one"
            )
        return self

    def resolved(self, replicas: int) -> tuple[int, int]:
        """(surge, unavailable) for `replicas`; as Kubernetes, both 0 after rounding means 1 unavailable."""
        surge = resolve_count(self.max_surge, replicas, round_up=True)
        unavailable = resolve_count(self.max_unavailable, replicas, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        return surge, unavailable


class RecreateStrategy(StrictModel):
    """Stop every old instance (drained, within its grace), then start the new ones.

    For a single instance that owns a volume or a lock; downtime is expected and reported."""


class PauseSpec(StrictModel):
    duration: Duration | None = Field(
        None, description="how long; none: until an operator promotes (`shipflow promote`)"
    )


class PrometheusAnalysis(StrictModel):
    """An instant query against Prometheus' HTTP API (`/api/v1/query`), judged by
    `success_condition` on `result` (the sample values), as Argo's `successCondition`."""

    url: str = Field(pattern=r"^https?://", description="Prometheus' base URL; ${env.X} allowed")
    query: str = Field(min_length=1, max_length=4000, description="PromQL, an instant vector or scalar")
    success_condition: str = Field(
        min_length=1, description="e.g. `result[0] >= 0.95`: numbers, result, result[N], len(result), "
        "==, !=, <, <=, >, >=, and, or, not, parentheses"
    )

    @field_validator("success_condition")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_condition(value)  # a ConditionError is a ValueError: pydantic names the field
        return value


class CanaryAnalysisSpec(StrictModel):
    """Measurements taken `count` times, one per `interval`; more than `failure_limit`
    failed ones abort the canary, and so do more than `consecutive_error_limit` errors in a
    row (Argo's default, 4). A measurement with fewer than `min_requests` canary requests at
    the front port is inconclusive for the counters (neither passes nor fails)."""

    http: HttpCheck | None = Field(None, description="a request that must succeed, as the check step")
    success_rate: float | None = Field(
        None, ge=0, le=1, description="least share of the canary's requests answered below 500"
    )
    max_p95: Duration | None = Field(None, description="largest p95 latency of the canary's requests")
    prometheus: PrometheusAnalysis | None = Field(None, description="a query with a success condition")
    interval: Duration = Field(default="5s", validate_default=True)  # type: ignore[assignment]
    count: int = Field(3, ge=1, le=1000)
    failure_limit: int = Field(0, ge=0)
    min_requests: int = Field(10, ge=1)
    inconclusive_limit: int | None = Field(
        None, ge=0, description="more inconclusive measurements than this abort; none: they count neither way"
    )
    consecutive_error_limit: int = Field(
        4, ge=0, description="more errors in a row than this (Prometheus unreachable, an HTTP error, "
        "an error answer) abort; an error is measured again and does not count toward count"
    )

    @model_validator(mode="after")
    def _measures_something(self) -> CanaryAnalysisSpec:
        if self.http is None and self.success_rate is None and self.max_p95 is None and self.prometheus is None:
            raise ValueError("an analysis needs at least one of http, success_rate, max_p95 or prometheus")
        return self


class SetWeightStep(StrictModel):
    set_weight: int = Field(ge=0, le=100, description="percent of new requests to the new version")


class PauseStep(StrictModel):
    pause: PauseSpec


class AnalysisStep(StrictModel):
    analysis: CanaryAnalysisSpec


CanaryStep = SetWeightStep | PauseStep | AnalysisStep


class CanaryStrategy(StrictModel):
    """Argo Rollouts' canary. Local target: the front port sends `set_weight` percent of new
    HTTP requests to the new version. Kubernetes: a `<name>-canary` Deployment whose share
    of the pods behind the Service is nearest `set_weight`. At the end, full promotion."""

    steps: list[CanaryStep] = Field(min_length=1, max_length=100)


class BlueGreenStrategy(StrictModel):
    """The new version runs in full beside the old one, reachable on `preview_port` (local)
    or the Service `<name>-preview` (Kubernetes); promotion switches every new request (the
    Service's selector) at once; the old version stays for
    `scale_down_delay`, so that an abort in that time switches back at once."""

    preview_port: int | None = Field(None, ge=1, le=65535, description="the new version before the switch")
    auto_promote_after: Duration | None = Field(
        None, description="switch after this long; none: wait for `shipflow promote`"
    )
    scale_down_delay: Duration = Field(default="30s", validate_default=True)  # type: ignore[assignment]


class Strategy(StrictModel):
    """How a deploy replaces the running version: exactly one of the strategies."""

    rolling: RollingStrategy | None = None
    recreate: RecreateStrategy | None = None
    canary: CanaryStrategy | None = None
    blue_green: BlueGreenStrategy | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Strategy:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "a strategy needs exactly one of: " + ", ".join(type(self).model_fields)
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)


def _is_zero(value: int | str) -> bool:
    return value == 0 or (isinstance(value, str) and int(value[:-1]) == 0)


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
    strategy: Strategy | None = Field(None, description="rollout strategy; default rolling 1/0")
    env_from: list[GroupName] = Field(
        [], max_length=50, description="secret/config groups whose keys become its environment"
    )
    tags: list[GroupName] = Field(
        [], max_length=50, description="groups sharing a tag with these (or the flow's) apply too"
    )


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
# The canary's analysis refers to HttpCheck, defined further down: complete these here, so
# that a model built from another module (a deploy activity's input) never meets them half
# defined ("`Strategy` is not fully defined").
CanaryAnalysisSpec.model_rebuild()
AnalysisStep.model_rebuild()
Strategy.model_rebuild()


# ---------------------------------------------------------------- flow


ArgType = Literal["string", "integer", "boolean"]

#: No argument value is longer than this, whatever the flow says: args travel in every Plan.
MAX_ARG_CHARS = 4096
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


class ArgSpec(StrictModel):
    """A run-time argument: text given by whoever starts a run (an operator, a trigger).

    Its value is data: it is substituted once, literally, and never read as an expression.
    The constraints let the flow's author say what a run may pass; a value that breaks one
    refuses the run (422 naming the argument). `pattern` (or `enum`) is also how an author
    allows an argument where its text decides more than a value, e.g. the host of a URL.
    """

    default: str | None = None
    description: str | None = None
    type: ArgType = "string"
    pattern: str | None = Field(
        None, max_length=1000, description="a regular expression the whole value must match"
    )
    enum: list[str] | None = Field(None, min_length=1, description="the only values allowed")
    max_length: int | None = Field(None, ge=1, le=MAX_ARG_CHARS)

    @field_validator("default", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # YAML turns `1` or `true` into numbers and booleans; args are always text.
        return _arg_text(value)

    @field_validator("enum", mode="before")
    @classmethod
    def _stringify_enum(cls, value: Any) -> Any:
        return [_arg_text(v) for v in value] if isinstance(value, list) else value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"invalid regular expression: {e}") from None
        return value

    @model_validator(mode="after")
    def _default_fits(self) -> ArgSpec:
        if self.default is not None:
            problem = self.violation(self.default)
            if problem:
                raise ValueError(f"the default {self.default!r} {problem}")
        return self

    @property
    def constrained(self) -> bool:
        """The author said exactly which values are fine (a pattern or a list)."""
        return self.pattern is not None or self.enum is not None

    def violation(self, value: str) -> str | None:
        """What is wrong with `value` for this argument, or None when it fits."""
        limit = self.max_length or MAX_ARG_CHARS
        if len(value) > limit:
            return f"is {len(value)} characters long; at most {limit} allowed"
        if self.type == "integer" and not _INTEGER.fullmatch(value):
            return "is not an integer"
        if self.type == "boolean" and value not in ("true", "false"):
            return "is not a boolean (true or false)"
        if self.enum is not None and value not in self.enum:
            return "is not one of: " + ", ".join(self.enum)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"does not match the pattern {self.pattern!r}"
        return None


def _arg_text(value: Any) -> Any:
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

#: Run events a flow's `notifications:` can subscribe to (run states, `waiting` per approval).
RunEvent = Literal["failed", "rolled_back", "waiting", "succeeded", "cancelled", "rollback_failed"]


class NotificationSpec(StrictModel):
    """`notifications: [{on: [failed, waiting], webhook: ..., format: slack}]`: the run posts
    to `webhook` when it reaches one of the `on` states (retried; never fails the run)."""

    on: list[RunEvent] = Field(min_length=1)
    webhook: str = Field(pattern=r"^(https?://|\$\{)")
    format: Literal["slack", "generic"] = "generic"
    headers: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, value: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean true, as in CI files.
        if isinstance(value, dict) and True in value and "on" not in value:
            value = {("on" if k is True else k): v for k, v in value.items()}
        return value


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
    notifications: list[NotificationSpec] = Field(default=[], max_length=20)
    tags: list[GroupName] = Field(
        [], max_length=50, description="groups sharing a tag with these apply to every service "
        "and migrate step of the flow (the stage's tags)",
    )
    env_order: list[GroupName] = Field(
        [], max_length=50, description="groups that share keys, in order of precedence: a later "
        "one wins; without it a key in two selected groups is an error",
    )

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


#: How deep `sequence` and `parallel` may nest. The interpreter walks the plan recursively in
#: a workflow task: a flow far deeper would fail that task forever, out of reach of cancel.
MAX_NESTING = 20
#: How many steps (actions and groups) a flow may have. The Plan is workflow input and must
#: stay inside Temporal's 2 MB payload limit: a step costs about 0.25-0.55 KB of plan plus
#: about 0.23 KB of start memo (more with long commands), so 1,000 ordinary steps stay near
#: 0.55 MB of plan; `plan.MAX_PLAN_BYTES` refuses what would not fit whatever the count.
#: A 1,000-step flow applies, starts and runs (`bench.scale_bench` measures it).
MAX_STEPS = 1_500


_SECRET_NAME = re.compile(
    r"token|secret|passw(or)?d|^pwd$|api[-_]?key|access[-_]?key|^key$|^sig$|signature|^auth$"
    r"|authorization|credential",
    re.I,
)
_ENV_REF = "${env."
_USE_ENV = "write it in the worker's environment and name it here as ${env.X}"


def _url_secrets(url: str, *, query: bool, user_is_secret: bool) -> list[str]:
    """What in `url` looks like a credential written literally (not an `${env.X}`)."""
    from urllib.parse import parse_qsl, urlsplit

    if "://" not in url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and password and _ENV_REF not in password:
            found.append("a password in the URL")
        elif user_is_secret and user and _ENV_REF not in user:
            found.append("credentials in the URL's user part")
    if query:
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if value and _SECRET_NAME.search(name) and _ENV_REF not in value:
                found.append(f"a {name!r} in the URL's query")
    return found


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s@:'\"]*:)(?P<pw>[^/\s@'\"]+)@")
_QUERY_VALUE = re.compile(r"(?P<head>[?&](?P<name>[^=&#\s'\"]+)=)(?P<value>[^&#\s'\"]+)")


def redact_literal_secrets(value: Any) -> Any:
    """`value` (text, or the strings in lists and dicts) with literal credentials masked.

    For showing flows stored before apply refused them: a URL's password and secret-named
    query values become `***`; `${env.X}` references are kept.
    """
    if isinstance(value, list):
        return [redact_literal_secrets(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_literal_secrets(v) for k, v in value.items()}
    if not isinstance(value, str) or ("@" not in value and "=" not in value):
        return value

    def password(match: re.Match[str]) -> str:
        if _ENV_REF in match.group("pw"):
            return match.group(0)
        return match.group("head") + "***@"

    def query(match: re.Match[str]) -> str:
        if not _SECRET_NAME.search(match.group("name")) or _ENV_REF in match.group("value"):
            return match.group(0)
        return match.group("head") + "***"

    return _QUERY_VALUE.sub(query, _URL_PASSWORD.sub(password, value))


def literal_secret_problems(spec: FlowSpec) -> list[tuple[str, str]]:
    """Credentials written literally in the flow (refused at apply and validate).

    A flow's source is readable by every viewer (`GET /flows/{name}`) and its values travel
    in Temporal history; a secret belongs in the worker's environment, named as `${env.X}`.
    """
    problems: list[tuple[str, str]] = []

    def check(path: str, url: str | None, *, query: bool, user_is_secret: bool) -> None:
        if url:
            for what in _url_secrets(url, query=query, user_is_secret=user_is_secret):
                problems.append((path, f"{what} is written literally: {_USE_ENV}"))

    if isinstance(spec.target, LocalTarget):
        check("target.runtime", spec.target.runtime, query=True, user_is_secret=True)
    for here, kind, body in walk_steps(spec.steps, "steps"):
        if kind == "backup":
            check(f"{here}.database", body.database, query=True, user_is_secret=False)
            check(f"{here}.endpoint", body.endpoint, query=True, user_is_secret=True)
        elif kind == "check" and body.http is not None:
            check(f"{here}.http.url", body.http.url, query=True, user_is_secret=True)
        elif kind == "notify":
            check(f"{here}.webhook", body.webhook, query=True, user_is_secret=True)
    return problems


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


def limit_problems(data: Any) -> list[tuple[str, str]]:
    """Nesting depth and step count of a decoded flow, checked before the models see it.

    Iterative on purpose: the point is to refuse a pathological flow cheaply, before
    anything recursive (validation, compiling, the interpreter) walks it.
    """
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        return []
    problems: list[tuple[str, str]] = []
    count = 0
    pending: list[tuple[list[Any], str, int]] = [(steps, "steps", 1)]
    while pending:
        items, path, depth = pending.pop()
        count += len(items)
        for index, item in enumerate(items):
            if not (isinstance(item, dict) and len(item) == 1):
                continue
            ((kind, children),) = item.items()
            if kind in GROUP_KINDS and isinstance(children, list):
                here = f"{path}[{index}].{kind}"
                if depth >= MAX_NESTING:
                    problems.append(
                        (
                            here,
                            f"nested too deeply: sequence and parallel nest at most "
                            f"{MAX_NESTING} levels (limit: nesting depth)",
                        )
                    )
                    continue
                pending.append((children, here, depth + 1))
    if count > MAX_STEPS:
        problems.insert(
            0,
            (
                "steps",
                f"{count} steps: a flow has at most {MAX_STEPS} steps, parallel and "
                "sequence included (limit: number of steps)",
            ),
        )
    return problems


def parse_flow(data: Any) -> FlowSpec:
    """Validate a decoded flow document (a dict) into a FlowSpec.

    Raises:
        FlowError: every problem, each with its path in the file.
    """
    if not isinstance(data, dict):
        raise FlowError([("", "a flow file is a YAML mapping with apiVersion, name, stage, steps")])
    limits = limit_problems(data)
    if limits:
        raise FlowError(limits)
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

    # libyaml's loader when it is there: the same safe YAML, several times faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # a safe loader, either way
    except RecursionError:
        raise FlowError(
            [("", f"nested too deeply: a flow nests at most {MAX_NESTING} levels of steps")]
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise FlowError([(where, f"invalid YAML: {problem}")]) from None
    return parse_flow(data)


def flow_json_schema() -> dict[str, Any]:
    return FlowSpec.model_json_schema(by_alias=True)
