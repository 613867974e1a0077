"""Input and result of the `check` activity."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from shipflow.workflows.io.common import StepContext
from shipflow.workflows.spec import CheckSpec

PROBE = "check.probe"


class CheckInput(BaseModel):
    context: StepContext
    check: CheckSpec
    timeout_s: float | None = None
    resume: dict[str, Any] | None = Field(
        None, description="progress the previous execution heartbeated before its worker was lost"
    )


class CheckOutput(BaseModel):
    successes: int
    failures: int
    last_status: str
    duration_s: float
