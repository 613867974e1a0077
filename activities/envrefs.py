"""`${env.X}` references, resolved on the worker at the moment a step runs.

The Plan (and so Temporal history) carries only the reference; the value lives in the
worker's environment and in the activity's memory for as long as the step runs.

Only references the flow's author wrote are resolved: text substituted from a run's
arguments or a step's output reaches the worker escaped (`$${`, see
`shipflow.workflows.templates`), and is handed on as those literal characters.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from temporalio.exceptions import ApplicationError

from shipflow.workflows.templates import TOKEN, expressions


def resolve_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace every `${env.X}` in `text` with the worker's value.

    Raises:
        ApplicationError: (non-retryable) a referenced variable is not set on the worker.
    """
    source = os.environ if environ is None else environ

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is None:  # an escaped `${`: literal text
            return "${"
        if match.group(1) != "env":
            return match.group(0)
        name = match.group(2)
        if name not in source:
            raise ApplicationError(
                f"environment variable {name} is not set on the worker (referenced as ${{env.{name}}})",
                type="MissingEnv",
                non_retryable=True,
            )
        return source[name]

    if "${" not in text:
        return text
    return TOKEN.sub(replace, text)


def resolve_env_in(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """`resolve_env` over strings nested in lists and dicts."""
    if isinstance(value, str):
        return resolve_env(value, environ)
    if isinstance(value, list):
        return [resolve_env_in(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: resolve_env_in(v, environ) for k, v in value.items()}
    return value


def secret_values(value: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """The values `value`'s `${env.X}` references resolve to: what must never be echoed back."""
    source = os.environ if environ is None else environ
    found: list[str] = []
    if isinstance(value, str):
        found = [
            source[m.group(2)]
            for m in expressions(value)
            if m.group(1) == "env" and source.get(m.group(2))
        ]
    elif isinstance(value, list | tuple):
        for item in value:
            found += secret_values(item, environ)
    elif isinstance(value, dict):
        for item in value.values():
            found += secret_values(item, environ)
    return found
