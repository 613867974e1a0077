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

Standard library only, and run with `-I`: it must start fast and never import the
worker's code.
"""

from __future__ import annotations

import json
import os
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


def _default_sigint() -> None:
    """In the command's process, before exec: SIGINT as any program expects it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def supervise(job_dir: Path, argv: list[str]) -> int:
    """Run `argv` to its end and record the outcome in `job_dir`. Returns the exit code."""
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
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: killing it never kills the supervisor
            preexec_fn=_default_sigint,  # single-threaded process: fork-safe
        )
    except OSError as e:
        write_json(
            job_dir / "exit.json",
            {"exit_code": None, "ended": time.time(), "error": f"cannot start: {e.strerror or e}"},
        )
        return 127
    finally:
        os.close(log_fd)
    child.append(proc.pid)
    write_json(
        job_dir / "pid.json",
        {"pid": proc.pid, "start_time": start_time_of(proc.pid), "started": time.time()},
    )
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for clarity)
            continue
    write_json(job_dir / "exit.json", {"exit_code": code, "ended": time.time(), "error": None})
    return 0


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: supervisor.py JOB_DIR ARGV...", file=sys.stderr)
        return 2
    return supervise(Path(sys.argv[1]), sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
