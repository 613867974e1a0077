"""The compiler's expressions: `${args.X}`, `${env.X}`, `${steps.ID.OUTPUT}`, `${git.X}`
and `${run.X}` in the flow's strings, checked and, for what is known at compile time,
substituted where they land (`placement.py` says where that is).

`TemplateCompiling` is a mixin of `plan._Compiler`: it reads the flow, the run's
arguments and the known namespaces the compiler holds, and appends to its problems.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from shipflow.workflows.placement import (
    UNDECLARED_DATA,
    URL_START,
    Role,
    role_of,
    url_part,
)
from shipflow.workflows.spec import STEP_OUTPUTS, FlowSpec
from shipflow.workflows.templates import ESCAPED, TOKEN, join

NAMESPACES = ("args", "env", "steps", "git", "run")


class TemplateCompiling:
    """Resolving and checking the expressions of one flow for one run."""

    flow: FlowSpec
    args: dict[str, str]
    env: Mapping[str, str] | None
    context: Mapping[str, Mapping[str, str]]
    placeholders: frozenset[str]
    problems: list[tuple[str, str]]
    #: Step id -> kind, for `${steps.ID.OUTPUT}`.
    kinds: dict[str, str]
    env_refs: set[str]

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
                k: self._resolve_value(v, f"{path}.{k}", before, role_of(k))
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
        is_url = role in ("url", "host") or bool(URL_START.match(text))
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
                part, after_scheme = url_part(written, part, after_scheme)
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
            elif role == "argv" and value.startswith("-") and not "".join(p for p, _ in pieces):
                # A pusher chooses it and no `pattern` can allow it: at the start of a
                # command argument it would be read as an option.
                self.problems.append(
                    (
                        path,
                        f"{match.group(0)} starts with '-' where it begins the command "
                        f"argument {path}, where it would be read as an option: write "
                        f"literal text before it (e.g. --name={match.group(0)})",
                    )
                )
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
        return namespace in UNDECLARED_DATA or namespace in self.context

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
