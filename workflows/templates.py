"""The `${...}` syntax of flow text, and how data is kept out of it.

Three parties read a flow's strings: the compiler (`${args.X}`, `${git.X}` at run start),
the interpreter (`${steps.<id>.<output>}` right before a step runs) and the activity on
the worker (`${env.X}`, at the last moment). Each later reader must only ever see the
expressions the flow's *author* wrote: text that was substituted in (an operator's
argument, a git author's name, a step's output) is data, and a `${env.DATABASE_URL}`
inside it must stay those characters, never become the worker's secret.

So substituted text is escaped on the way in: a `$` that would start `${` is written
`$$`, which makes `$${` mean a literal `${` to every later reader. The author may write
`$${` too, for a literal `${`. `literal()` turns the encoding back into plain text once
nothing is left to resolve; `shipflow.activities.envrefs.resolve_env` does the same while it
fills in `${env.X}`.

One corner degrades safely rather than exactly: data ending in `$` directly before an
author's `${env.X}` turns that reference into literal text (nothing secret is revealed).
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: One expression: `${namespace.name}`.
TEMPLATE = re.compile(r"\$\{\s*([A-Za-z_]+)\.([A-Za-z0-9_.-]+?)\s*\}")
#: An escaped `${` (group 1 is None) or an expression (groups 1 and 2).
TOKEN = re.compile(r"\$\$\{|" + TEMPLATE.pattern)
ESCAPED = "$${"

#: A replacement decides per expression: `(text, is_data)`; `None` keeps the expression.
Replacer = Callable[[re.Match[str]], "tuple[str, bool] | None"]


def substitute(text: str, replace: Replacer) -> str:
    """Replace expressions in `text`; text returned as data is escaped so no reader re-parses it.

    Escapes (`$${`) and expressions that `replace` keeps pass through unchanged, so the
    result is in the same encoding as `text`.
    """
    if "${" not in text:
        return text
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for match in TOKEN.finditer(text):
        pieces.append((text[pos : match.start()], False))
        pos = match.end()
        if match.group(1) is None:
            pieces.append((ESCAPED, False))
            continue
        replaced = replace(match)
        pieces.append((match.group(0), False) if replaced is None else replaced)
    pieces.append((text[pos:], False))
    return join(pieces)


def join(pieces: list[tuple[str, bool]]) -> str:
    """Concatenate `(text, is_data)` pieces, escaping every data `$` that a `{` follows."""
    out: list[str] = []
    for index, (piece, is_data) in enumerate(pieces):
        if not is_data or "$" not in piece:
            out.append(piece)
            continue
        following = next((p for p, _ in pieces[index + 1 :] if p), "")
        padded = piece + following[:1]
        for i, char in enumerate(piece):
            out.append("$$" if char == "$" and padded[i + 1 : i + 2] == "{" else char)
    return "".join(out)


def escape(data: str) -> str:
    """`data` as a string of its own, safe from every later reader."""
    return join([(data, True)])


def literal(text: str) -> str:
    """The plain text of `text` once nothing more is resolved: `$${` becomes `${`."""
    if ESCAPED not in text:
        return text
    return TOKEN.sub(lambda m: "${" if m.group(1) is None else m.group(0), text)


def expressions(text: str) -> list[re.Match[str]]:
    """The expressions the author wrote in `text` (escapes skipped)."""
    return [m for m in TOKEN.finditer(text) if m.group(1) is not None]
