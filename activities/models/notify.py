"""Input and result of the `notify` activity."""

from __future__ import annotations

from pydantic import BaseModel

from activities.models.common import StepContext

SEND = "notify.send"


class NotifyInput(BaseModel):
    context: StepContext
    webhook: str
    message: str
    headers: dict[str, str] = {}
    run_state: str | None = None


class NotifyOutput(BaseModel):
    status_code: int
