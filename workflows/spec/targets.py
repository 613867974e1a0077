"""Where a flow deploys: local processes (with their services) or a Kubernetes namespace."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from shipflow.workflows.durations import Duration
from shipflow.workflows.spec.base import GroupName, StrictModel
from shipflow.workflows.spec.probes import Probes
from shipflow.workflows.spec.strategies import Strategy


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
