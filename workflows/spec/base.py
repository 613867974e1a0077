"""What every model of the flow file shares: the strict base model and the name rules."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
STEP_ID_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$"
#: A secret/config group's name, or a tag: the flow's name rule.
GroupName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a flow file must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
