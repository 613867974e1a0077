"""One-off commands on the worker's host: `migrate` on the local target, `undo: {command}`.

argv only, never a shell. The command runs in its own session (process group), so that
a timeout or a cancelled run can kill it together with everything it started. The
process group id is heartbeated: an attempt that follows a lost worker kills a
still-running leftover before it starts again, so two copies never run at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from activities.targets.base import JobFailed, JobRequest, JobResult, Progress, TargetError

TAIL_BYTES = 8192
KILL_GRACE_S = 5.0


def run_local_job(request: JobRequest, progress: Progress) -> JobResult:
    """Run `request.command` to completion on this host.

    Raises:
        JobFailed: non-zero exit (retryable per the step's retries) or a timeout.
        TargetError: the command does not exist or cannot be started (not retryable).
    """
    if not request.command:
        raise TargetError("empty command", retryable=False)
    _kill_leftover(progress.resume)
    cwd = request.cwd
    if cwd is not None and not Path(cwd).is_dir():
        raise TargetError(f"working directory {cwd!r} does not exist", retryable=False)
    program = request.command[0]
    if shutil.which(program, path=request.env.get("PATH", os.environ.get("PATH"))) is None and not (
        os.sep in program and os.access(program, os.X_OK)
    ):
        raise TargetError(f"command not found: {program!r}", retryable=False)
    env = {
        **os.environ,
        **request.env,
        "SHIPFLOW_RUN_ID": request.run_id,
        "SHIPFLOW_STEP_ID": request.step_id,
    }
    if request.image:
        env["SHIPFLOW_IMAGE"] = request.image
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            request.command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        raise TargetError(f"cannot start {program!r}: {e.strerror or e}", retryable=False) from e
    tail = _Tail()
    reader = threading.Thread(target=tail.consume, args=(proc,), daemon=True)
    reader.start()
    outcome = "exited"
    interrupted: BaseException | None = None
    try:
        while proc.poll() is None:
            progress.beat({"pgid": proc.pid, "started": started, "host": os.uname().nodename})
            if progress.cancelled():
                outcome = "cancelled"
                break
            if request.timeout_s is not None and time.monotonic() - started > request.timeout_s:
                outcome = "timeout"
                break
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    except BaseException as e:  # the SDK raises cancellation into this thread
        interrupted = e
        outcome = "cancelled"
    _stop(proc, reader)
    if interrupted is not None:
        raise interrupted
    duration = time.monotonic() - started
    output = tail.text()
    if outcome == "cancelled":
        raise JobFailed(
            "cancelled; the command's process group was killed",
            exit_code=proc.returncode,
            output=output,
        )
    if outcome == "timeout":
        raise JobFailed(
            f"timed out after {request.timeout_s:g}s; the command's process group was killed",
            exit_code=proc.returncode,
            output=output,
        )
    if proc.returncode != 0:
        last = output.strip().splitlines()[-1:] if output.strip() else []
        hint = f": {last[0][:300]}" if last else ""
        raise JobFailed(
            f"{program} exited with code {proc.returncode}{hint}",
            exit_code=proc.returncode,
            output=output,
        )
    return JobResult(exit_code=0, output=output, duration_s=round(duration, 3))


def _stop(proc: subprocess.Popen[bytes], reader: threading.Thread) -> None:
    """Kill what is left of the command's group, even if a cancellation lands meanwhile."""
    for _ in range(3):
        try:
            if _group_alive(proc.pid) or proc.poll() is None:
                _kill_group(proc.pid, proc)
            reader.join(timeout=5)
            return
        except BaseException:  # a late cancellation: finish the cleanup first
            continue


class _Tail:
    """Keeps the last TAIL_BYTES of a process's output without holding all of it."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def consume(self, proc: subprocess.Popen[bytes]) -> None:
        stream = proc.stdout
        assert stream is not None
        read = getattr(stream, "read1", stream.read)
        for chunk in iter(lambda: read(4096), b""):
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size - len(self._chunks[0]) >= TAIL_BYTES:
                self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        data = b"".join(self._chunks)[-TAIL_BYTES:]
        return data.decode("utf-8", errors="replace")


def _kill_group(pgid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the group, give it KILL_GRACE_S, then SIGKILL whatever is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_leftover(resume: dict[str, object] | None) -> None:
    if not resume or resume.get("host") != os.uname().nodename:
        return
    pgid = resume.get("pgid")
    if isinstance(pgid, int) and pgid > 1 and _group_alive(pgid):
        _kill_group(pgid)
