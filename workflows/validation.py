"""One validation pass over a flow file: every problem at once, each where it is written.

`shipflow flow validate`, `shipflow flow apply` (through the API) and `POST /flows` all
call `validate_text`, so a flow that validates is one the API accepts and a run can
compile. A problem carries its path in the file (`steps[2].deploy.service`), its line
and column (from the YAML parser's own nodes, see `shipflow.workflows.positions`), what
is wrong, and, where one is close, the known name the author probably meant.

Shape errors used to hide reference errors until they were fixed. Here the shape is
checked first, then every broken part is set aside (an unknown key dropped, a broken
step replaced by a stand-in keeping its id and place) and the shape is checked again,
until what is left is a valid flow; that flow then goes through the compiler and the
other cross-step checks. Problems inside what was set aside, or caused only by a
stand-in, are not reported twice.

Field names for "did you mean" come from the flow's JSON Schema, i.e. from the pydantic
models themselves: a field added to `shipflow.workflows.spec` is known here at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from shipflow.workflows.crons import trigger_problems
from shipflow.workflows.flowshape import ShapeCheck
from shipflow.workflows.plan import CompileOptions, Plan, compile
from shipflow.workflows.positions import Positions, load_with_positions
from shipflow.workflows.spec import (
    MAX_NESTING,
    FlowError,
    FlowSpec,
    GitTrigger,
    LocalTarget,
    limit_problems,
    literal_secret_problems,
    walk_steps,
)
from shipflow.workflows.suggestions import suggestion

#: What `${git.X}` stands in with while a flow is checked (each push gives its own). A
#: required argument stands in as `<name>` (see `_references`).
PLACEHOLDER = "<git>"
_GIT_ONLY = "only known when the run is started by a git trigger"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a flow file."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None
    suggestion: str | None = None

    @property
    def advice(self) -> str:
        """The message, and the suggestion if there is one: `unknown field; did you mean X?`."""
        if self.suggestion:
            return f"{self.message}; did you mean {self.suggestion}?"
        return self.message

    def describe(self) -> str:
        """`path: message; did you mean X?` (without the position)."""
        return f"{self.path}: {self.advice}" if self.path else self.advice

    def render(self, file: str | None = None) -> str:
        """`file:line:column: path: message; did you mean X?`, as compilers print it."""
        where = [part for part in (file, self.line, self.column) if part is not None]
        prefix = ":".join(str(part) for part in where)
        return f"{prefix}: {self.describe()}" if prefix else self.describe()

    def as_detail(self) -> dict[str, Any]:
        """The API's 422 `detail` item: `loc` and `msg` as before, plus where and a suggestion."""
        loc = self.path
        if not loc and self.line is not None:  # a syntax error: where is all there is
            loc = f"line {self.line}, column {self.column}"
        detail: dict[str, Any] = {"loc": loc, "msg": self.message}
        if self.line is not None:
            detail["line"] = self.line
            detail["column"] = self.column
        if self.suggestion:
            detail["suggestion"] = self.suggestion
        return detail


@dataclass
class Report:
    """The result of validating one flow file."""

    problems: list[Problem] = field(default_factory=list)
    spec: FlowSpec | None = None  # set only when there is no problem
    plan: Plan | None = None  # the flow compiled with placeholder args, when valid

    @property
    def steps(self) -> int:
        """The number of action steps, when valid."""
        return sum(1 for _ in self.plan.actions()) if self.plan is not None else 0

    @property
    def ok(self) -> bool:
        return not self.problems



# ---------------------------------------------------------------- entry points


def validate_text(
    text: str, *, is_json: bool = False, options: CompileOptions | None = None
) -> Report:
    """Validate a flow file's text (YAML, or JSON when `is_json`) completely."""
    try:
        data, positions = (_load_json(text), Positions.of(text)) if is_json else _load_yaml(text)
    except _Unparsable as e:
        return Report([e.problem])
    if is_json:  # JSON keeps the last of a repeated key by definition
        return validate_data(data, positions=positions, options=options)
    duplicates = [
        Problem(
            path,
            f"written twice in one mapping (first on line {first}); YAML keeps only the last",
            where.line,
            where.column,
        )
        for path, where, first in positions.duplicate_keys()
    ]
    report = validate_data(data, positions=positions, options=options)
    if duplicates:
        report.problems = _ordered(duplicates + report.problems)
        report.spec = None
    return report


def validate_data(
    data: Any, *, positions: Positions | None = None, options: CompileOptions | None = None
) -> Report:
    """Validate a decoded flow document; positions (if given) place each problem."""
    if not isinstance(data, dict):
        problem = "a flow file is a YAML mapping with apiVersion, name, stage and steps"
        return Report([Problem("", problem, *_at(positions, ""))])
    limits = limit_problems(data)
    if limits:  # pathological: refuse cheaply, before anything recursive walks it
        return Report([_placed(p, m, positions, data) for p, m in limits])
    shape = ShapeCheck(data)
    spec = shape.check()
    raw = list(shape.problems)
    plan = None
    if spec is not None:
        refs, plan = _references(spec, options, shape.target_set_aside)
        raw += [(p, m, None) for p, m in refs if not shape.set_aside(p, m)]
    problems = _ordered(
        [_placed(path, message, positions, data, error) for path, message, error in _unique(raw)]
    )
    if problems:
        return Report(problems)
    return Report(problems, spec, plan)


class _Unparsable(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem


def _load_yaml(text: str) -> tuple[Any, Positions]:
    try:
        return load_with_positions(text)  # a safe loader
    except RecursionError:
        raise _Unparsable(
            Problem("", f"nested too deeply: a flow nests at most {MAX_NESTING} levels of steps")
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise _Unparsable(Problem("", f"invalid YAML: {problem}", line, column)) from None


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise _Unparsable(Problem("", "invalid JSON: nested too deeply")) from None
    except json.JSONDecodeError as e:
        raise _Unparsable(Problem("", f"invalid JSON: {e.msg}", e.lineno, e.colno)) from None


# ---------------------------------------------------------------- references


def _references(
    spec: FlowSpec, options: CompileOptions | None, target_set_aside: bool
) -> tuple[list[tuple[str, str]], Plan | None]:
    """Everything beyond the shape: triggers, secrets, the compiler, the target's services."""
    problems: list[tuple[str, str]] = []
    for index, trigger in enumerate(spec.triggers):
        if isinstance(trigger, GitTrigger):
            given, prefix = trigger.git.args, f"triggers[{index}].git.args"
        else:
            given, prefix = trigger.args, f"triggers[{index}].args"
        for name in given:
            if name not in spec.args:
                known = ", ".join(sorted(spec.args)) or "none"
                problems.append((f"{prefix}.{name}", f"undeclared argument (declared: {known})"))
    problems += trigger_problems(spec)
    problems += literal_secret_problems(spec)
    if not target_set_aside:
        problems += service_problems(spec)
    placeholders = {name: f"<{name}>" for name, arg in spec.args.items() if arg.default is None}
    has_git = any(isinstance(t, GitTrigger) for t in spec.triggers)
    plan = None
    try:
        plan = compile(spec, placeholders, options=options, placeholders=placeholders)
    except FlowError as e:
        rest = [(p, m) for p, m in e.problems if not (has_git and _GIT_ONLY in m)]
        problems += rest
        if has_git and not rest:  # only `${git.X}`: compile as a push would start it
            plan = compile(
                spec,
                placeholders,
                context={"git": _AnyName()},
                options=options,
                placeholders=placeholders,
            )
    return problems, plan


class _AnyName(dict[str, str]):
    """A namespace that knows every name (`${git.X}` of a push yet to come)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return PLACEHOLDER


def service_problems(spec: FlowSpec) -> list[tuple[str, str]]:
    """Deploy and promote steps of a `local` target must name a service the target declares.

    Otherwise the run fails at that step, after everything before it (a migration) ran.
    A Kubernetes target's services are Deployments in the cluster, unknown until run time.
    """
    if not isinstance(spec.target, LocalTarget):
        return []
    declared = spec.target.services
    names = ", ".join(sorted(declared)) or "none"
    problems = []
    for here, kind, body in walk_steps(spec.steps, "steps"):
        named = kind in ("deploy", "promote") and "${" not in body.service
        if named and body.service not in declared:
            problems.append(
                (
                    f"{here}.service",
                    f"service {body.service!r} is not declared by the target "
                    f"(target.services declares: {names})",
                )
            )
    return problems


# ---------------------------------------------------------------- positions and suggestions


def _placed(
    path: str,
    message: str,
    positions: Positions | None,
    data: Any,
    error: dict[str, Any] | None = None,
) -> Problem:
    line, column = _at(positions, path, message)
    return Problem(path, message, line, column, suggestion(path, message, data, error))


def _at(
    positions: Positions | None, path: str, message: str = ""
) -> tuple[int | None, int | None]:
    if positions is None:
        return None, None
    expression = re.match(r"\$\{[^}]*\}", message)
    if expression:
        inside = positions.find_in_value(path, expression.group(0))
        if inside is not None:
            return inside.line, inside.column
    where = positions.find(path)
    return (where.line, where.column) if where else (None, None)


def _unique(
    problems: list[tuple[str, str, dict[str, Any] | None]],
) -> list[tuple[str, str, dict[str, Any] | None]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for path, message, error in problems:
        if (path, message) not in seen:
            seen.add((path, message))
            out.append((path, message, error))
    return out


def _ordered(problems: list[Problem]) -> list[Problem]:
    """In file order (a problem without a position first), otherwise as found."""
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0))
