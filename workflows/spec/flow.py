"""The flow file itself (`FlowSpec`) and what it holds beside its steps: run-time
arguments, triggers and notifications."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from shipflow.workflows.globs import check_glob
from shipflow.workflows.spec.base import NAME_PATTERN, STEP_ID_PATTERN, GroupName, StrictModel
from shipflow.workflows.spec.steps import Step
from shipflow.workflows.spec.targets import LocalTarget, Target

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
        [],
        max_length=50,
        description="groups sharing a tag with these apply to every service "
        "and migrate step of the flow (the stage's tags)",
    )
    env_order: list[GroupName] = Field(
        [],
        max_length=50,
        description="groups that share keys, in order of precedence: a later "
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
