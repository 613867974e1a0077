"""The compiler: `compile(flow, args, env) -> Plan`.

A Plan is the explicit, checked form of a flow for one run: every id unique, every
`${args.X}` replaced, every reference checked, every default (retries, timeout, undo)
filled in. It is the workflow's input, so it must be deterministic data: the
interpreter never looks at the flow file again. Pure functions, no I/O.

`${env.X}` stays a reference in the Plan: it is resolved by the activity on the worker,
so secrets never enter Temporal history. `${steps.<id>.<output>}` is resolved by the
interpreter from step outputs right before the step runs.

A run's arguments are data, never code: each is substituted once, escaped so that no later
reader takes a `${...}` in it for an expression (`shipflow.workflows.templates`), percent-encoded in
a URL's path or query, and held to the constraints its declaration sets. Where the text
itself would decide what happens (the host of a URL, the start of a command argument) the
author has to allow it with a `pattern`. A push's `${git.X}` values and step outputs are
data the author cannot constrain: they are percent-encoded in the same places (step outputs
at run time, `resolve_step_outputs`) and refused outright in a URL's scheme or host.

The compiler's parts: this module (arguments, ids, structure, defaults, undo, the plan's
size), plan_models.py (the Plan), plan_templates.py (the expressions, where they land),
placement.py (which place in a string is which) and step_outputs.py (`${steps.X.Y}` at run
time, for the interpreter).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel

from shipflow.workflows.placement import as_text
from shipflow.workflows.plan_models import (
    ActionPlan,
    GroupPlan,
    NotificationPlan,
    Plan,
    PlanNode,
    RetryPlan,
    UndoPlan,
)
from shipflow.workflows.plan_templates import TemplateCompiling
from shipflow.workflows.spec import (
    ACTION_KINDS,
    CommandUndo,
    FlowError,
    FlowSpec,
    RestoreUndo,
    StepBase,
    step_body,
    step_kind,
)
from shipflow.workflows.step_outputs import resolve_step_outputs, step_refs
from shipflow.workflows.templates import TEMPLATE

# The Plan's models (plan_models.py), the run-time resolution of step outputs
# (step_outputs.py) and TEMPLATE (shipflow.api.git reads trigger args) are re-exported.
__all__ = [
    "DEFAULTS",
    "MAX_PLAN_BYTES",
    "TEMPLATE",
    "UNDO_ALLOWED",
    "ActionPlan",
    "CompileOptions",
    "GroupPlan",
    "NotificationPlan",
    "Plan",
    "PlanNode",
    "RetryPlan",
    "UndoPlan",
    "compile",
    "resolve_step_outputs",
    "step_refs",
]

#: The largest compiled plan a run may have. Temporal refuses payloads over 2 MB; the Plan
#: shares the start request with the status memo (about as large again for small steps) and
#: a payload codec may add to it, so half of the limit is left as headroom.
MAX_PLAN_BYTES = 1_000_000


#: (retries, timeout in seconds) when the flow says nothing.
DEFAULTS: dict[str, tuple[int, float | None]] = {
    "backup": (2, 3600.0),
    "migrate": (0, 600.0),
    "deploy": (0, 900.0),
    "promote": (0, 900.0),
    "check": (0, 300.0),
    "approve": (0, 86400.0),
    "wait": (0, None),
    "notify": (3, 30.0),
}
UNDO_ALLOWED: dict[str, tuple[str, ...]] = {
    "migrate": ("restore", "command"),
    "deploy": ("command", "previous_image"),
    "promote": ("command", "previous_image"),
}
_BASE_FIELDS = set(StepBase.model_fields)


class CompileOptions(BaseModel):
    heartbeat_timeout_s: float = 20.0
    worker_lost_retries: int = 10
    retry_initial_interval_s: float = 1.0
    retry_max_interval_s: float = 60.0


def compile(
    flow: FlowSpec,
    args: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    context: Mapping[str, Mapping[str, str]] | None = None,
    flow_version: int = 1,
    options: CompileOptions | None = None,
    placeholders: Collection[str] = (),
) -> Plan:
    """Compile a validated flow and a run's arguments into a Plan.

    Args:
        flow: the flow, as validated by `shipflow.workflows.spec.parse_flow`.
        args: run-time arguments; each must be declared in `flow.args`.
        env: if given, every `${env.X}` must exist in it (the values are never copied).
        context: extra namespaces known at start, e.g. `{"git": {"sha": ...}}`.
        flow_version: the version of the flow this run executes.
        options: retry and heartbeat defaults.
        placeholders: arguments whose values only stand in for what each run will give
            (checking a flow at apply time): their values are not held to the argument's
            constraints, everything else about them is checked.

    Raises:
        FlowError: every problem found, each with its path in the flow file.
    """
    return _Compiler(
        flow, args or {}, env, context or {}, options or CompileOptions(), frozenset(placeholders)
    ).run(flow_version)


class _Compiler(TemplateCompiling):
    """One compilation: the problems found, the ids seen, the `${env.X}` referred to.

    Arguments, ids and structure are here; expressions are `TemplateCompiling`'s.
    """

    def __init__(
        self,
        flow: FlowSpec,
        args: Mapping[str, Any],
        env: Mapping[str, str] | None,
        context: Mapping[str, Mapping[str, str]],
        options: CompileOptions,
        placeholders: frozenset[str],
    ):
        self.flow = flow
        self.placeholders = placeholders
        self.env = env
        self.context = context
        self.options = options
        self.problems: list[tuple[str, str]] = []
        self.kinds: dict[str, str] = {}
        self.first_seen: dict[str, str] = {}
        self.env_refs: set[str] = set()
        self.args = self._check_args(args)

    def run(self, flow_version: int) -> Plan:
        self._collect_ids(self.flow.steps, "steps")
        children = self._sequence(self.flow.steps, "steps", frozenset())[0]
        target = self._resolve_value(
            self.flow.target.model_dump(mode="json", by_alias=True), "target", frozenset()
        )
        notifications = [
            NotificationPlan(
                **self._resolve_value(
                    entry.model_dump(mode="json"), f"notifications[{i}]", frozenset()
                )
            )
            for i, entry in enumerate(self.flow.notifications)
        ]
        if self.problems:
            raise FlowError(self.problems)
        plan = Plan(
            flow=self.flow.name,
            stage=self.flow.stage,
            flow_version=flow_version,
            target=target,
            concurrency=self.flow.concurrency,
            args=self.args,
            root=GroupPlan(node="sequence", id="steps", path="steps", children=children),
            env_refs=sorted(self.env_refs),
            heartbeat_timeout_s=self.options.heartbeat_timeout_s,
            worker_lost_retries=self.options.worker_lost_retries,
            notifications=notifications,
            tags=list(self.flow.tags),
            env_order=list(self.flow.env_order),
        )
        size = len(plan.model_dump_json())
        if size > MAX_PLAN_BYTES:
            raise FlowError(
                [
                    (
                        "steps",
                        f"the compiled plan is {size} bytes: at most {MAX_PLAN_BYTES} fit in "
                        "a run's input (limit: plan size; Temporal refuses payloads over 2 MB)",
                    )
                ]
            )
        return plan

    # -------------------------------------------------------------- arguments

    def _check_args(self, given: Mapping[str, Any]) -> dict[str, str]:
        declared = self.flow.args
        out: dict[str, str] = {}
        for name, value in given.items():
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                self.problems.append((f"args.{name}", f"undeclared argument (declared: {known})"))
                continue
            text = as_text(value)
            problem = None if name in self.placeholders else declared[name].violation(text)
            if problem:
                self.problems.append((f"args.{name}", f"the value {problem}"))
            out[name] = text
        for name, spec in declared.items():
            if name not in out:
                if spec.default is None:
                    self.problems.append((f"args.{name}", "required argument not given"))
                else:
                    out[name] = spec.default
        return out

    # -------------------------------------------------------------- ids

    def _collect_ids(self, steps: list[Any], path: str) -> None:
        for index, step in enumerate(steps):
            kind = step_kind(step)
            here = f"{path}[{index}].{kind}"
            body = step_body(step)
            if kind in ("parallel", "sequence"):
                self._collect_ids(body, here)
                continue
            if body.id in self.first_seen:
                self.problems.append(
                    (
                        f"{here}.id",
                        f"duplicate step id {body.id!r} (first at {self.first_seen[body.id]})",
                    )
                )
            else:
                self.first_seen[body.id] = f"{here}.id"
                self.kinds[body.id] = kind

    # -------------------------------------------------------------- structure

    def _sequence(
        self, steps: list[Any], path: str, before: frozenset[str]
    ) -> tuple[list[ActionPlan | GroupPlan], frozenset[str]]:
        nodes: list[ActionPlan | GroupPlan] = []
        done = before
        for index, step in enumerate(steps):
            node, done = self._step(step, f"{path}[{index}]", done)
            nodes.append(node)
        return nodes, done

    def _step(
        self, step: Any, path: str, before: frozenset[str]
    ) -> tuple[ActionPlan | GroupPlan, frozenset[str]]:
        kind = step_kind(step)
        body = step_body(step)
        here = f"{path}.{kind}"
        if kind == "sequence":
            children, done = self._sequence(body, here, before)
            return GroupPlan(node="sequence", id=path, path=path, children=children), done
        if kind == "parallel":
            children = []
            done = before
            for index, child in enumerate(body):
                node, branch_done = self._step(child, f"{here}[{index}]", before)
                children.append(node)
                done = done | branch_done
            return GroupPlan(node="parallel", id=path, path=path, children=children), done
        return self._action(kind, body, here, before), before | {body.id}

    def _action(self, kind: str, body: StepBase, here: str, before: frozenset[str]) -> ActionPlan:
        assert kind in ACTION_KINDS
        retries, timeout_s = DEFAULTS[kind]
        if body.retries is not None:
            retries = body.retries
        if body.timeout is not None:
            timeout_s = body.timeout.total_seconds()
        if kind == "approve" and body.retries:
            self.problems.append((f"{here}.retries", "an approval cannot be retried"))
        raw = body.model_dump(mode="json", by_alias=True, exclude=_BASE_FIELDS)
        params = self._resolve_value(raw, here, before)
        undo = self._undo(kind, body, here, before)
        summary = (
            self._resolve_text(body.summary, f"{here}.summary", before)
            if body.summary
            else _default_summary(kind, params)
        )
        return ActionPlan(
            id=body.id,
            kind=kind,
            path=here,
            summary=summary,
            params=params,
            retry=RetryPlan(
                max_attempts=retries + 1,
                initial_interval_s=self.options.retry_initial_interval_s,
                max_interval_s=self.options.retry_max_interval_s,
            ),
            timeout_s=timeout_s,
            undo=undo,
        )

    def _undo(
        self, kind: str, body: StepBase, here: str, before: frozenset[str]
    ) -> UndoPlan | None:
        allowed = UNDO_ALLOWED.get(kind, ())
        undo = body.undo
        if undo is None:
            return UndoPlan(kind="previous_image") if "previous_image" in allowed else None
        if undo == "none":
            return None
        where = f"{here}.undo"
        if isinstance(undo, RestoreUndo):
            if "restore" not in allowed:
                self.problems.append((where, f"undo: restore is not supported on {kind} steps"))
                return None
            target_kind = self.kinds.get(undo.restore)
            if target_kind is None:
                self.problems.append((f"{where}.restore", f"no step with id {undo.restore!r}"))
            elif target_kind != "backup":
                self.problems.append(
                    (f"{where}.restore", f"{undo.restore!r} is a {target_kind} step, not a backup")
                )
            elif undo.restore not in before:
                self.problems.append(
                    (f"{where}.restore", f"backup {undo.restore!r} does not run before this step")
                )
            return UndoPlan(kind="restore", backup_step=undo.restore, owners=undo.owners)
        assert isinstance(undo, CommandUndo)
        if "command" not in allowed:
            self.problems.append((where, f"undo: command is not supported on {kind} steps"))
            return None
        resolved = self._resolve_value(undo.model_dump(mode="json"), where, before)
        return UndoPlan(kind="command", **resolved)


def _default_summary(kind: str, params: dict[str, Any]) -> str:
    if kind in ("deploy",):
        return f"deploy {params.get('service')} {params.get('image')}"
    if kind == "promote":
        return f"promote {params.get('service')} from {params.get('from')}"
    if kind == "migrate":
        return "migrate: " + " ".join(params.get("command", []))[:80]
    if kind == "backup":
        return f"backup to {params.get('to')}"
    if kind == "wait":
        return f"wait {params.get('duration')}"
    if kind == "check":
        if params.get("http"):
            return f"check {params['http'].get('url')}"
        tcp = params.get("tcp") or {}
        return f"check tcp {tcp.get('host')}:{tcp.get('port')}"
    if kind == "notify":
        return "notify"
    return kind
