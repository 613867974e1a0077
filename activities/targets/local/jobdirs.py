"""Job directories: where each local job's supervisor records its pid, output and exit status.

One directory `<data dir>/jobs/<key>/<seq>/` per command started (`Job`); `JobStore` finds
the newest job of a run, step and purpose, starts a new one through `supervisor.py`, and
removes old directories. Kept apart from `jobs.py` (which follows a job while its step
runs) because this is the durable part a resumed step re-attaches to: what a job's state
is must not depend on the worker that started it. Also here: killing what is left of a
job's process group.
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

from shipflow.activities.targets.base import JobRequest, TargetError
from shipflow.activities.targets.local.process import pid_alive

TAIL_BYTES = 8192
KILL_GRACE_S = 5.0


#: The supervisor's first argument when it reads values to mask from its stdin.
REDACT_FLAG = "--redact-stdin"
#: Shorter values are not masked (as `shipflow.workflows.redaction.redact` does: masking
#: `a` everywhere would garble the output and show the secret by its holes).
MIN_REDACTED = 4


def redacted_values(values: list[str]) -> list[str]:
    """The values the supervisor masks: distinct, long enough, longest first."""
    return sorted({v for v in values if len(v) >= MIN_REDACTED}, key=len, reverse=True)


#: Job directories of steps that ended longer ago than this are removed.
KEEP_JOBS_S = 7 * 86400.0
SUPERVISOR = Path(__file__).resolve().with_name("supervisor.py")


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
        # Secret values the command was given are masked by the supervisor before its
        # output reaches output.log; they go over its stdin, never its argv (`ps` shows it).
        masked = redacted_values(request.redact)
        flag = [REDACT_FLAG] if masked else []
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            job.supervisor = subprocess.Popen(
                [sys.executable, "-I", str(SUPERVISOR), *flag, str(job.dir), *argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE if masked else subprocess.DEVNULL,
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
        if masked and job.supervisor.stdin is not None:
            # The supervisor reads this before it starts the command. A supervisor that
            # died first never starts it: the job is then `unstarted`, or `lost`.
            with contextlib.suppress(OSError):
                job.supervisor.stdin.write(json.dumps(masked).encode())
            with contextlib.suppress(OSError):
                job.supervisor.stdin.close()
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
