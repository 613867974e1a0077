"""Where a value lands in a flow's string, for the compiler and the interpreter alike.

A run's arguments, a push's `${git.X}` values and step outputs are data: where one lands
decides how it is written. In a URL's path, query or fragment it is percent-encoded as one
component; in a URL's scheme or host, or at the start of a command-line argument, it would
decide what happens, so the compiler refuses it there unless the author allowed it (see
`plan_templates.TemplateCompiling._place_arg`). This module says which place is which:
the role of a field (`role_of`) and the part of a URL reached after literal text
(`url_part`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

#: What a string in the flow is, for where an argument may land in it.
Role = Literal["text", "url", "host", "argv"]
#: Fields that hold a URL, whatever their text starts with.
URL_KEYS = {"url", "webhook", "database", "endpoint", "runtime", "to"}
#: Text that starts like this is a URL too.
URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: Namespaces whose values are data the flow cannot declare constraints for (see
#: `TemplateCompiling._unconstrained`): never allowed in a URL's scheme or host.
UNDECLARED_DATA = ("steps", "git", "run")


def role_of(key: str) -> Role:
    if key in URL_KEYS:
        return "url"
    if key == "command":
        return "argv"
    if key == "host":
        return "host"
    return "text"


def url_part(written: str, part: str, after_scheme: bool) -> tuple[str, bool]:
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


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
