"""Credentials written literally in a flow: refused at apply and validate, masked when a
flow stored before that rule is shown."""

from __future__ import annotations

import re
from typing import Any

from shipflow.workflows.spec.flow import FlowSpec
from shipflow.workflows.spec.steps import walk_steps
from shipflow.workflows.spec.targets import LocalTarget

_SECRET_NAME = re.compile(
    r"token|secret|passw(or)?d|^pwd$|api[-_]?key|access[-_]?key|^key$|^sig$|signature|^auth$"
    r"|authorization|credential",
    re.I,
)
_ENV_REF = "${env."
_USE_ENV = "write it in the worker's environment and name it here as ${env.X}"


def _url_secrets(url: str, *, query: bool, user_is_secret: bool) -> list[str]:
    """What in `url` looks like a credential written literally (not an `${env.X}`)."""
    from urllib.parse import parse_qsl, urlsplit

    if "://" not in url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and password and _ENV_REF not in password:
            found.append("a password in the URL")
        elif user_is_secret and user and _ENV_REF not in user:
            found.append("credentials in the URL's user part")
    if query:
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if value and _SECRET_NAME.search(name) and _ENV_REF not in value:
                found.append(f"a {name!r} in the URL's query")
    return found


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s@:'\"]*:)(?P<pw>[^/\s@'\"]+)@")
_QUERY_VALUE = re.compile(r"(?P<head>[?&](?P<name>[^=&#\s'\"]+)=)(?P<value>[^&#\s'\"]+)")


def redact_literal_secrets(value: Any) -> Any:
    """`value` (text, or the strings in lists and dicts) with literal credentials masked.

    For showing flows stored before apply refused them: a URL's password and secret-named
    query values become `***`; `${env.X}` references are kept.
    """
    if isinstance(value, list):
        return [redact_literal_secrets(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_literal_secrets(v) for k, v in value.items()}
    if not isinstance(value, str) or ("@" not in value and "=" not in value):
        return value

    def password(match: re.Match[str]) -> str:
        if _ENV_REF in match.group("pw"):
            return match.group(0)
        return match.group("head") + "***@"

    def query(match: re.Match[str]) -> str:
        if not _SECRET_NAME.search(match.group("name")) or _ENV_REF in match.group("value"):
            return match.group(0)
        return match.group("head") + "***"

    return _QUERY_VALUE.sub(query, _URL_PASSWORD.sub(password, value))


def literal_secret_problems(spec: FlowSpec) -> list[tuple[str, str]]:
    """Credentials written literally in the flow (refused at apply and validate).

    A flow's source is readable by every viewer (`GET /flows/{name}`) and its values travel
    in Temporal history; a secret belongs in the worker's environment, named as `${env.X}`.
    """
    problems: list[tuple[str, str]] = []

    def check(path: str, url: str | None, *, query: bool, user_is_secret: bool) -> None:
        if url:
            for what in _url_secrets(url, query=query, user_is_secret=user_is_secret):
                problems.append((path, f"{what} is written literally: {_USE_ENV}"))

    if isinstance(spec.target, LocalTarget):
        check("target.runtime", spec.target.runtime, query=True, user_is_secret=True)
    for here, kind, body in walk_steps(spec.steps, "steps"):
        if kind == "backup":
            check(f"{here}.database", body.database, query=True, user_is_secret=False)
            check(f"{here}.endpoint", body.endpoint, query=True, user_is_secret=True)
        elif kind == "check" and body.http is not None:
            check(f"{here}.http.url", body.http.url, query=True, user_is_secret=True)
        elif kind == "notify":
            check(f"{here}.webhook", body.webhook, query=True, user_is_secret=True)
    return problems
