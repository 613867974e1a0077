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

This module follows a job while its step runs (streams its output, enforces the timeout,
stops it on cancel); the job directories themselves are `jobdirs.py`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from shipflow.activities.core.settings import inherited_environ
from shipflow.activities.targets.base import JobFailed, JobRequest, JobResult, Progress, TargetError
from shipflow.activities.targets.local.jobdirs import Job, JobStore, _kill_leftover

POLL_S = 0.1
#: How long the supervisor may take to record the command's pid, or its exit after a kill.
RECORD_WAIT_S = 10.0


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
    env = {
        **inherited_environ(),
        **request.env,
        "SHIPFLOW_RUN_ID": request.run_id,
        "SHIPFLOW_STEP_ID": request.step_id,
    }
    if request.image:
        env["SHIPFLOW_IMAGE"] = request.image
    return list(request.command), env, cwd


# ---------------------------------------------------------------- job records


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
        raise JobFailed(
            "cancelled; the command's process group was killed", exit_code=code, output=output
        )
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
        how = (
            f"was killed by signal {-code}"
            if isinstance(code, int) and code < 0
            else (f"exited with code {code}")
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
