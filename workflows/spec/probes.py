"""How health is asked: Kubernetes-style probes of a service, and the checks of a `check`
step (also measured by a canary's analysis, hence here, below both)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shipflow.workflows.durations import Duration
from shipflow.workflows.spec.base import StrictModel


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


class HttpCheck(StrictModel):
    url: str = Field(pattern=r"^https?://")
    method: Literal["GET", "HEAD", "POST"] = "GET"
    headers: dict[str, str] = {}
    status: list[int] = Field([], description="accepted codes; empty means 200-399")
    contains: str | None = Field(None, description="the body must contain this text")


class TcpCheck(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
