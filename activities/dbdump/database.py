"""Database URLs and the one error type of dumps and restores.

`parse_database` turns a `postgresql://` or `sqlite:///` URL into a `DatabaseUrl` (what the
tools need, the credentials kept apart so every message can mask them); `DumpError` is what
every dump or restore failure becomes, its message redacted once, with `retryable` saying
whether another attempt can help. Kept apart from the engines because everything else
(the backup activities, the file store, the CLI) needs these two and no engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from shipflow.workflows.redaction import redact

DatabaseKind = Literal["postgresql", "sqlite"]

#: File suffix of the backup object per database kind (also how a restore knows the format).
SUFFIXES: dict[DatabaseKind, str] = {"postgresql": ".pgdump", "sqlite": ".sqlite"}


class DumpError(Exception):
    """A dump or restore failed. `retryable=False` means another attempt cannot help."""

    def __init__(self, message: str, *, retryable: bool):
        # Every message may quote a connection string or a tool's stderr: mask it here once.
        super().__init__(redact(message))
        self.retryable = retryable


def redact_url(url: str) -> str:
    """The URL without its password (user, host, port, database and options stay).

    It is what errors, logs, step outputs and backup metadata show, so a backup can be
    traced to its database without the credential travelling with it. A `password=`
    query option is dropped too. Whatever is left goes through `shipflow.workflows.redaction.redact`,
    so text that is not a URL at all (a libpq keyword DSN, `host=db password=secret`) comes
    back with its credentials masked rather than whole.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}@{host}" if user else host
        query = parts.query
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k == "password" for k, _ in pairs):
            query = urlencode([(k, v) for k, v in pairs if k != "password"])
        if netloc == parts.netloc and query == parts.query:
            return redact(url)
        # Built by hand: urlunsplit would turn sqlite:////abs into sqlite://abs.
        text = f"{parts.scheme}://{netloc}{parts.path}"
        if query:
            text += f"?{query}"
        if parts.fragment:
            text += f"#{parts.fragment}"
        return redact(text)
    except ValueError:
        return redact(url)


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed `database` of a backup step.

    Attributes:
        kind: `postgresql` or `sqlite`.
        url: the URL as given (with its password: keep it in memory only).
        display: the URL without the password, for messages and metadata.
        password: the password, or None.
        path: the SQLite file (sqlite only).
    """

    kind: DatabaseKind
    url: str
    display: str
    password: str | None = None
    path: Path | None = None

    @property
    def secrets(self) -> list[str]:
        """Values to mask in any text a tool prints about this database."""
        return [self.password] if self.password else []

    def conninfo(self) -> str:
        """The libpq URL without the password: what goes on the pg_dump command line."""
        return redact_url(self.url)

    def tool_env(self) -> dict[str, str]:
        """The child environment for pg_dump/pg_restore/psql: the password via PGPASSWORD."""
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        env.setdefault("PGCONNECT_TIMEOUT", "10")
        return env


def parse_database(url: str) -> DatabaseUrl:
    """Parse `postgresql://…`, `postgres://…` or `sqlite:///path`.

    Raises:
        DumpError: (non-retryable) an unsupported scheme or a malformed URL.
    """
    display = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise DumpError(f"invalid database URL {display}: {e}", retryable=False) from None
    scheme = parts.scheme.split("+", 1)[0]
    if scheme in ("postgresql", "postgres"):
        if not parts.hostname and "host=" not in parts.query:
            raise DumpError(f"invalid database URL {display}: no host", retryable=False)
        try:
            _ = parts.port
        except ValueError:
            raise DumpError(f"invalid database URL {display}: bad port", retryable=False) from None
        password = unquote(parts.password) if parts.password is not None else None
        for key, value in parse_qsl(parts.query):
            if key == "password":
                password = value
        # sqlalchemy-style driver suffixes (postgresql+psycopg://) mean nothing to libpq.
        plain = "postgresql://" + url.split("://", 1)[1]
        return DatabaseUrl("postgresql", plain, redact_url(plain), password=password)
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise DumpError(
                f"invalid database URL {display}: expected sqlite:///path/to/file.db",
                retryable=False,
            )
        path = Path(unquote(url.split("sqlite:///", 1)[1].split("?", 1)[0]))
        if not path.is_absolute():
            path = Path.cwd() / path
        return DatabaseUrl("sqlite", url, display, path=path)
    raise DumpError(
        f"unsupported database URL {display}: use postgresql://… or sqlite:///path",
        retryable=False,
    )
