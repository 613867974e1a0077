"""Run-time resolution of `${steps.<id>.<output>}`: the interpreter fills step outputs in
right before a step runs (deterministic: from the outputs recorded in the run)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from shipflow.workflows.placement import URL_START, Role, as_text, role_of
from shipflow.workflows.templates import expressions, substitute


def step_refs(value: Any) -> set[str]:
    """Step ids whose outputs `value` refers to."""
    found: set[str] = set()
    if isinstance(value, str):
        for match in expressions(value):
            if match.group(1) == "steps":
                found.add(match.group(2).partition(".")[0])
    elif isinstance(value, list):
        for item in value:
            found |= step_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            found |= step_refs(item)
    return found


def resolve_step_outputs(
    value: Any, outputs: Mapping[str, Mapping[str, Any]], role: Role = "text"
) -> Any:
    """Replace `${steps.<id>.<output>}` with the recorded outputs (deterministic).

    An output is data (a command's output is whatever the command printed): it is escaped
    as it goes in, so an `${env.X}` in it is never resolved on the worker. In a URL (a
    URL field, or text that starts like one, decided as the compiler decides it for args)
    it is percent-encoded as one component (`/` included), as an argument is: the compiler
    has refused step outputs in a scheme or host, so there it can only be path, query or
    fragment (in a plan compiled before that rule, an encoded host fails rather than
    choosing where the request goes).
    """
    if isinstance(value, str):
        in_url = role in ("url", "host") or bool(URL_START.match(value))

        def replace(match: re.Match[str]) -> tuple[str, bool] | None:
            if match.group(1) != "steps":
                return None
            step_id, _, output = match.group(2).partition(".")
            if step_id in outputs and output in outputs[step_id]:
                text = as_text(outputs[step_id][output])
                return (quote(text, safe="") if in_url else text), True
            return None

        return substitute(value, replace)
    if isinstance(value, list):
        item_role: Role = "argv" if role == "argv" else "text"
        return [resolve_step_outputs(v, outputs, item_role) for v in value]
    if isinstance(value, dict):
        return {k: resolve_step_outputs(v, outputs, role_of(k)) for k, v in value.items()}
    return value


def option_like_outputs(
    template: Any, resolved: Any, role: Role = "text", path: str = ""
) -> list[str]:
    """The command arguments that a step output made begin with '-', as error messages.

    The compiler refuses a run arg or a `${git.X}` that begins a command argument with '-'
    (it would be read as an option: `--upload-pack=...` as a branch name). A step output is
    only known at run time, so the interpreter asks this right before the step runs: an
    argument that begins with '-' although the flow's text for it does not got its dash
    from a step output (run args are literal in the plan by then, and `${env.X}` is the
    author's and is resolved later, on the worker). Text the author put first, such as
    `--name=${steps.x.y}`, is fine.

    `template` is the plan's value (with `${steps...}` references), `resolved` the same
    after `resolve_step_outputs`; `role` and `path` say where they stand.
    """
    if isinstance(template, str) and isinstance(resolved, str):
        if role == "argv" and resolved.startswith("-") and not template.startswith("-"):
            return [
                f"{path}: {template} starts with '-' where it begins the command argument, "
                f"where it would be read as an option, so the command did not run: write "
                f"literal text before it in the flow (e.g. --name={template})"
            ]
        return []
    if isinstance(template, list) and isinstance(resolved, list):
        item_role: Role = "argv" if role == "argv" else "text"
        return [
            problem
            for i, (t, r) in enumerate(zip(template, resolved, strict=False))
            for problem in option_like_outputs(t, r, item_role, f"{path}[{i}]")
        ]
    if isinstance(template, dict) and isinstance(resolved, dict):
        return [
            problem
            for key, t in template.items()
            for problem in option_like_outputs(
                t, resolved.get(key), role_of(key), f"{path}.{key}" if path else key
            )
        ]
    return []
