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
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from shipflow.workflows.spec import (
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
from shipflow.workflows.templates import ESCAPED, TOKEN, expressions, join, substitute
from shipflow.workflows.templates import (
    TEMPLATE as TEMPLATE,  # re-exported: shipflow.api.git reads trigger args
)

NAMESPACES = ("args", "env", "steps", "git", "run")

#: What a string in the flow is, for where an argument may land in it.
Role = Literal["text", "url", "host", "argv"]
_URL_KEYS = {"url", "webhook", "database", "endpoint", "runtime", "to"}
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: Namespaces whose values are data the flow cannot declare constraints for (see
#: `_Compiler._unconstrained`): never allowed in a URL's scheme or host.
_UNDECLARED_DATA = ("steps", "git", "run")
#: The largest compiled plan a run may have. Temporal refuses payloads over 2 MB; the Plan
#: shares the start request with the status memo (about as large again for small steps) and
#: a payload codec may add to it, so half of the limit is left as headroom.
MAX_PLAN_BYTES = 1_000_000


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


class _Compiler:
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
            text = _as_text(value)
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

    # -------------------------------------------------------------- templates

    def _resolve_value(
        self, value: Any, path: str, before: frozenset[str], role: Role = "text"
    ) -> Any:
        if isinstance(value, str):
            return self._resolve_text(value, path, before, role)
        if isinstance(value, list):
            item_role: Role = "argv" if role == "argv" else "text"
            return [
                self._resolve_value(v, f"{path}[{i}]", before, item_role)
                for i, v in enumerate(value)
            ]
        if isinstance(value, dict):
            return {
                k: self._resolve_value(v, f"{path}.{k}", before, _role_of(k))
                for k, v in value.items()
            }
        return value

    def _resolve_text(
        self, text: str, path: str, before: frozenset[str], role: Role = "text"
    ) -> str:
        if "${" not in text:
            return text
        # Where in a URL the next piece lands: scheme and host until the author's own text
        # has passed `://` and then reached `/`, `?` or `#`. A field meant for a URL is one
        # however it starts; any other text is one when the author starts it like one.
        is_url = role in ("url", "host") or bool(_URL_START.match(text))
        part = "host" if is_url else "none"
        after_scheme = role == "host"
        pieces: list[tuple[str, bool]] = []
        literals: list[str] = []
        pos = 0
        for match in TOKEN.finditer(text):
            written = text[pos : match.start()]
            pieces.append((written, False))
            literals.append(written)
            if role != "host":
                part, after_scheme = _url_part(written, part, after_scheme)
            pos = match.end()
            if match.group(1) is None:  # an escaped `${` stays escaped
                pieces.append((ESCAPED, False))
                continue
            if part == "host" and self._unconstrained(match.group(1)):
                self._refuse_in_host(match.group(0), path, role)
            replaced = self._expression(match, path, before)
            if replaced is None:
                pieces.append((match.group(0), False))
                if match.group(1) == "env" and part == "host" and not after_scheme:
                    # A URL that starts with the author's `${env.X}`: that value is the
                    # base (scheme and host), what follows it is path.
                    after_scheme = True
                continue
            value, name = replaced
            if name is not None:
                value = self._place_arg(name, value, path, part, role, pieces)
            elif part in ("path", "query", "fragment"):
                value = quote(value, safe="")  # a `${git.X}`: one URL component, as an arg
            pieces.append((value, True))
        pieces.append((text[pos:], False))
        literals.append(text[pos:])
        if any("${" in written for written in literals):
            self.problems.append(
                (
                    path,
                    "malformed ${...} expression: use ${args.X}, ${env.X} or "
                    "${steps.ID.OUTPUT} ($${ for a literal ${)",
                )
            )
        return join(pieces)

    def _expression(
        self, match: re.Match[str], path: str, before: frozenset[str]
    ) -> tuple[str, str | None] | None:
        """The data an expression stands for (and the argument's name), or None to keep it."""
        namespace, name = match.group(1), match.group(2)
        if namespace == "args":
            if name not in self.flow.args:
                known = ", ".join(sorted(self.flow.args)) or "none"
                self.problems.append(
                    (path, f"${{args.{name}}}: undeclared argument (declared: {known})")
                )
                return None
            if name not in self.args:
                return None
            return self.args[name], name
        if namespace == "env":
            self.env_refs.add(name)
            if self.env is not None and name not in self.env:
                self.problems.append((path, f"${{env.{name}}}: not set in the environment"))
            return None
        if namespace == "steps":
            self._check_step_ref(name, path, before)
            return None
        if namespace in self.context:
            values = self.context[namespace]
            if name not in values:
                self.problems.append(
                    (
                        path,
                        f"${{{namespace}.{name}}}: unknown (known: {', '.join(sorted(values))})",
                    )
                )
                return None
            return values[name], None
        if namespace in ("git", "run"):
            self.problems.append(
                (
                    path,
                    f"${{{namespace}.{name}}}: only known when the run is started by a {namespace} trigger",
                )
                if namespace == "git"
                else (path, f"${{run.{name}}}: unknown run variable")
            )
            return None
        self.problems.append(
            (
                path,
                f"${{{namespace}.{name}}}: unknown namespace {namespace!r} (use one of {', '.join(NAMESPACES)})",
            )
        )
        return None

    def _unconstrained(self, namespace: str) -> bool:
        """Whether `${namespace.X}` is data that no `pattern` in the flow can constrain.

        Step outputs and the values a trigger brings (`${git.branch}`, `${git.author}`: any
        pusher to the repository chooses them) are not declared args, so the author has no
        way to allow them where an unconstrained arg is refused.
        """
        return namespace in _UNDECLARED_DATA or namespace in self.context

    def _refuse_in_host(self, expression: str, path: str, role: Role) -> None:
        where = "host part of the address" if role == "host" else "scheme or host of the URL"
        self.problems.append(
            (
                path,
                f"{expression} lands in the {where} at {path}, where it would choose what is "
                "contacted, and no `pattern` can be declared for it: write the host in the "
                "flow (it may be used in the URL's path, query or fragment), or pass it "
                "through an argument with a `pattern`",
            )
        )

    def _place_arg(
        self,
        name: str,
        value: str,
        path: str,
        part: str,
        role: Role,
        pieces: list[tuple[str, bool]],
    ) -> str:
        """An argument's text as it lands at this place; refuse the places that need a pattern.

        In a URL's path, query or fragment it is percent-encoded (one component, `/`
        included). In the scheme or host it would choose where the request goes, and as
        the start of a command-line argument it could become an option: both need the
        author's explicit `pattern` (or `enum`) for that argument.
        """
        spec = self.flow.args[name]
        if part in ("path", "query", "fragment"):
            return quote(value, safe="")
        if part == "host" and not spec.constrained:
            where = "host part of the address" if role == "host" else "scheme or host of the URL"
            self.problems.append(
                (
                    f"args.{name}",
                    f"lands in the {where} at {path}, where it would choose what is "
                    f"contacted: give the argument a `pattern` (or `enum`) in the flow to "
                    f"allow this",
                )
            )
        elif (
            role == "argv"
            and not spec.constrained
            and name not in self.placeholders
            and value.startswith("-")
            and not "".join(p for p, _ in pieces)
        ):
            self.problems.append(
                (
                    f"args.{name}",
                    f"starts with '-' where it begins the command argument {path}, where it "
                    f"would be read as an option: give the argument a `pattern` in the flow "
                    f"to allow this",
                )
            )
        return value

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


def _role_of(key: str) -> Role:
    if key in _URL_KEYS:
        return "url"
    if key == "command":
        return "argv"
    if key == "host":
        return "host"
    return "text"


def _url_part(written: str, part: str, after_scheme: bool) -> tuple[str, bool]:
    """Where a URL stands after the author's literal text `written` (see `_resolve_text`)."""
    if part in ("none", "fragment") or not written:
        return part, after_scheme
    rest = written
    if part == "host":
        if not after_scheme:
            scheme_end = rest.find("://")
            if scheme_end < 0:
                return part, after_scheme
            rest, after_scheme = rest[scheme_end + 3 :], True
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=-1)
        if cut < 0:
            return part, after_scheme
        part = {"/": "path", "?": "query", "#": "fragment"}[rest[cut]]
        rest = rest[cut + 1 :]
    if part == "path" and "?" in rest.split("#", 1)[0]:
        part, rest = "query", rest[rest.index("?") + 1 :]
    if "#" in rest:
        part = "fragment"
    return part, after_scheme


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
        in_url = role in ("url", "host") or bool(_URL_START.match(value))

        def replace(match: re.Match[str]) -> tuple[str, bool] | None:
            if match.group(1) != "steps":
                return None
            step_id, _, output = match.group(2).partition(".")
            if step_id in outputs and output in outputs[step_id]:
                text = _as_text(outputs[step_id][output])
                return (quote(text, safe="") if in_url else text), True
            return None

        return substitute(value, replace)
    if isinstance(value, list):
        item_role: Role = "argv" if role == "argv" else "text"
        return [resolve_step_outputs(v, outputs, item_role) for v in value]
    if isinstance(value, dict):
        return {k: resolve_step_outputs(v, outputs, _role_of(k)) for k, v in value.items()}
    return value
