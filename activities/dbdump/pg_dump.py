"""Running the PostgreSQL tools, and `PgDump`: `pg_dump --format=custom` streaming to a pipe.

The password goes to the tools through their environment (never a command line, where `ps`
would show it); a tool's failure becomes a `DumpError` with its stderr masked and marked
permanent when no retry can fix it (`_tool_error`). `pg_restore.py` reuses these helpers.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from typing import IO

from shipflow.activities.dbdump.database import DatabaseUrl, DumpError
from shipflow.workflows.redaction import redact

_STDERR_LIMIT = 4000


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
