"""`shipflow group set|get|list|unset|import|delete|versions|audit|rotate-key`: groups via the API.

Everything but `rotate-key` speaks the public `/groups` API, so the same roles apply
(admin writes; secret values are shown only by `get --reveal KEY`, which the API audits).
`rotate-key` edits the local key file (it is where the stack keeps it) and then asks the
API to seal every stored value again with the new key.

Input mistakes (a `KEY=VALUE` without `=`, an unreadable env file line) exit 2 before
anything is sent; the API's own 4xx answers exit 2 as well.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from shipflow.activities.core import group_crypto
from shipflow.activities.core.settings import get_settings
from shipflow.infra.cli.common import EXIT_BAD_INPUT, api_errors, cli_state, fail, out, read_file
from shipflow.infra.cli.runs import examples

app = typer.Typer(
    help="Secret and config groups: environment for services and migrate steps.",
    no_args_is_help=True,
)

_KIND = typer.Option(None, "--kind", help="secret | config (required for a new group)")
_TAG = typer.Option(None, "--tag", help="a tag flows select the group by (repeat)")
_STAGE = typer.Option(None, "--stage", help="restrict to this stage (repeat)")
_SERVICE = typer.Option(None, "--service", help="restrict to this service (repeat)")
_JSON = typer.Option(False, "--json", help="print the API's JSON")


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """`["A=1", "B=x=y"]` -> `{"A": "1", "B": "x=y"}`; exit 2 on a pair without `=`."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"{pair.split('=')[0]!r}: expected KEY=VALUE", EXIT_BAD_INPUT)
        values[key.strip()] = value
    return values


def parse_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines (`export ` allowed, `#` comments, quotes stripped); exit 2 on a bad
    line, naming the file and line but never the value."""
    if not path.is_file():
        raise fail(f"{path}: no such file", EXIT_BAD_INPUT)
    values: dict[str, str] = {}
    for number, raw in enumerate(read_file(path).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise fail(f"{path}:{number}: expected KEY=VALUE", EXIT_BAD_INPUT)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _body(
    kind: str | None,
    values: dict[str, str],
    tags: list[str] | None,
    stages: list[str] | None,
    services: list[str] | None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"values": values, **extra}
    for field, value in (
        ("kind", kind),
        ("tags", tags),
        ("stages", stages),
        ("services", services),
    ):
        if value:
            body[field] = value
    return body


def _show(group: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(group, indent=2))
        return
    tags = ",".join(group.get("tags") or []) or "-"
    where = []
    if group.get("stages"):
        where.append("stages " + ",".join(group["stages"]))
    if group.get("services"):
        where.append("services " + ",".join(group["services"]))
    out.print(
        f"{group['name']} ({group['kind']}) version {group['version']}, tags {tags}"
        + (f", only {'; '.join(where)}" if where else "")
        + (" [deleted]" if group.get("deleted") else ""),
        highlight=False,
        soft_wrap=True,
    )
    values = group.get("values")
    for key in group.get("keys") or []:
        shown = json.dumps(values[key]) if values is not None else "(secret)"
        out.print(f"  {key}={shown}", highlight=False, soft_wrap=True)


@app.command(
    "set",
    epilog=examples(
        "shipflow group set db DATABASE_URL=postgresql://... --kind secret --tag production",
        "shipflow group set flags MODE=fast --kind config --stage staging",
        "shipflow group set db --from-env-file db.env",
    ),
)
def set_(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="group name"),
    pairs: list[str] = typer.Argument(None, help="KEY=VALUE pairs"),
    from_env_file: Path | None = typer.Option(None, "--from-env-file", help="KEY=VALUE lines"),
    kind: str | None = _KIND,
    tag: list[str] = _TAG,
    stage: list[str] = _STAGE,
    service: list[str] = _SERVICE,
    as_json: bool = _JSON,
) -> None:
    """Set keys (a new version); other keys stay."""
    values = parse_env_file(from_env_file) if from_env_file else {}
    values.update(parse_pairs(pairs or []))
    if kind is not None and kind not in ("secret", "config"):
        raise fail(f"--kind: {kind!r} is not secret or config", EXIT_BAD_INPUT)
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        group = client.request(
            "PUT", f"/groups/{name}", json=_body(kind, values, tag, stage, service)
        )
    _show(group, as_json)


@app.command(
    "import",
    epilog=examples("shipflow group import prod.env --name db --kind secret --tag production"),
)
def import_(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="an env file: KEY=VALUE lines"),
    name: str | None = typer.Option(None, "--name", help="group name; default: the file's stem"),
    kind: str | None = _KIND,
    tag: list[str] = _TAG,
    stage: list[str] = _STAGE,
    service: list[str] = _SERVICE,
    as_json: bool = _JSON,
) -> None:
    """Replace a group's keys with a file's (a new version holding exactly them)."""
    values = parse_env_file(file)
    if kind is not None and kind not in ("secret", "config"):
        raise fail(f"--kind: {kind!r} is not secret or config", EXIT_BAD_INPUT)
    state = cli_state(ctx)
    group_name = name or file.name.split(".")[0]
    with api_errors(state), state.client() as client:
        group = client.request(
            "PUT",
            f"/groups/{group_name}",
            json=_body(kind, values, tag, stage, service, replace=True),
        )
    _show(group, as_json)


@app.command("unset", epilog=examples("shipflow group unset db OLD_TOKEN"))
def unset(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    keys: list[str] = typer.Argument(..., help="keys to remove"),
    as_json: bool = _JSON,
) -> None:
    """Remove keys (a new version)."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        group = client.request("PUT", f"/groups/{name}", json={"unset": keys})
    _show(group, as_json)


@app.command("get", epilog=examples("shipflow group get db", "shipflow group get db --reveal P"))
def get(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    version: int | None = typer.Option(None, "--version", help="an older version"),
    reveal: str | None = typer.Option(
        None, "--reveal", help="print this key's value (admin; audited)"
    ),
    as_json: bool = _JSON,
) -> None:
    """A group's keys (config values too); `--reveal KEY` prints one secret value."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        if reveal is not None:
            answer = client.request(
                "POST", f"/groups/{name}/reveal", json={"key": reveal, "version": version}
            )
            typer.echo(json.dumps(answer) if as_json else answer["value"])
            return
        query = {"version": version} if version else None
        group = client.request("GET", f"/groups/{name}", params=query)
    _show(group, as_json)


@app.command("list", epilog=examples("shipflow group list", "shipflow group list --json"))
def list_(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """Every group: kind, version, tags, keys."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        groups = client.request("GET", "/groups") or []
    if as_json:
        typer.echo(json.dumps(groups, indent=2))
        return
    if not groups:
        out.print("no groups")
    for group in groups:
        _show(group, False)


@app.command("delete", epilog=examples("shipflow group delete old-flags"))
def delete(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Delete a group (a last, empty version; rollbacks can still use older ones)."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        group = client.request("DELETE", f"/groups/{name}")
    out.print(f"deleted {name} (version {group['version']})", highlight=False)


@app.command("versions", epilog=examples("shipflow group versions db"))
def versions(ctx: typer.Context, name: str = typer.Argument(...), as_json: bool = _JSON) -> None:
    """Every version of a group, oldest first."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        rows = client.request("GET", f"/groups/{name}/versions") or []
    _print_rows(
        rows,
        as_json,
        lambda row: f"v{row['version']}  {row['created_at'][:19]}  {row['created_by'] or '-'}  "
        f"{','.join(row['keys']) or '(no keys)'}" + ("  [deleted]" if row["deleted"] else ""),
    )


@app.command("audit", epilog=examples("shipflow group audit db --json"))
def audit(ctx: typer.Context, name: str = typer.Argument(...), as_json: bool = _JSON) -> None:
    """Who changed or revealed which keys, newest first (never values)."""
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        rows = client.request("GET", f"/groups/{name}/audit") or []
    _print_rows(
        rows,
        as_json,
        lambda row: f"{row['at'][:19]}  {row['actor'] or '-'}  {row['action']}  "
        f"v{row['version']}  {','.join(row['keys'])}",
    )


def _print_rows(
    rows: list[dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]
) -> None:
    """`--json` prints the API's rows as they are; otherwise one line per row, never cut."""
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        out.print(line(row), highlight=False, soft_wrap=True)


@app.command("rotate-key", epilog=examples("shipflow group rotate-key"))
def rotate_key(
    ctx: typer.Context,
    key_file: Path | None = typer.Option(
        None, "--key-file", help="default: SHIPFLOW_GROUPS_KEY_FILE or <data_dir>/groups-keys"
    ),
) -> None:
    """Put a new key first in the key file, then seal every stored value with it.

    The old keys stay in the file (they still open values until the reseal is done);
    remove them afterwards. Run where the key file is (the API reads the same file).
    """
    path = key_file or group_crypto.key_file(get_settings())
    new_id = group_crypto.add_key(path)
    state = cli_state(ctx)
    with api_errors(state), state.client() as client:
        answer = client.request("POST", "/groups/reseal")
    out.print(
        f"new key {new_id} first in {path}; {answer['resealed']} value(s) sealed again",
        highlight=False,
        soft_wrap=True,
    )
