"""One-off commands on the worker's host: `migrate` on the local target, `undo: {command}`.

A command runs at most once per attempt of its step, whatever happens to the worker.
It is not a child of the worker: a small supervisor (`supervisor.py`), in a session of
its own, starts it and records its pid, output and exit status in a job directory under
`<data dir>/jobs/`. If the worker dies, the command runs on; the execution of the step
that resumes it finds the job (by the job named in the last heartbeat, or as the newest
job of the same run, step and purpose) and re-attaches: it waits for a command that still
runs and takes the recorded result of one that ended. Only a job that really failed (or
whose supervisor was lost, so its outcome is unknown) is followed by a new one.

argv only, never a shell. The command leads its own process group, so a timeout or a
cancelled run kills it together with everything it started. The timeout counts from the
job's start, not from the resumed execution's.

A job directory can be re-attached only on the host (and data dir) where it started:
a step resumed on another machine starts its command afresh, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipflow.activities.core.settings import secret_env_names
from shipflow.activities.targets.base import JobFailed, JobRequest, JobResult, Progress, TargetError
from shipflow.activities.targets.local.process import pid_alive

TAIL_BYTES = 8192
KILL_GRACE_S = 5.0
POLL_S = 0.1
#: How long the supervisor may take to record the command's pid, or its exit after a kill.
RECORD_WAIT_S = 10.0
#: Job directories of steps that ended longer ago than this are removed.
KEEP_JOBS_S = 7 * 86400.0
SUPERVISOR = Path(__file__).resolve().with_name("supervisor.py")


def run_local_job(request: JobRequest, progress: Progress, jobs_dir: Path) -> JobResult:
    """Run `request.command` to completion on this host, or re-attach to it.

    Raises:
        JobFailed: non-zero exit (retryable per the step's retries), a timeout, a
            cancellation, or a supervisor that was lost so the outcome is unknown.
        TargetError: the command does not exist or cannot be started (not retryable).
    """
    store = JobStore(jobs_dir)
    job = store.find(request, progress.resume)
    if job is None:
        job = store.start(request, _checked(request))
    return _follow(job, request, progress)


def _checked(request: JobRequest) -> tuple[list[str], dict[str, str], str | None]:
    """argv, env and cwd of a command that can be started; clear errors otherwise."""
    if not request.command:
        raise TargetError("empty command", retryable=False)
    cwd = request.cwd
    if cwd is not None and not Path(cwd).is_dir():
        raise TargetError(f"working directory {cwd!r} does not exist", retryable=False)
    program = request.command[0]
    if shutil.which(program, path=request.env.get("PATH", os.environ.get("PATH"))) is None and not (
        os.sep in program and os.access(program, os.X_OK)
    ):
        raise TargetError(f"command not found: {program!r}", retryable=False)
    # The worker's environment, less shipflow's own secrets (API tokens, payload and runtime
    # keys): a flow's command gets them only where its author wrote `${env.X}`.
    hidden = secret_env_names()
    env = {
        **{k: v for k, v in os.environ.items() if k not in hidden},
        **request.env,
        "SHIPFLOW_RUN_ID": request.run_id,
        "SHIPFLOW_STEP_ID": request.step_id,
    }
    if request.image:
        env["SHIPFLOW_IMAGE"] = request.image
    return list(request.command), env, cwd


# ---------------------------------------------------------------- job records


@dataclass
class Job:
    """One command started by one supervisor: a directory `<jobs>/<key>/<seq>/`."""

    dir: Path
    key: str
    seq: int
    supervisor: subprocess.Popen[bytes] | None = None

    def read(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def state(self) -> str:
        """`running` (the supervisor lives), `ended` (result recorded), `lost`
        (the supervisor died after starting the command, outcome unknown) or
        `unstarted` (the supervisor never started the command)."""
        if self.supervisor is not None:
            self.supervisor.poll()  # reap our own child, if it is one
        if (self.dir / "exit.json").exists():
            return "ended"
        if _lock_held(self.dir / "lock"):
            return "running"
        if (self.dir / "exit.json").exists():  # ended between the two looks
            return "ended"
        return "lost" if (self.dir / "pid.json").exists() else "unstarted"

    def local(self) -> bool:
        """Started on this host? Pids and locks mean nothing on another one (shared data dir)."""
        info = self.read("job.json") or {}
        return info.get("host") == os.uname().nodename

    def succeeded(self) -> bool:
        result = self.read("exit.json")
        return result is not None and result.get("exit_code") == 0

    def started_at(self) -> float:
        info = self.read("job.json") or {}
        return float(info.get("created") or time.time())

    def pid(self) -> tuple[int, int | None] | None:
        info = self.read("pid.json")
        if info is None or not isinstance(info.get("pid"), int) or info["pid"] <= 1:
            return None
        return info["pid"], info.get("start_time")

    def output(self) -> str:
        try:
            with open(self.dir / "output.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - TAIL_BYTES))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def details(self) -> dict[str, Any]:
        """What the heartbeat carries: enough for the next execution to re-attach."""
        pid = self.pid()
        return {
            "job_key": self.key,
            "job": self.seq,
            "pgid": pid[0] if pid else None,
            "started": self.started_at(),
            "host": os.uname().nodename,
        }


class JobStore:
    """The job directories of this host, under the worker's data dir."""

    def __init__(self, root: Path):
        self.root = root

    @staticmethod
    def key(request: JobRequest) -> str:
        raw = json.dumps([request.execution, request.run_id, request.step_id, request.name])
        return hashlib.sha256(raw.encode()).hexdigest()[:24]

    def find(self, request: JobRequest, resume: dict[str, Any] | None) -> Job | None:
        """The job this execution must re-attach to, or None to start a new one."""
        key = self.key(request)
        if resume and resume.get("job_key") == key and isinstance(resume.get("job"), int):
            # Resumed after a lost worker: that job is this attempt, whatever its outcome.
            job = Job(self.root / key / str(resume["job"]), key, resume["job"])
            if job.dir.is_dir() and job.local() and job.state() != "unstarted":
                return job
        seqs = self._seqs(key)
        if not seqs:
            return None
        # No heartbeat came through (the worker died right after starting the command):
        # the newest job is still this attempt's unless it failed.
        job = Job(self.root / key / str(seqs[-1]), key, seqs[-1])
        if not job.local():
            return None
        state = job.state()
        if state == "running" or (state == "ended" and job.succeeded()):
            return job
        if state == "lost":
            _kill_leftover(job)
        return None

    def start(
        self, request: JobRequest, command: tuple[list[str], dict[str, str], str | None]
    ) -> Job:
        """Create the next job directory and start its supervisor, which starts the command."""
        argv, env, cwd = command
        key = self.key(request)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._prune(keep=key)
        (self.root / key).mkdir(exist_ok=True, mode=0o700)
        seq = (self._seqs(key) or [0])[-1] + 1
        while True:
            try:
                (self.root / key / str(seq)).mkdir(mode=0o700)
                break
            except FileExistsError:
                seq += 1
            except FileNotFoundError:  # removed by an older worker's prune: make it again
                (self.root / key).mkdir(exist_ok=True, mode=0o700)
        job = Job(self.root / key / str(seq), key, seq)
        # Never the argv or env: they may hold secrets resolved from `${env.X}`.
        info = {
            "run_id": request.run_id,
            "step_id": request.step_id,
            "name": request.name,
            "program": argv[0],
            "created": time.time(),
            "host": os.uname().nodename,
        }
        fd = os.open(job.dir / "job.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        # The lock is taken here and handed to the supervisor, so that there is no moment
        # in which the job exists, unlocked, and could be taken for one that was lost.
        lock = os.open(job.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            job.supervisor = subprocess.Popen(
                [sys.executable, "-I", str(SUPERVISOR), str(job.dir), *argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # outlives the worker and its process group
                pass_fds=(lock,),
            )
        except OSError as e:
            raise TargetError(
                f"cannot start the supervisor of {argv[0]!r}: {e.strerror or e}", retryable=False
            ) from e
        finally:
            os.close(lock)
        return job

    def _seqs(self, key: str) -> list[int]:
        try:
            names = [p.name for p in (self.root / key).iterdir()]
        except OSError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def _prune(self, *, keep: str) -> None:
        """Remove the records of steps whose newest job ended more than KEEP_JOBS_S ago."""
        cutoff = time.time() - KEEP_JOBS_S
        try:
            keys = [p for p in self.root.iterdir() if p.is_dir() and p.name != keep]
        except OSError:
            return
        for key_dir in keys:
            # Another worker may be creating this directory (an empty or young one is a job
            # being started: between its two mkdirs it holds no job yet) or removing it.
            with contextlib.suppress(OSError):
                if key_dir.stat().st_mtime >= cutoff:
                    continue
                jobs = [p for p in key_dir.iterdir() if p.is_dir()]
                if jobs and all(
                    (j / "exit.json").exists()
                    and (j / "exit.json").stat().st_mtime < cutoff
                    and not _lock_held(j / "lock")
                    for j in jobs
                ):
                    shutil.rmtree(key_dir, ignore_errors=True)


# ---------------------------------------------------------------- following a job


#: At most this much new output is read per poll (a command printing faster is cut in logs).
STREAM_CHUNK = 256 * 1024


def _stream_output(job: Job, offset: int, emit: Any, *, final: bool) -> int:
    """Hand `emit` the complete lines printed since `offset` (all of it when `final`);
    returns the new offset."""
    try:
        with open(job.dir / "output.log", "rb") as f:
            f.seek(offset)
            chunk = f.read(STREAM_CHUNK)
    except OSError:
        return offset
    if not final:
        end = chunk.rfind(b"\n")
        if end < 0:
            return offset
        chunk = chunk[: end + 1]
    if chunk:
        emit(chunk.decode("utf-8", errors="replace"))
    return offset + len(chunk)


def _follow(job: Job, request: JobRequest, progress: Progress) -> JobResult:
    """Wait for the job to end (heartbeating), then turn its record into a result."""
    program = request.command[0] if request.command else "command"
    started = job.started_at()
    outcome = "ended"
    interrupted: BaseException | None = None
    # A Progress that keeps step logs gets the command's output as it is printed.
    # The heartbeat carries how far the output was streamed, so an execution that
    # re-attaches after a lost worker does not log the same lines twice.
    emit = getattr(progress, "output", None)
    resume = progress.resume or {}
    same_job = resume.get("job_key") == job.key and resume.get("job") == job.seq
    offset = int(resume.get("log_offset") or 0) if emit is not None and same_job else 0
    try:
        while job.state() == "running":
            progress.beat({**job.details(), "log_offset": offset} if emit else job.details())
            if emit is not None:
                offset = _stream_output(job, offset, emit, final=False)
            if progress.cancelled():
                outcome = "cancelled"
                break
            if request.timeout_s is not None and time.time() - started > request.timeout_s:
                outcome = "timeout"
                break
            time.sleep(POLL_S)
    except BaseException as e:  # the SDK raises cancellation into this thread
        interrupted = e
        # A cancelled run kills the command. Anything else that ends this execution (the
        # worker shutting down) leaves it to its supervisor: the next execution re-attaches.
        outcome = "cancelled" if progress.cancelled() else "abandoned"
    if outcome in ("cancelled", "timeout"):
        _stop(job)
    if emit is not None and interrupted is None:
        _stream_output(job, offset, emit, final=True)
    if interrupted is not None:
        raise interrupted
    record = job.read("exit.json")
    output = job.output()
    code = record.get("exit_code") if record else None
    if outcome == "cancelled":
        raise JobFailed("cancelled; the command's process group was killed", exit_code=code, output=output)
    if outcome == "timeout":
        raise JobFailed(
            f"timed out after {request.timeout_s:g}s; the command's process group was killed",
            exit_code=code,
            output=output,
        )
    if record is None:
        _kill_leftover(job)
        raise JobFailed(
            f"the supervisor of {program!r} was lost before it recorded how the command "
            "ended; its outcome is unknown",
            exit_code=None,
            output=output,
        )
    if record.get("error"):
        raise TargetError(f"{program!r}: {record['error']}", retryable=False)
    if code != 0:
        last = output.strip().splitlines()[-1:] if output.strip() else []
        hint = f": {last[0][:300]}" if last else ""
        how = f"was killed by signal {-code}" if isinstance(code, int) and code < 0 else (
            f"exited with code {code}"
        )
        raise JobFailed(f"{program} {how}{hint}", exit_code=code, output=output)
    pid = job.read("pid.json") or {}
    duration = float(record.get("ended") or time.time()) - float(pid.get("started") or started)
    return JobResult(exit_code=0, output=output, duration_s=round(max(duration, 0.0), 3))


def _stop(job: Job) -> None:
    """Kill the job's process group and wait for its exit to be recorded.

    Finishes even if a late cancellation lands in the middle of it.
    """
    for _ in range(3):
        try:
            deadline = time.monotonic() + RECORD_WAIT_S
            while job.pid() is None and job.state() == "running" and time.monotonic() < deadline:
                time.sleep(0.02)  # the supervisor is still starting the command
            _kill_leftover(job)
            while job.state() == "running" and time.monotonic() < deadline:
                time.sleep(0.02)
            return
        except BaseException:  # a late cancellation: finish the cleanup first
            continue


def _kill_leftover(job: Job) -> None:
    """Kill what still runs of the job's process group (its leader, or its stragglers).

    A group whose leader is gone can only be the job's own: a group id is not reused
    while the group has members.
    """
    pid = job.pid()
    if pid is None:
        return
    if pid_alive(*pid) or (not pid_alive(pid[0]) and _group_alive(pid[0])):
        _kill_group(pid[0])


def _kill_group(pgid: int) -> None:
    """SIGTERM the group, give it KILL_GRACE_S, then SIGKILL whatever is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_held(path: Path) -> bool:
    """Is the job's lock held, i.e. does its supervisor still live?"""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
