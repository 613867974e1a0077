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

from shipflow.workflows.redaction import redact

DatabaseKind = Literal["postgresql", "sqlite"]

#: File suffix of the backup object per database kind (also how a restore knows the format).
SUFFIXES: dict[DatabaseKind, str] = {"postgresql": ".pgdump", "sqlite": ".sqlite"}

_STDERR_LIMIT = 4000


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
    return redact(text, db.secrets)


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


# The prelude runs inside the restore's transaction, right after pg_restore's BEGIN: it
# drops every user object the database has now, so the dump recreates the database exactly
# as it was at backup time instead of merging into what a later migration left behind.
# Candidates are the objects pg_dump dumps: every non-system schema but `public` (with
# everything in it), then whatever is left in `public` (and in schemas an extension owns),
# and the database-wide event triggers, publications, casts, foreign-data wrappers, servers,
# languages, access methods and extensions created since the backup. Skipped: objects of
# initdb (oid below 16384, FirstNormalObjectId), members of an extension (pg_depend 'e': they
# come and go with it), parts of another object (pg_depend 'i' on something else: array and
# row types, identity sequences, which go with their owner), and partitions (they go with
# their parent). An object an earlier CASCADE already took is skipped when its turn comes
# (pg_identify_object then finds nothing). `public` itself stays: dropping and recreating it
# would change its owner and privileges.
_PRELUDE = """
-- shipflow: empty the database first, so the dump below recreates it exactly.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
SELECT pg_catalog.set_config('client_min_messages', 'warning', true);
DO $shipflow_prelude$
DECLARE
    keep_extensions text[] := __KEEP_EXTENSIONS__;
    target record;
    found record;
BEGIN
    FOR target IN
        WITH user_ns AS (
            SELECT oid, nspname FROM pg_catalog.pg_namespace
            WHERE nspname <> 'information_schema' AND nspname !~ '^pg_'
        ), candidates(rank, classid, objid) AS (
            SELECT 1, 'pg_catalog.pg_event_trigger'::regclass, oid FROM pg_catalog.pg_event_trigger
            UNION ALL
            SELECT 2, 'pg_catalog.pg_publication'::regclass, oid FROM pg_catalog.pg_publication
            UNION ALL
            SELECT 3, 'pg_catalog.pg_namespace'::regclass, oid FROM user_ns
            WHERE nspname <> 'public'
            UNION ALL
            SELECT 4, 'pg_catalog.pg_extension'::regclass, oid FROM pg_catalog.pg_extension
            WHERE extname <> 'plpgsql' AND extname <> ALL (keep_extensions)
            UNION ALL
            SELECT 5, 'pg_catalog.pg_class'::regclass, oid FROM pg_catalog.pg_class
            WHERE relnamespace IN (SELECT oid FROM user_ns)
              AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT relispartition
            UNION ALL
            SELECT 6, 'pg_catalog.pg_type'::regclass, oid FROM pg_catalog.pg_type
            WHERE typnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 7, 'pg_catalog.pg_proc'::regclass, oid FROM pg_catalog.pg_proc
            WHERE pronamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_operator'::regclass, oid FROM pg_catalog.pg_operator
            WHERE oprnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_opfamily'::regclass, oid FROM pg_catalog.pg_opfamily
            WHERE opfnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_opclass'::regclass, oid FROM pg_catalog.pg_opclass
            WHERE opcnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_collation'::regclass, oid FROM pg_catalog.pg_collation
            WHERE collnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_conversion'::regclass, oid FROM pg_catalog.pg_conversion
            WHERE connamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_ts_config'::regclass, oid FROM pg_catalog.pg_ts_config
            WHERE cfgnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_ts_dict'::regclass, oid FROM pg_catalog.pg_ts_dict
            WHERE dictnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_ts_parser'::regclass, oid FROM pg_catalog.pg_ts_parser
            WHERE prsnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 8, 'pg_catalog.pg_ts_template'::regclass, oid FROM pg_catalog.pg_ts_template
            WHERE tmplnamespace IN (SELECT oid FROM user_ns)
            UNION ALL
            SELECT 9, 'pg_catalog.pg_cast'::regclass, oid FROM pg_catalog.pg_cast
            UNION ALL
            SELECT 10, 'pg_catalog.pg_foreign_server'::regclass, oid
            FROM pg_catalog.pg_foreign_server
            UNION ALL
            SELECT 11, 'pg_catalog.pg_foreign_data_wrapper'::regclass, oid
            FROM pg_catalog.pg_foreign_data_wrapper
            UNION ALL
            SELECT 12, 'pg_catalog.pg_language'::regclass, oid FROM pg_catalog.pg_language
            UNION ALL
            SELECT 12, 'pg_catalog.pg_am'::regclass, oid FROM pg_catalog.pg_am
        )
        SELECT c.classid, c.objid FROM candidates c
        WHERE c.objid >= 16384
          AND NOT EXISTS (
              SELECT 1 FROM pg_catalog.pg_depend d
              WHERE d.classid = c.classid AND d.objid = c.objid
                AND (d.deptype = 'e'
                     OR (d.deptype = 'i'
                         AND (d.refclassid, d.refobjid) <> (d.classid, d.objid))))
        ORDER BY c.rank, c.objid
    LOOP
        SELECT * INTO found FROM pg_catalog.pg_identify_object(target.classid, target.objid, 0);
        CONTINUE WHEN found.identity IS NULL;
        EXECUTE pg_catalog.format('DROP %s %s CASCADE',
                                  pg_catalog.upper(pg_catalog.replace(found.type, '-', ' ')),
                                  found.identity);
    END LOOP;
    PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
END
$shipflow_prelude$;

"""

_BEGIN = b"\nBEGIN;\n"
_COMMIT = b"\nCOMMIT;\n"
# pg_restore's BEGIN comes after a few comment lines and `\restrict`: well within this.
_HEADER_LIMIT = 64 * 1024
# The script's end (its COMMIT and the closing comments) is held back until pg_restore
# exited cleanly; the COMMIT is about 150 bytes from the end.
_HOLD_BACK = 64 * 1024
_FEED_CHUNK = 1024 * 1024

_TRANSIENT = re.compile(
    r"Connection refused|timeout expired|starting up|shutting down|too many clients"
    r"|could not connect|server closed the connection|deadlock detected"
    r"|terminating connection|connection to server .* failed",
    re.IGNORECASE,
)

_EXTENSION_ENTRY = re.compile(r"^\s*\d+;\s+3079\s+\d+\s+EXTENSION\s+-\s+(.+?)\s*$")


def dump_extensions(db: DatabaseUrl, dump_file: Path) -> list[str]:
    """The extensions a custom-format dump creates, from its table of contents.

    `pg_restore --list` reads only the archive's header and TOC, so it is also the check
    that the file is a dump pg_restore can read before anything touches the database.

    Raises:
        DumpError: (non-retryable) not a readable archive.
    """
    out = subprocess.run(
        [_tool("pg_restore"), "--list", str(dump_file)],
        capture_output=True,
        env=db.tool_env(),
        check=False,
    )
    if out.returncode != 0:
        raise _tool_error(
            "pg_restore",
            db,
            out.returncode,
            out.stderr.decode(errors="replace") + "; the database was not touched",
            default_retryable=False,
        )
    names = []
    for line in out.stdout.decode(errors="replace").splitlines():
        match = _EXTENSION_ENTRY.match(line)
        if match:
            names.append(match.group(1))
    return names


def restore_prelude(keep_extensions: list[str]) -> bytes:
    """The SQL that empties the database inside the restore's transaction (see `_PRELUDE`).

    Args:
        keep_extensions: extensions the dump creates (`CREATE EXTENSION IF NOT EXISTS`),
            left in place; every other extension but plpgsql was created after the backup
            and is dropped.
    """
    for name in keep_extensions:
        if "$" in name or "\0" in name:
            raise DumpError(f"unexpected extension name in the dump: {name!r}", retryable=False)
    # E'' literals mean the same whatever standard_conforming_strings says.
    literals = [
        "E'" + name.replace("\\", "\\\\").replace("'", "''") + "'" for name in keep_extensions
    ]
    array = f"ARRAY[{', '.join(literals)}]::text[]"
    return _PRELUDE.replace("__KEEP_EXTENSIONS__", array).encode()


class _Feeder(threading.Thread):
    """Copies pg_restore's script into psql, with the prelude after its BEGIN.

    The last `_HOLD_BACK` bytes, which hold the script's COMMIT, are written only after
    pg_restore exited 0 and only if they do contain the COMMIT. A pg_restore that dies
    halfway (unreadable archive data, killed) therefore never lets psql commit a partial
    restore: psql is killed and the server rolls the transaction back. (`psql
    --single-transaction` would be wrong here: it sends its COMMIT when its input ends,
    however early that is.) Memory is bounded by one chunk plus the held-back tail.

    After `join()`, `failure` says what went wrong, if anything: "pg_restore" (it
    failed), "script" (its output was not a single-transaction script) or "psql" (psql
    stopped reading: it failed or was killed).
    """

    def __init__(
        self, restore: subprocess.Popen[bytes], psql: subprocess.Popen[bytes], prelude: bytes
    ):
        super().__init__(name="pg-restore-feeder", daemon=True)
        self.restore = restore
        self.psql = psql
        self.prelude = prelude
        self.failure: Literal["pg_restore", "script", "psql"] | None = None
        self.detail = ""

    def run(self) -> None:
        src = self.restore.stdout
        dst = self.psql.stdin
        assert src is not None and dst is not None
        try:
            held = self._copy(src, dst)
            if held is None:
                return
            code = self.restore.wait()
            if code != 0:
                self._fail("pg_restore", f"exit {code}")
            elif _COMMIT not in held:
                self._fail("script", "its script does not end with COMMIT")
            else:
                dst.write(held)
                dst.close()
        except (OSError, ValueError) as e:  # BrokenPipeError, closed pipe: psql is gone
            self._fail("psql", str(e))

    def _copy(self, src: IO[bytes], dst: IO[bytes]) -> bytes | None:
        """Forward everything but the tail; return the tail, or None after a failure."""
        buf = b""
        injected = False
        while True:
            chunk = src.read1(_FEED_CHUNK) if hasattr(src, "read1") else src.read(_FEED_CHUNK)
            if not chunk:
                break
            buf += chunk
            if not injected:
                at = buf.find(_BEGIN)
                if at < 0:
                    if len(buf) > _HEADER_LIMIT:
                        self._fail("script", "no BEGIN at the start of its script")
                        return None
                    continue
                at += len(_BEGIN)
                dst.write(buf[:at])
                dst.write(self.prelude)
                buf = buf[at:]
                injected = True
            if len(buf) > _HOLD_BACK:
                cut = len(buf) - _HOLD_BACK
                dst.write(buf[:cut])
                buf = buf[cut:]
        if not injected:
            if self.restore.wait() != 0:
                self._fail("pg_restore", "failed before its script began")
            else:
                self._fail("script", "no BEGIN at the start of its script")
            return None
        return buf

    def _fail(self, what: Literal["pg_restore", "script", "psql"], detail: str) -> None:
        self.failure = what
        self.detail = detail
        # Whichever side is still running must not go on: psql is killed before it could
        # see the end of its input, pg_restore before it blocks on a pipe nobody reads.
        for proc in (self.psql, self.restore):
            if proc.poll() is None:
                proc.kill()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


#: What a restore does with the dump's owners and grants (`ALTER … OWNER TO`, `GRANT`).
#: keep: restore them (the roles must exist on the target server, and the restoring user
#: must be a superuser or a member of each); drop: every object belongs to the restoring
#: user and no grant is restored (`pg_restore --no-owner --no-privileges`).
Owners = Literal["keep", "drop"]

_MISSING_ROLE = re.compile(r'role "([^"]+)" does not exist')


def pg_restore(
    db: DatabaseUrl,
    dump_file: Path,
    *,
    owners: Owners = "keep",
    on_wait: Callable[[], None] = lambda: None,
) -> None:
    """Make `db` exactly what the custom-format dump describes, in one transaction.

    `pg_restore --clean` is not enough for a rollback: it drops only the objects the
    dump has, so a table, view, type, function or schema a migration created after the
    backup survives it (and a new view on a backed-up table makes its DROP fail). So
    the dump's SQL (`pg_restore --single-transaction -f -`, streamed, never
    whole in memory) is piped into `psql -v ON_ERROR_STOP=1` with a prelude right
    after its BEGIN that drops every user object the database has now (see
    `_PRELUDE`): after the COMMIT the database holds what the dump holds, nothing more.
    Any failure before the COMMIT (an SQL error, pg_restore dying, a cancellation)
    rolls everything back, prelude included: the database is left as it was.

    Owners and grants (`owners`): kept by default, so tables and functions owned by an
    application role, the `public` schema's owner and every GRANT come back as they were.
    A role the dump names that does not exist on the target server fails the restore
    (rolled back, nothing changed) with a message naming the role: create the role, or
    restore with `owners="drop"`, which leaves every object owned by the restoring user
    and restores no grants.

    Extensions: the ones the dump creates are kept (its `CREATE EXTENSION IF NOT
    EXISTS` is then a no-op; one living in a schema other than `public` goes and comes
    back with that schema); the others, except plpgsql, were created after the backup
    and are dropped.

    A big restore runs for minutes: `on_wait` is called about every second meanwhile
    (the activity heartbeats there). If it raises (the activity was cancelled),
    pg_restore and psql are killed, which rolls the transaction back.

    Raises:
        DumpError: with the failing tool's redacted stderr; non-retryable for bad URLs,
            credentials, unreadable dumps and SQL errors (a deterministic failure),
            retryable when the server was unreachable or went away.
    """
    prelude = restore_prelude(dump_extensions(db, dump_file))
    env = db.tool_env()
    env.setdefault("PGAPPNAME", "shipflow-restore")
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
        restore = subprocess.Popen(
            [
                _tool("pg_restore"),
                "--single-transaction",
                *(["--no-owner", "--no-privileges"] if owners == "drop" else []),
                "--file=-",
                str(dump_file),
            ],
            stdout=subprocess.PIPE,
            stderr=restore_err,
            env=env,
        )
        try:
            psql = subprocess.Popen(
                [
                    _tool("psql"),
                    "--no-psqlrc",
                    "--quiet",
                    "--no-password",
                    "--set=ON_ERROR_STOP=1",
                    f"--dbname={db.conninfo()}",
                    "--file=-",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=psql_err,
                env=env,
            )
        except BaseException:
            _kill(restore)
            raise
        assert restore.stdout is not None and psql.stdin is not None
        _widen_pipe(restore.stdout)
        _widen_pipe(psql.stdin)
        feeder = _Feeder(restore, psql, prelude)
        feeder.start()
        try:
            while feeder.is_alive():
                feeder.join(timeout=1.0)
                if feeder.is_alive():
                    on_wait()
            while True:
                try:
                    psql_code = psql.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    on_wait()
        except BaseException:
            _kill(psql)
            _kill(restore)
            feeder.join(timeout=10)
            raise
        finally:
            _kill(restore)
            for pipe in (restore.stdout, psql.stdin):
                with contextlib.suppress(OSError):
                    pipe.close()
        restore_code = restore.returncode
        restore_err.seek(0)
        restore_text = restore_err.read().decode(errors="replace")
        psql_err.seek(0)
        psql_text = psql_err.read().decode(errors="replace")

    rolled_back = "; the restore was rolled back, the database is unchanged"
    if feeder.failure == "pg_restore":
        raise _tool_error(
            "pg_restore",
            db,
            restore_code,
            (restore_text.strip() or feeder.detail) + rolled_back,
            default_retryable=False,
        )
    if feeder.failure == "script":
        raise DumpError(
            f"pg_restore's output for {db.display} is not what shipflow expects "
            f"({feeder.detail}){rolled_back}",
            retryable=False,
        )
    if psql_code != 0 or feeder.failure is not None:
        text = psql_text.strip() or feeder.detail or "psql stopped reading the restore script"
        missing = _MISSING_ROLE.search(text)
        if missing and owners == "keep":
            text = (
                f"the backup's objects or grants belong to role {missing.group(1)!r}, which does "
                f"not exist on this server: create it, or restore with owners: drop "
                f"(CLI: --drop-owners) to give every object to the restoring user ({text})"
            )
        raise _tool_error(
            "psql",
            db,
            psql_code,
            text + rolled_back,
            default_retryable=bool(_TRANSIENT.search(text)),
        )


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
