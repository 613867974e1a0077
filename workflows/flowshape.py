"""The shape pass of flow validation: every model error at once, broken parts set aside.

pydantic stops at nothing but reports a union's errors for every member, and a broken
step hides the reference errors behind it. `ShapeCheck` validates, records the errors
(of the union member the author meant), sets each broken part aside (an unknown key
dropped, a broken step replaced by a stand-in that keeps its id and place, a broken
trigger or argument replaced by a harmless one) and validates again, until the rest is
a valid flow the compiler can check. See `shipflow.workflows.validation`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from shipflow.workflows.spec import (
    GROUP_KINDS,
    NAME_PATTERN,
    STEP_ID_PATTERN,
    STEP_KINDS,
    BackupSpec,
    FlowSpec,
    HttpCheck,
    NotifySpec,
)

_STANDIN_KIND = "wait"
_MAX_ROUNDS = 12


class ShapeCheck:
    """Validate the models; set broken parts aside and validate again, until it passes."""

    def __init__(self, data: dict[str, Any]):
        self.data = copy.deepcopy(data)
        self.problems: list[tuple[str, str, dict[str, Any] | None]] = []
        self.prefixes: list[str] = []
        self.standins: set[str] = set()
        self.target_set_aside = False
        self._count = 0

    def check(self) -> FlowSpec | None:
        for _ in range(_MAX_ROUNDS):
            try:
                return FlowSpec.model_validate(self.data)
            except ValidationError as e:
                errors = e.errors()
            located = [(_located(self.data, e), e) for e in _best_branches(errors, self.data)]
            for loc, error in located:
                path = format_loc(loc)
                if not self.set_aside(path, ""):
                    message = _message(error, get_at(self.data, loc))
                    self.problems.append((path, message, dict(error)))
            changed = False
            for loc, error in located:
                changed = self._set_aside(loc, error["type"]) or changed
            if not changed:
                return None
        return None

    def set_aside(self, path: str, message: str) -> bool:
        """Whether a problem at `path` is about something already set aside."""
        if any(path == p or path.startswith((p + ".", p + "[")) for p in self.prefixes):
            return True
        if "args" in self.prefixes and "undeclared argument" in message:
            return True  # the declarations themselves were unreadable
        for standin in self.standins:
            if f"{standin!r} is a {_STANDIN_KIND} step" in message or (
                f"${{steps.{standin}." in message and f"a {_STANDIN_KIND} step has no" in message
            ):
                return True
        return False

    def _set_aside(self, loc: list[str | int], kind: str) -> bool:
        if not loc:
            return False
        parent = get_at(self.data, loc[:-1])
        if kind == "extra_forbidden" and isinstance(parent, dict) and loc[-1] in parent:
            del parent[loc[-1]]
            return True
        step = _innermost_step(loc)
        if step is not None:
            return self._replace_step(loc[:step])
        return self._set_aside_top(loc)

    def _replace_step(self, loc: list[str | int]) -> bool:
        container = get_at(self.data, loc[:-1])
        index = loc[-1]
        if not isinstance(container, list) or not isinstance(index, int):
            return False
        old = container[index]
        body = next(iter(old.values()), None) if isinstance(old, dict) and len(old) == 1 else None
        if old == {_STANDIN_KIND: body} and isinstance(body, dict) and body.get("duration") == "0s":
            return False  # already a stand-in
        step_id = body.get("id") if isinstance(body, dict) else None
        if not (isinstance(step_id, str) and re.fullmatch(STEP_ID_PATTERN, step_id)):
            self._count += 1
            step_id = f"x-set-aside-{self._count}"
        self.standins.add(step_id)
        container[index] = {_STANDIN_KIND: {"id": step_id, "duration": "0s"}}
        self.prefixes.append(format_loc(loc))
        return True

    def _set_aside_top(self, loc: list[str | int]) -> bool:
        key = loc[0]
        data = self.data
        if key == "triggers" and len(loc) > 1 and isinstance(loc[1], int):
            triggers = data.get("triggers")
            if isinstance(triggers, list) and loc[1] < len(triggers):
                if triggers[loc[1]] == {"cron": "@daily"}:
                    return False
                triggers[loc[1]] = {"cron": "@daily"}
                self.prefixes.append(format_loc(loc[:2]))
                return True
        if key == "args" and len(loc) > 1 and isinstance(data.get("args"), dict):
            name = loc[1]
            if isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                if data["args"].get(name) == {}:
                    return False
                data["args"][name] = {}  # still declared, so its uses are not reported
            else:
                data["args"].pop(name, None)
            self.prefixes.append(format_loc(loc[:2]))
            return True
        stand_in: dict[str, Any] = {
            "apiVersion": "shipflow/v1",
            "kind": "ReleaseFlow",
            "name": "x",
            "stage": "x",
            "steps": [{_STANDIN_KIND: {"id": "x-set-aside-0", "duration": "0s"}}],
        }
        if key == "target":
            self.target_set_aside = True
        if key in stand_in:
            if data.get(key) == stand_in[key]:
                return False
            data[key] = stand_in[key]
        elif key in data:
            del data[key]
        else:
            return False
        self.prefixes.append(str(key))
        return True


def _is_tag(item: Any) -> bool:
    """A union member's name in a pydantic `loc` (`CronTrigger`, `literal['none']`)."""
    return isinstance(item, str) and (
        item.startswith(("function-", "literal[")) or item[:1].isupper()
    )


def _best_branches(errors: list[Any], data: Any) -> list[Any]:
    """For a union without a discriminator, only the errors of the member the author meant.

    pydantic reports every member's errors (a git trigger fails as a cron trigger too).
    The member meant is the one that neither refuses the value's type outright nor has
    keys it does not know; the others' errors are noise.
    """
    branches: dict[tuple[Any, ...], dict[str, int]] = {}
    tag_at: list[tuple[tuple[Any, ...], str] | None] = []
    for error in errors:
        loc = tuple(error["loc"])
        spot = None
        for i, item in enumerate(loc):
            if _is_tag(item) and not _is_key(data, loc[:i], item):
                spot = (loc[:i], str(item))
                break
        tag_at.append(spot)
        if spot is None:
            continue
        prefix, tag = spot
        score = branches.setdefault(prefix, {}).setdefault(tag, 0)
        depth = len(prefix) + 1
        refuses_type = len(loc) == depth
        unknown_key = error["type"] == "extra_forbidden" and len(loc) == depth + 1
        branches[prefix][tag] = score + 1 + (100 if refuses_type or unknown_key else 0)
    kept = []
    for error, spot in zip(errors, tag_at, strict=True):
        scores = branches[spot[0]] if spot is not None else {}
        if spot is not None and len(scores) > 1 and scores[spot[1]] > min(scores.values()):
            continue
        kept.append(error)
    return kept


def _is_key(data: Any, loc: tuple[Any, ...], item: str) -> bool:
    """Whether `item` is a key written in the mapping at `loc` (tags in `loc` skipped)."""
    node = data
    for step in loc:
        if (isinstance(step, int) and isinstance(node, list) and 0 <= step < len(node)) or (isinstance(node, dict) and step in node):
            node = node[step]
    return isinstance(node, dict) and item in node


def _located(data: Any, error: Any) -> list[str | int]:
    """Where in the document an error is: its `loc`, down to a bad discriminator's key."""
    loc = _data_loc(data, tuple(error["loc"]))
    if error["type"] == "union_tag_invalid":
        key = str((error.get("ctx") or {}).get("discriminator", "")).strip("'")
        written = get_at(data, loc)
        if isinstance(written, dict) and key in written:
            loc.append(key)
    return loc


def _data_loc(data: Any, loc: tuple[Any, ...]) -> list[str | int]:
    """pydantic's `loc` as a path in the document: union tags and validator names dropped.

    A tagged union repeats its tag (`steps, 0, deploy, deploy, image`) and a validator
    may name itself; such an item is not a key of the data at that point, and is skipped
    unless it is the last (a missing field is, by nature, not in the data).
    """
    out: list[str | int] = []
    node = data
    for position, item in enumerate(loc):
        last = position == len(loc) - 1
        if isinstance(item, int):
            out.append(item)
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
            continue
        if isinstance(node, dict) and item in node:
            out.append(item)
            node = node[item]
        elif last and not _is_tag(item) and not (item in STEP_KINDS and item == loc[position - 1]):
            out.append(item)
        # else: a union tag or validator name (or a step's repeated tag), not in the file
    return out


def format_loc(loc: Iterable[str | int]) -> str:
    text = ""
    for item in loc:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text


def get_at(data: Any, loc: list[str | int]) -> Any:
    node = data
    for item in loc:
        found = (isinstance(node, dict) and item in node) or (
            isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node)
        )
        if not found:
            return None
        node = node[item]
    return node


def _innermost_step(loc: list[str | int]) -> int | None:
    """Length of the path to the innermost step that contains `loc`, if any."""
    found = None
    for k in range(1, len(loc)):
        if isinstance(loc[k], int) and (
            (k == 1 and loc[0] == "steps") or (k >= 2 and loc[k - 1] in GROUP_KINDS)
        ):
            found = k + 1
    return found


def _pattern_of(model: type[BaseModel], name: str) -> str:
    for item in model.model_fields[name].metadata:
        if isinstance(getattr(item, "pattern", None), str):
            return str(item.pattern)
    raise LookupError(f"{model.__name__}.{name} has no pattern")


_FRIENDLY = {"missing": "field required", "extra_forbidden": "unknown field"}
#: What a pattern of the spec means, in words (pydantic would quote the regular expression).
PATTERN_WORDS = {
    NAME_PATTERN: "must be lowercase letters, digits and '-', starting and ending with a "
    "letter or digit (e.g. web-app), at most 63 characters",
    STEP_ID_PATTERN: "must be letters, digits, '_' and '-', starting and ending with a "
    "letter or digit (e.g. db-backup)",
    _pattern_of(BackupSpec, "to"): "must be s3://bucket/prefix/ or file:///absolute/dir/",
    _pattern_of(HttpCheck, "url"): "must be an http:// or https:// URL",
    _pattern_of(NotifySpec, "webhook"): "must be an http:// or https:// URL (or ${env.X})",
}


def _message(error: Any, written: Any) -> str:
    if error["type"] == "step_kind" and isinstance(written, dict) and written:
        kinds = [str(k) for k in written if k in STEP_KINDS]
        if not kinds and len(written) == 1:
            return f"unknown step kind {next(iter(written))!r} (one of: {', '.join(STEP_KINDS)})"
        if kinds:
            keys = ", ".join(str(k) for k in written)
            return f"a step is a mapping with exactly one key, the step kind; this one has {keys}"
    context = error.get("ctx") or {}
    if error["type"] == "union_tag_invalid" and "tag" in context:
        expected = ", ".join(re.findall(r"'([^']*)'", str(context.get("expected_tags", ""))))
        return f"unknown kind {context['tag']!r} (one of: {expected})"
    if error["type"] == "too_short" and "min_length" in context:
        count = context["min_length"]
        return f"needs at least {count} item{'s' if count != 1 else ''}"
    if error["type"] == "list_type" and isinstance(written, dict):
        return "should be a list: start each item with '- '"
    if error["type"] == "string_pattern_mismatch":
        words = PATTERN_WORDS.get(str((error.get("ctx") or {}).get("pattern")))
        if words:
            return words
    message = _FRIENDLY.get(error["type"], error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return str(message)
