"""The supervisor of one local command: starts it, records its pid, output and exit status.

Run by `shipflow.activities.targets.local.jobs` as `python -I supervisor.py JOB_DIR ARGV...` in a
session of its own, so it outlives the worker that started it: when the worker dies in
the middle of a command, the command runs on to its end and its result is recorded in
the job directory, where the next execution of the step finds it and takes it instead of
running the command a second time.

The worker passes it the job's lock file already locked (`flock`, inherited through
`pass_fds` under the worker's own fd number, which this process never needs to know):
the lock is held for as long as this process lives, and the kernel drops it when the
process dies, however it dies. "lock held" therefore means "the command may still run";
"lock free and `exit.json` present" means it ended and that is its result.

Files in JOB_DIR (owner-only):
    output.log   the command's stdout and stderr
    pid.json     {"pid", "start_time", "started"}: the command leads its own process group
    exit.json    {"exit_code", "ended", "error"}: written once, atomically, at the end

With `--redact-stdin` first, it reads a JSON list of secret values from its stdin (the
values of the groups and `${env.X}` the command was given) and relays the command's
output through a pipe, masking each value as `***` before a byte of it is written to
output.log: the file on disk never holds them in clear. A value cut across two reads is
held back only while the output ends with a beginning of one (so lines still stream as
they are printed); what is left at the end is written as it is.

With `--mask-log LOG` instead, it is only the masking relay of a service instance of the
local runtime (`shipflow.activities.targets.local.process.spawn`): its stdin is the
instance's output pipe, whose first line is the JSON list of values to mask; the rest is
appended to LOG, masked the same way, until every writer of the pipe has closed it.

Standard library only, and run with `-I`: it must start fast and never import the
worker's code.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path


def write_json(path: Path, data: dict[str, object]) -> None:
    """Write `data` to `path` atomically (temporary file, fsync, rename), mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def start_time_of(pid: int) -> int | None:
    """The kernel's start time of `pid`, so that a reused pid is never mistaken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


MASK = b"***"
#: After the command ended, its output is read on for at most this long (a process it
#: left in the background may hold the pipe open for ever).
DRAIN_S = 1.0


class Masker:
    """Masks known values in a byte stream that arrives in pieces."""

    def __init__(self, values: list[bytes]):
        self.values = sorted({v for v in values if v}, key=len, reverse=True)
        self.firsts = {v[0] for v in self.values}
        self.longest = max((len(v) for v in self.values), default=0)
        self.pending = b""

    def _mask(self, data: bytes) -> bytes:
        for value in self.values:
            data = data.replace(value, MASK)
        return data

    def _held(self, data: bytes) -> int:
        """How many bytes at the end of `data` are the beginning of a value (kept back)."""
        for size in range(min(len(data), self.longest - 1), 0, -1):
            if data[-size] in self.firsts:
                tail = data[-size:]
                if any(v.startswith(tail) for v in self.values):
                    return size
        return 0

    def feed(self, data: bytes) -> bytes:
        """What of the output so far can be written: every whole value in it masked."""
        data = self._mask(self.pending + data)
        held = self._held(data)
        self.pending = data[len(data) - held :] if held else b""
        return data[: len(data) - held] if held else data

    def end(self) -> bytes:
        rest, self.pending = self.pending, b""
        return rest


def _relay(read_fd: int, log_fd: int, masker: Masker, proc: subprocess.Popen[bytes]) -> None:
    """Copy the command's output to the log, masked, until it ends (or DRAIN_S after its exit)."""
    drain_until: float | None = None
    while True:
        timeout = 0.2 if drain_until is None else max(0.0, drain_until - time.monotonic())
        ready, _, _ = select.select([read_fd], [], [], timeout)
        if ready:
            data = os.read(read_fd, 65536)
            if not data:
                break
            _write_all(log_fd, masker.feed(data))
            continue
        if drain_until is not None and time.monotonic() >= drain_until:
            break
        if drain_until is None and proc.poll() is not None:
            drain_until = time.monotonic() + DRAIN_S
    _write_all(log_fd, masker.end())


def _encoded(value: str) -> bytes:
    """The bytes the command would print for `value` (as the environment encodes it)."""
    try:
        return os.fsencode(value)
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _default_sigint() -> None:
    """In the command's process, before exec: SIGINT as any program expects it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def supervise(job_dir: Path, argv: list[str], masked: list[str] | None = None) -> int:
    """Run `argv` to its end and record the outcome in `job_dir`. Returns the exit code.

    With `masked` values, the output goes through a pipe and is masked on its way to the log.
    """
    # A SIGTERM for the supervisor (e.g. the whole host shutting down) is passed on to the
    # command, whose exit is then recorded as usual.
    child: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        for pid in child:
            try:
                os.killpg(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    signal.signal(signal.SIGTERM, forward)
    # The supervisor must outlive a Ctrl-C; the command must not inherit that: an ignored
    # signal stays ignored across exec, so the child puts SIGINT back to its default.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log_fd = os.open(job_dir / "output.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    relay: tuple[int, int] | None = os.pipe() if masked else None
    # Taken before the command starts, not once Popen has returned (the command runs by
    # then): a duration measured from here is never shorter than the command ran.
    spawned = time.time()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=relay[1] if relay else log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: killing it never kills the supervisor
            preexec_fn=_default_sigint,  # single-threaded process: fork-safe
        )
    except OSError as e:
        write_json(
            job_dir / "exit.json",
            {"exit_code": None, "ended": time.time(), "error": f"cannot start: {e.strerror or e}"},
        )
        if relay:
            os.close(relay[0])
            os.close(log_fd)
        return 127
    finally:
        if relay:
            os.close(relay[1])  # the command holds the write end now
        else:
            os.close(log_fd)
    child.append(proc.pid)
    write_json(
        job_dir / "pid.json",
        {"pid": proc.pid, "start_time": start_time_of(proc.pid), "started": spawned},
    )
    if relay:
        try:
            _relay(relay[0], log_fd, Masker([_encoded(v) for v in masked or []]), proc)
        finally:
            os.close(relay[0])
            os.close(log_fd)
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for clarity)
            continue
    write_json(job_dir / "exit.json", {"exit_code": code, "ended": time.time(), "error": None})
    return 0


def mask_log(log_path: Path) -> int:
    """Append stdin to `log_path`, masking the values listed on its first line, until EOF.

    In a session of its own (so a Ctrl-C of the runtime never reaches it) and outside the
    instance's process group (so stopping the instance leaves it to write the last words).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    head = b""
    while b"\n" not in head:
        data = os.read(0, 65536)
        if not data:
            break
        head += data
    line, _, rest = head.partition(b"\n")
    values = [v for v in json.loads(line or b"[]") if isinstance(v, str)]
    masker = Masker([_encoded(v) for v in values])
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        _write_all(log_fd, masker.feed(rest))
        while data := os.read(0, 65536):
            _write_all(log_fd, masker.feed(data))
        _write_all(log_fd, masker.end())
    finally:
        os.close(log_fd)
    return 0


def main() -> int:
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--mask-log":
        return mask_log(Path(args[1]))
    masked: list[str] | None = None
    if args[:1] == ["--redact-stdin"]:
        args = args[1:]
        masked = [v for v in json.loads(sys.stdin.buffer.read() or b"[]") if isinstance(v, str)]
    if len(args) < 2:
        print("usage: supervisor.py [--redact-stdin] JOB_DIR ARGV...", file=sys.stderr)
        return 2
    return supervise(Path(args[0]), args[1:], masked)


if __name__ == "__main__":
    sys.exit(main())
