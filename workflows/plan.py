"""The compiler: `compile(flow, args, env) -> Plan`.

A Plan is the explicit, checked form of a flow for one run: every id unique, every
`${args.X}` replaced, every reference checked, every default (retries, timeout, undo)
filled in. It is the workflow's input, so it must be deterministic data: the
interpreter never looks at the flow file again. Pure functions, no I/O.

`${env.X}` stays a reference in the Plan: it is resolved by the activity on the worker,
so secrets never enter Temporal history. `${steps.<id>.<output>}` is resolved by the
interpreter from step outputs right before the step runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from workflows.spec import (
    ACTION_KINDS,
    STEP_OUTPUTS,
    CommandUndo,
    FlowError,
    FlowSpec,
    RestoreUndo,
    StepBase,
    step_body,
    step_kind,
)

TEMPLATE = re.compile(r"\$\{\s*([A-Za-z_]+)\.([A-Za-z0-9_.-]+?)\s*\}")
NAMESPACES = ("args", "env", "steps", "git", "run")


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
) -> Plan:
    """Compile a validated flow and a run's arguments into a Plan.

    Args:
        flow: the flow, as validated by `workflows.spec.parse_flow`.
        args: run-time arguments; each must be declared in `flow.args`.
        env: if given, every `${env.X}` must exist in it (the values are never copied).
        context: extra namespaces known at start, e.g. `{"git": {"sha": ...}}`.
        flow_version: the version of the flow this run executes.
        options: retry and heartbeat defaults.

    Raises:
        FlowError: every problem found, each with its path in the flow file.
    """
    return _Compiler(flow, args or {}, env, context or {}, options or CompileOptions()).run(
        flow_version
    )


class _Compiler:
    def __init__(
        self,
        flow: FlowSpec,
        args: Mapping[str, Any],
        env: Mapping[str, str] | None,
        context: Mapping[str, Mapping[str, str]],
        options: CompileOptions,
    ):
        self.flow = flow
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
        if self.problems:
            raise FlowError(self.problems)
        return Plan(
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
        )

    # -------------------------------------------------------------- arguments

    def _check_args(self, given: Mapping[str, Any]) -> dict[str, str]:
        declared = self.flow.args
        out: dict[str, str] = {}
        for name, value in given.items():
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                self.problems.append((f"args.{name}", f"undeclared argument (declared: {known})"))
                continue
            out[name] = _as_text(value)
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

    # -------------------------------------------------------------- templates

    def _resolve_value(self, value: Any, path: str, before: frozenset[str]) -> Any:
        if isinstance(value, str):
            return self._resolve_text(value, path, before)
        if isinstance(value, list):
            return [self._resolve_value(v, f"{path}[{i}]", before) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self._resolve_value(v, f"{path}.{k}", before) for k, v in value.items()}
        return value

    def _resolve_text(self, text: str, path: str, before: frozenset[str]) -> str:
        if "${" not in text:
            return text

        def replace(match: re.Match[str]) -> str:
            namespace, name = match.group(1), match.group(2)
            if namespace == "args":
                if name not in self.flow.args:
                    known = ", ".join(sorted(self.flow.args)) or "none"
                    self.problems.append(
                        (path, f"${{args.{name}}}: undeclared argument (declared: {known})")
                    )
                    return match.group(0)
                return self.args.get(name, match.group(0))
            if namespace == "env":
                self.env_refs.add(name)
                if self.env is not None and name not in self.env:
                    self.problems.append((path, f"${{env.{name}}}: not set in the environment"))
                return match.group(0)
            if namespace == "steps":
                self._check_step_ref(name, path, before)
                return match.group(0)
            if namespace in self.context:
                values = self.context[namespace]
                if name not in values:
                    self.problems.append(
                        (
                            path,
                            f"${{{namespace}.{name}}}: unknown (known: {', '.join(sorted(values))})",
                        )
                    )
                    return match.group(0)
                return values[name]
            if namespace in ("git", "run"):
                self.problems.append(
                    (
                        path,
                        f"${{{namespace}.{name}}}: only known when the run is started by a {namespace} trigger",
                    )
                    if namespace == "git"
                    else (path, f"${{run.{name}}}: unknown run variable")
                )
                return match.group(0)
            self.problems.append(
                (
                    path,
                    f"${{{namespace}.{name}}}: unknown namespace {namespace!r} (use one of {', '.join(NAMESPACES)})",
                )
            )
            return match.group(0)

        out = TEMPLATE.sub(replace, text)
        leftover = TEMPLATE.sub("", out)
        if "${" in leftover.replace("$${", ""):
            self.problems.append(
                (path, "malformed ${...} expression: use ${args.X}, ${env.X} or ${steps.ID.OUTPUT}")
            )
        return out

    def _check_step_ref(self, name: str, path: str, before: frozenset[str]) -> None:
        step_id, _, output = name.partition(".")
        if not output:
            self.problems.append(
                (path, f"${{steps.{name}}}: name an output, e.g. ${{steps.{step_id}.OUTPUT}}")
            )
            return
        kind = self.kinds.get(step_id)
        if kind is None:
            self.problems.append((path, f"${{steps.{name}}}: no step with id {step_id!r}"))
            return
        if step_id not in before:
            self.problems.append(
                (
                    path,
                    f"${{steps.{name}}}: step {step_id!r} does not run before this one on the same path",
                )
            )
            return
        if output not in STEP_OUTPUTS[kind]:
            known = ", ".join(STEP_OUTPUTS[kind])
            self.problems.append(
                (path, f"${{steps.{name}}}: a {kind} step has no output {output!r} (has: {known})")
            )


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


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


# ------------------------------------------------------------------ run-time resolution


def step_refs(value: Any) -> set[str]:
    """Step ids whose outputs `value` refers to."""
    found: set[str] = set()
    if isinstance(value, str):
        for match in TEMPLATE.finditer(value):
            if match.group(1) == "steps":
                found.add(match.group(2).partition(".")[0])
    elif isinstance(value, list):
        for item in value:
            found |= step_refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            found |= step_refs(item)
    return found


def resolve_step_outputs(value: Any, outputs: Mapping[str, Mapping[str, Any]]) -> Any:
    """Replace `${steps.<id>.<output>}` with the recorded outputs (deterministic)."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            if match.group(1) != "steps":
                return match.group(0)
            step_id, _, output = match.group(2).partition(".")
            if step_id in outputs and output in outputs[step_id]:
                return _as_text(outputs[step_id][output])
            return match.group(0)

        return TEMPLATE.sub(replace, value)
    if isinstance(value, list):
        return [resolve_step_outputs(v, outputs) for v in value]
    if isinstance(value, dict):
        return {k: resolve_step_outputs(v, outputs) for k, v in value.items()}
    return value
