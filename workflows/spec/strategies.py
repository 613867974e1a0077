"""Rollout strategies (issue #17): rolling, recreate, canary (with its analysis) and
blue-green. Per service in the local target, or per deploy/promote step (the step wins)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from shipflow.workflows.conditions import parse_condition
from shipflow.workflows.durations import Duration
from shipflow.workflows.spec.base import StrictModel
from shipflow.workflows.spec.probes import HttpCheck

#: A count (`2`) or a percentage of the replicas (`"25%"`), as Kubernetes' IntOrString.
CountOrPercent = Annotated[
    int | Annotated[str, Field(pattern=r"^[0-9]{1,3}%$")], Field(union_mode="left_to_right")
]


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
    query: str = Field(
        min_length=1, max_length=4000, description="PromQL, an instant vector or scalar"
    )
    success_condition: str = Field(
        min_length=1,
        description="e.g. `result[0] >= 0.95`: numbers, result, result[N], len(result), "
        "==, !=, <, <=, >, >=, and, or, not, parentheses",
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

    http: HttpCheck | None = Field(
        None, description="a request that must succeed, as the check step"
    )
    success_rate: float | None = Field(
        None, ge=0, le=1, description="least share of the canary's requests answered below 500"
    )
    max_p95: Duration | None = Field(
        None, description="largest p95 latency of the canary's requests"
    )
    prometheus: PrometheusAnalysis | None = Field(
        None, description="a query with a success condition"
    )
    interval: Duration = Field(default="5s", validate_default=True)  # type: ignore[assignment]
    count: int = Field(3, ge=1, le=1000)
    failure_limit: int = Field(0, ge=0)
    min_requests: int = Field(10, ge=1)
    inconclusive_limit: int | None = Field(
        None,
        ge=0,
        description="more inconclusive measurements than this abort; none: they count neither way",
    )
    consecutive_error_limit: int = Field(
        4,
        ge=0,
        description="more errors in a row than this (Prometheus unreachable, an HTTP error, "
        "an error answer) abort; an error is measured again and does not count toward count",
    )

    @model_validator(mode="after")
    def _measures_something(self) -> CanaryAnalysisSpec:
        if (
            self.http is None
            and self.success_rate is None
            and self.max_p95 is None
            and self.prometheus is None
        ):
            raise ValueError(
                "an analysis needs at least one of http, success_rate, max_p95 or prometheus"
            )
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


#: A Kubernetes Service name (a DNS-1035 label).
ServiceName = Annotated[str, Field(pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")]


class BlueGreenStrategy(StrictModel):
    """The new version runs in full beside the old one, reachable on `preview_port` (local)
    or a preview Service (Kubernetes); promotion switches every new request (the active
    Service's selector) at once; the old version stays for
    `scale_down_delay`, so that an abort in that time switches back at once.

    On Kubernetes the active Service is the one named like the service unless
    `active_service` names another (the Service in front of the stable pods often has a name
    of its own); the preview is a Service `<name>-preview` that shipflow creates and
    deletes, unless `preview_service` names an existing one (an Ingress may point at it),
    which shipflow points at the new pods and back, never creating or deleting it."""

    preview_port: int | None = Field(
        None, ge=1, le=65535, description="local: the new version before the switch"
    )
    auto_promote_after: Duration | None = Field(
        None, description="switch after this long; none: wait for `shipflow promote`"
    )
    scale_down_delay: Duration = Field(default="30s", validate_default=True)  # type: ignore[assignment]
    active_service: ServiceName | None = Field(
        None,
        description="kubernetes: the Service whose selector the switch changes (it must "
        "select the stable pods); default: the Service named like the service",
    )
    preview_service: ServiceName | None = Field(
        None,
        description="kubernetes: an existing Service (selecting the stable pods) to point at "
        "the new pods before the switch, and back after; default: a Service "
        "`<service>-preview` created for the rollout and deleted after it",
    )

    @model_validator(mode="after")
    def _two_services(self) -> BlueGreenStrategy:
        if self.preview_service is not None and self.preview_service == self.active_service:
            raise ValueError("preview_service must differ from active_service")
        return self


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
                "a strategy needs exactly one of: "
                + ", ".join(type(self).model_fields)
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)


def _is_zero(value: int | str) -> bool:
    return value == 0 or (isinstance(value, str) and int(value[:-1]) == 0)
