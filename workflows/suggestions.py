"""Suggestions for flow problems: the known name closest to what the author wrote.

Field names come from the flow's JSON Schema, i.e. from the pydantic models in
`shipflow.workflows.spec`: a field added there is suggested here without a change.
Names of steps, arguments, services and outputs come from the flow itself.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from functools import cache
from typing import Any

from shipflow.workflows.crons import closest_timezone
from shipflow.workflows.flowshape import get_at
from shipflow.workflows.positions import path_segments
from shipflow.workflows.redaction import redact
from shipflow.workflows.spec import (
    GROUP_KINDS,
    NAME_PATTERN,
    STEP_KINDS,
    STEP_OUTPUTS,
    flow_json_schema,
)


def _closest(word: Any, candidates: Iterable[str]) -> str | None:
    if not isinstance(word, str) or not word:
        return None
    known = sorted(set(candidates))
    if word in known:
        return None
    by_lower = {c.lower(): c for c in known}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    found = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return found[0] if found else None


def suggestion(
    path: str, message: str, data: Any, error: dict[str, Any] | None
) -> str | None:
    segments = path_segments(path)
    kind = error["type"] if error else None
    if kind == "extra_forbidden" and segments:
        parent, key = segments[:-1], str(segments[-1])
        near = _closest(key, field_names(parent))
        if near is None:  # a field of a nested mapping, written one level too high?
            inside = sorted(f for f in field_names(parent) if key in field_names([*parent, f]))
            near = f"{inside[0]}: {{{key}: ...}}" if inside else None
        return near
    if kind == "step_kind":
        step = get_at(data, list(segments))
        if isinstance(step, dict) and step:
            kinds = [k for k in step if k in STEP_KINDS]
            if len(kinds) == 1 and len(step) > 1:
                others = ", ".join(str(k) for k in step if k != kinds[0])
                return f"to indent {others} under {kinds[0]}"
            return _closest(next(iter(step)), STEP_KINDS)
        return None
    if kind == "string_pattern_mismatch" and error is not None:
        pattern = str((error.get("ctx") or {}).get("pattern"))
        written = error.get("input")
        if pattern == NAME_PATTERN and isinstance(written, str):
            slug = re.sub(r"[^a-z0-9]+", "-", written.lower()).strip("-")[:63]
            return slug if slug and re.fullmatch(NAME_PATTERN, slug) else None
        return None
    if kind == "list_type" and error is not None and isinstance(error.get("input"), str):
        words = error["input"].split()
        # Echoes what was written: through the one redaction function, like every message.
        return redact("[" + ", ".join(words) + "]") if words else None
    if kind in ("literal_error", "union_tag_invalid", "enum") and error is not None:
        context = error.get("ctx") or {}
        expected = str(context.get("expected") or context.get("expected_tags") or "")
        written = context.get("tag", error.get("input"))
        return _closest(written, re.findall(r"'([^']*)'", expected))
    if message.startswith("undeclared argument") and segments:
        return _closest(segments[-1], _declared_args(data))
    return _reference_suggestion(message, data)


def _reference_suggestion(message: str, data: Any) -> str | None:
    match = re.search(r"\$\{args\.([^}]*)\}: undeclared argument", message)
    if match:
        return _closest(match.group(1), _declared_args(data))
    match = re.search(r"no step with id '([^']*)'", message)
    if match:
        return _closest(match.group(1), _step_ids(data))
    match = re.search(r"a (\w+) step has no output '([^']*)'", message)
    if match:
        return _closest(match.group(2), STEP_OUTPUTS.get(match.group(1), ()))
    match = re.search(r"service '([^']*)' is not declared by the target", message)
    if match:
        target = data.get("target") if isinstance(data, dict) else None
        services = target.get("services") if isinstance(target, dict) else None
        return _closest(match.group(1), services if isinstance(services, dict) else ())
    match = re.search(r"timezone '([^']*)' is not an IANA", message)
    if match:
        return closest_timezone(match.group(1))
    return None


def _declared_args(data: Any) -> list[str]:
    args = data.get("args") if isinstance(data, dict) else None
    return [str(name) for name in args] if isinstance(args, dict) else []


def _step_ids(data: Any) -> list[str]:
    found: list[str] = []
    pending = [data.get("steps") if isinstance(data, dict) else None]
    while pending:
        items = pending.pop()
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and len(item) == 1:
                ((kind, body),) = item.items()
                if kind in GROUP_KINDS:
                    pending.append(body)
                elif isinstance(body, dict) and isinstance(body.get("id"), str):
                    found.append(body["id"])
    return found


@cache
def _schema() -> dict[str, Any]:
    return flow_json_schema()


def field_names(segments: list[str | int] | tuple[str | int, ...]) -> set[str]:
    """The field names the flow's JSON Schema allows at `segments` (a mapping's path)."""
    schema = _schema()
    defs = schema.get("$defs", {})

    def expand(nodes: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        pending = list(nodes)
        while pending:
            node = pending.pop()
            if not isinstance(node, dict):
                continue
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                pending.append(defs.get(ref[len("#/$defs/") :]))
                continue
            for key in ("anyOf", "oneOf", "allOf"):
                pending.extend(node.get(key, []))
            out.append(node)
        return out

    nodes = expand([schema])
    for segment in segments:
        following: list[Any] = []
        for node in nodes:
            if isinstance(segment, int):
                if "items" in node:
                    following.append(node["items"])
            elif segment in node.get("properties", {}):
                following.append(node["properties"][segment])
            elif isinstance(node.get("additionalProperties"), dict):
                following.append(node["additionalProperties"])
        nodes = expand(following)
    return {name for node in nodes for name in node.get("properties", {})}
