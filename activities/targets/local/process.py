"""Process helpers of the local runtime and of local jobs: spawn in a new session, stop a group, check a pid.

Instances are started with `start_new_session=True`, so each is the leader of its own
process group: stopping it signals the whole group (a shell wrapper and its children go
together), and signals sent to the runtime's own group (Ctrl-C in `shipflow dev`) never
reach the services, which must outlive the runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """An ephemeral loopback port that is free right now (the kernel picks it)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago (all held open while picking).

    The one port picker of shipflow: the runtime's instances, the embedded stack's
    components and the tests all use it.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def find_command(argv0: str, *, cwd: str | None, env: dict[str, str]) -> str | None:
    """Where `argv0` would be executed from, or None when it cannot be found."""
    if os.sep in argv0:
        path = Path(cwd or ".") / argv0 if not os.path.isabs(argv0) else Path(argv0)
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(argv0, path=env.get("PATH"))


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, when given, started at `start_time`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return start_time is None or int(fields[19]) == start_time


#: The local job supervisor, whose `--mask-log` mode relays an instance's output masked.
SUPERVISOR = Path(__file__).resolve().with_name("supervisor.py")


def spawn(
    argv: list[str],
    *,
    cwd: str | None,
    env: dict[str, str],
    log_path: Path,
    masked: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start an instance in its own session, stdout and stderr appended to `log_path`.

    With `masked` values (secrets the instance was given), its output goes through a pipe
    to the supervisor's masking relay (`supervisor.py --mask-log`), which writes it to
    `log_path` with each value masked as `***`: the file never holds them in clear. The
    relay runs in a session of its own and ends when the instance's output ends, so, like
    the instance, it outlives the runtime. The values travel over the pipe, never in argv.

    Raises:
        OSError: the command cannot be executed (not found, not executable, bad cwd).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if masked:
        return _spawn_masked(argv, cwd=cwd, env=env, log_path=log_path, masked=masked)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def _spawn_masked(
    argv: list[str], *, cwd: str | None, env: dict[str, str], log_path: Path, masked: list[str]
) -> subprocess.Popen[bytes]:
    read_end, write_end = os.pipe()
    try:
        subprocess.Popen(
            [sys.executable, "-I", str(SUPERVISOR), "--mask-log", str(log_path)],
            stdin=read_end,
            env={},  # standard library only: it needs none of the runtime's environment
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(read_end)
    try:
        header = json.dumps(masked).encode() + b"\n"
        while header:  # the relay reads it at once: a pipe holds 64 KiB meanwhile
            header = header[os.write(write_end, header) :]
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(write_end)  # the instance holds it now: the relay ends when the instance does


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group led by `pid`; a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def exited(proc: subprocess.Popen[bytes] | None, pid: int, start_time: int | None) -> bool:
    """Has the instance exited? Reaps our own children; checks adopted pids by /proc."""
    if proc is not None:
        return proc.poll() is not None
    return not pid_alive(pid, start_time)


def tail(path: Path, limit: int = 800) -> str:
    """The last `limit` characters of a log file, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def kill_now(pid: int) -> None:
    """SIGKILL a group and give the kernel a moment; used by cleanup paths and tests."""
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.01)
