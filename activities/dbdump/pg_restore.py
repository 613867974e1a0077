"""`pg_restore`: one transaction that empties the database (the prelude) and replays the dump.

`pg_restore` writes a script that a `_Feeder` thread copies into `psql`, inserting the
prelude after its BEGIN and holding the COMMIT back until pg_restore exited cleanly, so any
failure rolls everything back and the database is never half restored.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal

from shipflow.activities.dbdump.database import DatabaseUrl, DumpError
from shipflow.activities.dbdump.pg_dump import _tool, _tool_error, _widen_pipe
from shipflow.activities.dbdump.prelude import dump_extensions, restore_prelude

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
