"""From text or a decoded document to a `FlowSpec`, every problem with its path; and the
flow's JSON schema (`shipflow flow schema`)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shipflow.workflows.spec.errors import FlowError, problems_from
from shipflow.workflows.spec.flow import FlowSpec
from shipflow.workflows.spec.limits import MAX_NESTING, limit_problems


def parse_flow(data: Any) -> FlowSpec:
    """Validate a decoded flow document (a dict) into a FlowSpec.

    Raises:
        FlowError: every problem, each with its path in the file.
    """
    if not isinstance(data, dict):
        raise FlowError([("", "a flow file is a YAML mapping with apiVersion, name, stage, steps")])
    limits = limit_problems(data)
    if limits:
        raise FlowError(limits)
    try:
        return FlowSpec.model_validate(data)
    except ValidationError as e:
        raise FlowError(problems_from(e)) from None


def load_flow_text(text: str) -> FlowSpec:
    """Parse YAML (or JSON, which is YAML) flow text.

    Raises:
        FlowError: invalid YAML (with line and column) or an invalid flow.
    """
    import yaml

    # libyaml's loader when it is there: the same safe YAML, several times faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # a safe loader, either way
    except RecursionError:
        raise FlowError(
            [("", f"nested too deeply: a flow nests at most {MAX_NESTING} levels of steps")]
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise FlowError([(where, f"invalid YAML: {problem}")]) from None
    return parse_flow(data)


def flow_json_schema() -> dict[str, Any]:
    return FlowSpec.model_json_schema(by_alias=True)
