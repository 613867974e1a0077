"""What applying a flow file would change: steps, triggers and schedules, against the applied version.

Steps are matched by id (an id is what runs, records and `${steps...}` refer to), so a
step that moved is shown as moved, not as removed and added. Cron triggers are shown
as the Temporal Schedules they become (`shipflow-<flow>-<id or index>`), since that is
what an apply creates, updates or deletes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipflow.workflows.spec import CronTrigger, FlowSpec, walk_steps


@dataclass
class Change:
    """One line of the diff: `+` added, `-` removed, `~` changed."""

    sign: str
    what: str  # step, trigger, schedule, flow
    name: str
    detail: str = ""

    def line(self) -> str:
        text = f"{self.sign} {self.what} {self.name}"
        return f"{text}: {self.detail}" if self.detail else text

    def as_json(self) -> dict[str, str]:
        return {"change": self.sign, "what": self.what, "name": self.name, "detail": self.detail}


@dataclass
class FlowDiff:
    flow: str
    applied_version: int | None  # None: the flow was never applied
    changes: list[Change] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        return not self.changes


def _steps(spec: FlowSpec) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Step id -> (kind, path, fields as written but the id)."""
    out = {}
    for path, kind, body in walk_steps(spec.steps, "steps"):
        fields = body.model_dump(mode="json", by_alias=True, exclude={"id"}, exclude_unset=True)
        out[body.id] = (kind, path, fields)
    return out


def _fields_changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{key} {_short(old.get(key))} -> {_short(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _short(value: Any) -> str:
    if value is None:
        return "(unset)"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _trigger_text(trigger: Any) -> str:
    dumped = trigger.model_dump(mode="json", exclude_defaults=True)
    return ", ".join(f"{k}: {v}" for k, v in dumped.items()) or "(defaults)"


def _schedules(spec: FlowSpec) -> dict[str, str]:
    return {
        f"shipflow-{spec.name}-{t.id or i}": f"cron {t.cron!r} ({t.timezone})"
        for i, t in enumerate(spec.triggers)
        if isinstance(t, CronTrigger)
    }


def diff_flows(old: FlowSpec | None, new: FlowSpec, applied_version: int | None) -> FlowDiff:
    """The changes from `old` (the applied flow; None if never applied) to `new`."""
    result = FlowDiff(new.name, applied_version)
    changes = result.changes
    if old is None:
        changes.append(Change("+", "flow", new.name, f"new, stage {new.stage}"))
    old_steps = _steps(old) if old is not None else {}
    new_steps = _steps(new)
    for step_id, (kind, path, fields) in new_steps.items():
        if step_id not in old_steps:
            changes.append(Change("+", "step", step_id, f"{kind} at {path}"))
            continue
        old_kind, old_path, old_fields = old_steps[step_id]
        details = []
        if old_kind != kind:
            details.append(f"kind {old_kind} -> {kind}")
        elif old_fields != fields:
            details += _fields_changed(old_fields, fields)
        if old_path.rsplit(".", 1)[0] != path.rsplit(".", 1)[0]:
            details.append(f"moved from {old_path} to {path}")
        if details:
            changes.append(Change("~", "step", step_id, "; ".join(details)))
    for step_id, (kind, path, _) in old_steps.items():
        if step_id not in new_steps:
            changes.append(Change("-", "step", step_id, f"{kind} at {path}"))
    old_triggers = [_trigger_text(t) for t in old.triggers] if old is not None else []
    new_triggers = [_trigger_text(t) for t in new.triggers]
    changes += [Change("-", "trigger", t) for t in old_triggers if t not in new_triggers]
    changes += [Change("+", "trigger", t) for t in new_triggers if t not in old_triggers]
    old_schedules = _schedules(old) if old is not None else {}
    new_schedules = _schedules(new)
    for sid, text in new_schedules.items():
        if sid not in old_schedules:
            changes.append(Change("+", "schedule", sid, text))
        elif old_schedules[sid] != text:
            changes.append(Change("~", "schedule", sid, f"{old_schedules[sid]} -> {text}"))
    changes += [
        Change("-", "schedule", sid, text)
        for sid, text in old_schedules.items()
        if sid not in new_schedules
    ]
    if old is not None:
        for name in ("stage", "target", "concurrency", "args"):
            before = _plain(getattr(old, name))
            after = _plain(getattr(new, name))
            if before != after:
                changes.append(Change("~", "flow", name, f"{_short(before)} -> {_short(after)}"))
    return result


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
