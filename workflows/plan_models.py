"""The Plan: one run's checked, explicit program, as the compiler (`plan.compile`) makes it.

It is the workflow's input, so it is plain deterministic data: a tree of actions (each with
its resolved parameters, retry policy, timeout and undo) in sequences and parallel groups,
plus what the run needs beside its steps (target, concurrency, notifications, groups).
`shipflow.workflows.plan` re-exports these models.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field


class RetryPlan(BaseModel):
    max_attempts: int = Field(ge=1)
    initial_interval_s: float = 1.0
    backoff: float = 2.0
    max_interval_s: float = 60.0

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return min(self.initial_interval_s * self.backoff ** (attempt - 1), self.max_interval_s)


class UndoPlan(BaseModel):
    kind: Literal["restore", "command", "previous_image"]
    backup_step: str | None = None
    owners: Literal["keep", "drop"] = "keep"
    command: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    image: str | None = None


class ActionPlan(BaseModel):
    node: Literal["action"] = "action"
    id: str
    kind: str
    path: str
    summary: str
    params: dict[str, Any]
    retry: RetryPlan
    timeout_s: float | None
    undo: UndoPlan | None = None


class GroupPlan(BaseModel):
    node: Literal["sequence", "parallel"]
    id: str
    path: str
    children: list[PlanNode]


PlanNode = Annotated[ActionPlan | GroupPlan, Field(discriminator="node")]
GroupPlan.model_rebuild()


class NotificationPlan(BaseModel):
    """A flow's `notifications:` entry, its webhook and headers compiled like a notify step's."""

    on: list[str]
    webhook: str
    format: str = "generic"
    headers: dict[str, str] = {}


class Plan(BaseModel):
    """One run's checked, explicit program."""

    flow: str
    stage: str
    flow_version: int = 1
    target: dict[str, Any]
    concurrency: str = "queue"
    args: dict[str, str]
    root: GroupPlan
    env_refs: list[str] = []
    heartbeat_timeout_s: float = 20.0
    worker_lost_retries: int = 10
    notifications: list[NotificationPlan] = []
    #: The flow's `tags` and `env_order`: which secret/config groups apply (names only).
    tags: list[str] = []
    env_order: list[str] = []

    def actions(self) -> Iterator[ActionPlan]:
        """Every action in plan order (depth first, as written)."""
        yield from _actions(self.root)

    def action(self, step_id: str) -> ActionPlan:
        for action in self.actions():
            if action.id == step_id:
                return action
        raise KeyError(step_id)


def _actions(node: ActionPlan | GroupPlan) -> Iterator[ActionPlan]:
    if isinstance(node, ActionPlan):
        yield node
    else:
        for child in node.children:
            yield from _actions(child)
