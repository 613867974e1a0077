"""How the CLI's help names values: `TEXT`, `N`, `FILE`, never typer's `<bool>` or `<list[str]>`.

Typer 0.2x shows a Python type after every parameter (`--follow <bool>`, `FLOW <str>`)
and writes a required argument as `{FLOW}` in the usage line. That reads like a template
to fill in. The CLI's help instead follows the usual convention: flags show nothing,
options show their metavar (or the click type's name: TEXT, INTEGER, PATH), and the
usage line writes `FLOW` and `[STEP]`. Installed once, by `shipflow.infra.cli.main`.
"""

from __future__ import annotations

from typing import Any

import click
from typer.core import TyperArgument, TyperOption


def _option_type(self: TyperOption, ctx: click.Context) -> str | None:
    if self.is_flag or self.count:
        return None
    if self.metavar is not None:
        return self.metavar
    kind = getattr(getattr(self, "type", None), "name", None)
    name = str(kind).upper() if kind else "VALUE"
    return f"{name}..." if self.nargs != 1 else name


def _argument_type(self: TyperArgument, ctx: click.Context) -> str | None:
    return None  # the name column already says FLOW, RUN, FILE


def _usage_name(self: TyperArgument) -> str:
    name = self.display_name_raw.strip("[]")
    name = name if self.required else f"[{name}]"
    return f"{name}..." if self.nargs != 1 else name


def install() -> None:
    patched: Any = TyperOption
    patched.display_type_rich = _option_type
    patched = TyperArgument
    patched.display_type_rich = _argument_type
    patched._usage_display_name = _usage_name
