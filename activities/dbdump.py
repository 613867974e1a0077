"""Dump and restore engines: `pg_dump`/`pg_restore` for PostgreSQL, the online backup API for SQLite.

This module knows databases, not S3 and not Temporal: it parses database URLs, starts the
PostgreSQL tools with the password in their environment (never on a command line, where
`ps` would show it), turns their failures into `DumpError`s whose messages carry the URL
and the tool's stderr with every credential masked, and does the SQLite copy and the
atomic SQLite file replace. `activities/backup.py` streams these to and from S3.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

DatabaseKind = Literal["postgresql", "sqlite"]

#: File suffix of the backup object per database kind (also how a restore knows the format).
SUFFIXES: dict[DatabaseKind, str] = {"postgresql": ".pgdump", "sqlite": ".sqlite"}

_STDERR_LIMIT = 4000


class DumpError(Exception):
    """A dump or restore failed. `retryable=False` means another attempt cannot help."""

    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def redact_url(url: str) -> str:
    """The URL without its password (user, host, port, database and options stay).

    It is what errors, logs, step outputs and backup metadata show, so a backup can be
    traced to its database without the credential travelling with it. A `password=`
    query option is dropped too. Text that does not parse as a URL is returned with
    anything between `://user:` and `@` masked.
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
            return url
        # Built by hand: urlunsplit would turn sqlite:////abs into sqlite://abs.
        text = f"{parts.scheme}://{netloc}{parts.path}"
        if query:
            text += f"?{query}"
        if parts.fragment:
            text += f"#{parts.fragment}"
        return text
    except ValueError:
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


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


# ---------------------------------------------------------------- PostgreSQL

# Failures that another attempt cannot fix: the URL or the credentials are wrong.
_PERMANENT = re.compile(
    r"password authentication failed|authentication failed|no pg_hba\.conf entry"
    r"|database \"[^\"]*\" does not exist|role \"[^\"]*\" does not exist"
    r"|could not translate host name|invalid (URI|connection option|integer value|sslmode)"
    r"|missing \"=\" after|permission denied|server version mismatch"
    r"|fe_sendauth: no password supplied|is not a valid|unsupported version",
    re.IGNORECASE,
)


def _tool_error(
    tool: str, db: DatabaseUrl, code: int, stderr: str, *, default_retryable: bool
) -> DumpError:
    text = _redact(stderr.strip(), db)[-_STDERR_LIMIT:]
    retryable = default_retryable and not _PERMANENT.search(text)
    return DumpError(f"{tool} failed for {db.display} (exit {code}): {text}", retryable=retryable)


def _redact(text: str, db: DatabaseUrl) -> str:
    for secret in db.secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DumpError(f"{name} is not installed on this worker", retryable=False)
    return path


@lru_cache(maxsize=8)
def tool_version(name: str) -> str:
    """`pg_dump --version` and friends, for the backup's metadata."""
    out = subprocess.run([_tool(name), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or out.stderr.strip()


def _widen_pipe(pipe: IO[bytes], size: int = 1024 * 1024) -> None:
    """Grow a pipe's kernel buffer (Linux: 64 KiB -> up to 1 MiB; elsewhere a no-op).

    The reader thread needs the GIL after every read; while the uploading thread is
    busy in Python it gets it only every switch interval (5 ms), so a 64 KiB pipe caps
    the dump at about 13 MB/s and stalls pg_dump. 1 MiB per read removes that ceiling.
    """
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is None:
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), setpipe, size)


class PgDump:
    """A running `pg_dump --format=custom` whose stdout the caller streams away.

    stderr goes to an unnamed temporary file, so a chatty pg_dump can never block on a
    full pipe while the caller only reads stdout.
    """

    def __init__(self, db: DatabaseUrl):
        self.db = db
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [_tool("pg_dump"), "--format=custom", "--no-password", f"--dbname={db.conninfo()}"],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=db.tool_env(),
        )
        _widen_pipe(self.stdout)

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def wait(self) -> None:
        """Wait for pg_dump to exit; raise its (redacted) error if it failed."""
        code = self.proc.wait()
        if code != 0:
            raise _tool_error("pg_dump", self.db, code, self._read_stderr(), default_retryable=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def _read_stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")


def pg_restore(
    db: DatabaseUrl, dump_file: Path, *, on_wait: Callable[[], None] = lambda: None
) -> None:
    """Restore a custom-format dump in one transaction.

    `--clean --if-exists` drops each object of the dump before recreating it and
    `--single-transaction` makes the whole restore atomic: a failure leaves the
    database as it was. Objects that exist only in the live database (created after
    the backup) are not in the dump's list, so they survive the restore.

    A big restore runs for minutes: `on_wait` is called about every second meanwhile
    (the activity heartbeats there). If it raises (the activity was cancelled),
    pg_restore is killed, which rolls its transaction back.

    Raises:
        DumpError: with pg_restore's redacted stderr; non-retryable for bad URLs,
            credentials and SQL errors (a deterministic failure), retryable otherwise.
    """
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [
                _tool("pg_restore"),
                "--clean",
                "--if-exists",
                "--single-transaction",
                "--no-owner",
                "--no-password",
                f"--dbname={db.conninfo()}",
                str(dump_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=db.tool_env(),
        )
        try:
            while True:
                try:
                    code = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    on_wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        stderr.seek(0)
        text = stderr.read().decode(errors="replace")
    if code != 0:
        transient = re.search(
            r"Connection refused|timeout expired|starting up|shutting down|too many clients"
            r"|could not connect|server closed the connection|deadlock detected",
            text,
            re.IGNORECASE,
        )
        raise _tool_error("pg_restore", db, code, text, default_retryable=bool(transient))


# ---------------------------------------------------------------- SQLite


def sqlite_version() -> str:
    return f"sqlite {sqlite3.sqlite_version}"


def sqlite_snapshot(db: DatabaseUrl, dest: Path, *, on_wait: Callable[[], None]) -> None:
    """Copy a live SQLite database into `dest` with the online backup API.

    The copy is one backup step (`pages=-1`): it reads a single consistent snapshot
    even while other connections write (a stepwise copy restarts on every foreign write
    and may never finish under a busy writer). The step runs in a helper thread, which
    releases the GIL inside SQLite, while the calling thread runs `on_wait` about every
    second (the activity heartbeats there).

    Raises:
        DumpError: the file does not exist (non-retryable) or SQLite failed (retryable).
    """
    assert db.path is not None
    if not db.path.is_file():
        raise DumpError(f"SQLite database {db.display} does not exist", retryable=False)
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            src = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True, timeout=30)
            try:
                dst = sqlite3.connect(dest)
                try:
                    src.backup(dst, pages=-1)
                finally:
                    dst.close()
            finally:
                src.close()
        except BaseException as e:
            failure.append(e)

    worker = threading.Thread(target=copy, name="sqlite-backup", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=1.0)
        if worker.is_alive():
            on_wait()
    if failure:
        raise DumpError(f"SQLite backup of {db.display} failed: {failure[0]}", retryable=True)


def sqlite_check(path: Path) -> None:
    """Refuse a downloaded file that is not a sound SQLite database."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise DumpError(f"backup is not a SQLite database: {e}", retryable=False) from None
    if not result or result[0] != "ok":
        raise DumpError(f"backup fails SQLite's quick_check: {result}", retryable=False)


def sqlite_replace(db: DatabaseUrl, new_file: Path) -> None:
    """Atomically put `new_file` (in the same directory) in place of the live database.

    Takes `BEGIN EXCLUSIVE` on the live database first, so no connection is writing
    (or, in rollback-journal mode, reading) while the file is swapped; a held lock is a
    retryable error, so the step retries once the app has let go. The WAL is
    checkpointed and truncated first, so a stale `-wal` file can never be replayed onto
    the restored database. The file was fsynced by the caller; the directory is fsynced
    after `os.replace`, so the swap survives a power cut.

    Raises:
        DumpError: (retryable) the database is locked by another connection.
    """
    assert db.path is not None
    live = db.path
    if live.exists():
        conn = sqlite3.connect(live, timeout=0.5, isolation_level=None)
        try:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("BEGIN EXCLUSIVE")
            except sqlite3.OperationalError as e:
                raise DumpError(
                    f"SQLite database {db.display} is in use ({e}): stop its writers and retry",
                    retryable=True,
                ) from None
            os.replace(new_file, live)
            conn.rollback()
        finally:
            conn.close()
        # The old connection's close may leave an empty -wal/-shm of the replaced file.
        for suffix in ("-wal", "-shm", "-journal"):
            side = Path(f"{live}{suffix}")
            if side.exists() and side.stat().st_size == 0:
                side.unlink(missing_ok=True)
    else:
        live.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new_file, live)
    dir_fd = os.open(live.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
