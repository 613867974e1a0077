"""What every activity input carries: which run and step it works for."""

from __future__ import annotations

from pydantic import BaseModel


class StepContext(BaseModel):
    run_id: str
    flow: str
    stage: str
    step_id: str
