"""Local command jobs: supervised, recorded, re-attached; real processes, no Temporal.

A worker that died is played by a job started with `JobStore.start` and never followed;
the execution that resumes the step is `run_local_job` with (or without) the last
heartbeat of the dead one.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shipflow.activities.targets.base import JobFailed, JobRequest, TargetError
from shipflow.activities.targets.local.jobdirs import KEEP_JOBS_S, Job, JobStore
from shipflow.activities.targets.local.jobs import _checked, run_local_job
from shipflow.activities.targets.local.process import pid_alive
from tests.helpers import wait_until_sync
from tests.local.support import Beats


def req(command: list[str], **kw: object) -> JobRequest:
    return JobRequest(
        run_id="run-1", step_id="migrate", name="sf-run-1-migrate-migrate",
        command=command, execution="exec-1", **kw,  # type: ignore[arg-type]
    )


def counting(counter: Path, then: str) -> list[str]:
    return ["sh", "-c", f"echo ran >> {counter}; {then}"]


def started_and_abandoned(jobs: Path, request: JobRequest) -> Job:
    """A job whose worker died right after starting it: nobody follows it."""
    return JobStore(jobs).start(request, _checked(request))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_job_that_ended_unfollowed_is_taken_not_run_again(tmp_path: Path) -> None:
    counter, jobs = tmp_path / "counter", tmp_path / "jobs"
    request = req(counting(counter, "echo migrated"))
    job = started_and_abandoned(jobs, request)
    wait_until_sync(lambda: job.state() == "ended")
    # No heartbeat made it out: the newest job of this step is found all the same.
    result = run_local_job(request, Beats(), jobs)
    assert result.exit_code == 0 and result.output == "migrated\n"
    assert counter.read_text() == "ran\n"


def test_a_resumed_execution_takes_the_recorded_failure(tmp_path: Path) -> None:
    counter, jobs = tmp_path / "counter", tmp_path / "jobs"
    request = req(counting(counter, "echo 'ERROR: column exists'; exit 3"))
    job = started_and_abandoned(jobs, request)
    wait_until_sync(lambda: job.state() == "ended")
    with pytest.raises(JobFailed) as failed:
        run_local_job(request, Beats(resume=job.details()), jobs)
    assert failed.value.exit_code == 3
    assert failed.value.output == "ERROR: column exists\n"
    assert "exited with code 3: ERROR: column exists" in str(failed.value)
    assert counter.read_text() == "ran\n", "the failed attempt's command ran again"


def test_only_a_failed_attempt_starts_the_command_again(tmp_path: Path) -> None:
    counter, jobs = tmp_path / "counter", tmp_path / "jobs"
    request = req(counting(counter, "[ $(wc -l < " + str(counter) + ") -ge 2 ] || exit 1; echo ok"))
    with pytest.raises(JobFailed):
        run_local_job(request, Beats(), jobs)
    # The next attempt (no resume: the workflow counted a failure) runs it again.
    assert run_local_job(request, Beats(), jobs).output == "ok\n"
    assert counter.read_text() == "ran\nran\n"
    # A third execution of the same step (say a lost worker before its result reached
    # Temporal) takes the success instead of running it a third time.
    assert run_local_job(request, Beats(), jobs).output == "ok\n"
    assert counter.read_text() == "ran\nran\n"


def test_another_execution_of_the_same_run_id_runs_its_own_command(tmp_path: Path) -> None:
    counter, jobs = tmp_path / "counter", tmp_path / "jobs"
    first = req(counting(counter, "true"))
    run_local_job(first, Beats(), jobs)
    run_local_job(first.model_copy(update={"execution": "exec-2"}), Beats(), jobs)
    assert counter.read_text() == "ran\nran\n"


def test_a_command_that_still_runs_is_waited_for(tmp_path: Path) -> None:
    counter, jobs, go = tmp_path / "counter", tmp_path / "jobs", tmp_path / "go"
    request = req(counting(counter, f"while [ ! -e {go} ]; do sleep 0.05; done; echo finished"))
    job = started_and_abandoned(jobs, request)
    wait_until_sync(lambda: job.pid() is not None)
    beats = Beats(resume=job.details())
    result: list[object] = []
    follower = threading.Thread(target=lambda: result.append(run_local_job(request, beats, jobs)))
    follower.start()
    wait_until_sync(lambda: len(beats.beats) >= 2)
    assert beats.beats[-1]["job"] == job.seq and beats.beats[-1]["pgid"] == job.pid()[0]  # type: ignore[index]
    go.touch()
    follower.join(15)
    assert not follower.is_alive()
    assert result[0].output == "finished\n"  # type: ignore[attr-defined]
    assert counter.read_text() == "ran\n"


def test_cancellation_kills_the_whole_process_group_and_keeps_the_output(tmp_path: Path) -> None:
    child = tmp_path / "child"
    request = req(["sh", "-c", f"echo working; sleep 60 & echo $! > {child}; wait"])
    beats = Beats(cancel_when=lambda beat: child.exists() and beat["pgid"])
    with pytest.raises(JobFailed) as failed:
        run_local_job(request, beats, tmp_path / "jobs")
    assert "cancelled" in str(failed.value)
    assert failed.value.exit_code is not None and failed.value.exit_code < 0  # by a signal
    assert failed.value.output == "working\n"
    pgid = beats.beats[-1]["pgid"]
    assert not group_alive(pgid)
    assert not pid_alive(int(child.read_text()))


def test_timeout_kills_the_command(tmp_path: Path) -> None:
    request = req(["sh", "-c", "echo slow; sleep 60"], timeout_s=0.5)
    with pytest.raises(JobFailed) as failed:
        run_local_job(request, Beats(), tmp_path / "jobs")
    assert "timed out after 0.5s" in str(failed.value)
    assert failed.value.output == "slow\n"
    job = JobStore(tmp_path / "jobs").find(request, None)
    assert job is None  # a timed out job is a failed one: the next attempt starts afresh


def test_a_lost_supervisor_is_an_unknown_outcome_and_its_command_is_killed(tmp_path: Path) -> None:
    counter, jobs = tmp_path / "counter", tmp_path / "jobs"
    request = req(counting(counter, "sleep 60"))
    job = started_and_abandoned(jobs, request)
    wait_until_sync(lambda: job.pid() is not None)
    assert job.supervisor is not None
    job.supervisor.send_signal(signal.SIGKILL)
    job.supervisor.wait(5)
    assert job.state() == "lost"
    with pytest.raises(JobFailed) as failed:
        run_local_job(request, Beats(resume=job.details()), jobs)
    assert "outcome is unknown" in str(failed.value)
    pid = job.pid()
    assert pid is not None and not group_alive(pid[0])
    assert counter.read_text() == "ran\n"


def test_a_command_that_cannot_start_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(TargetError) as failed:
        run_local_job(req(["no-such-command-xyz"]), Beats(), tmp_path / "jobs")
    assert not failed.value.retryable and "command not found" in str(failed.value)


def test_job_records_are_owner_only_and_never_hold_argv_or_env(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    request = req(["sh", "-c", "echo done", "ARG-SECRET-1"], env={"TOKEN": "ENV-SECRET-2"})
    run_local_job(request, Beats(), jobs)
    (job_dir,) = [p for p in jobs.glob("*/*") if p.is_dir()]
    for path in [jobs, job_dir.parent, job_dir]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    for path in job_dir.iterdir():
        text = path.read_text()
        assert "ARG-SECRET-1" not in text and "ENV-SECRET-2" not in text, path
        if path.name in ("output.log", "pid.json", "exit.json"):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_pruning_spares_a_step_whose_job_is_being_created(tmp_path: Path) -> None:
    # Step A (a parallel step) has made its key directory but not yet its job directory:
    # step B starting now must not take the empty directory for an expired one.
    jobs = tmp_path / "jobs"
    (jobs / "step-a").mkdir(parents=True)
    run_local_job(req(["true"]), Beats(), jobs)
    assert (jobs / "step-a").is_dir(), "a parallel step's fresh key directory was pruned"


def test_pruning_removes_steps_that_ended_long_ago_and_only_those(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    old = time.time() - KEEP_JOBS_S - 3600
    for name, ended in [("expired", old), ("recent", time.time())]:
        job = started_and_abandoned(jobs, req(["true"]).model_copy(update={"execution": name}))
        wait_until_sync(lambda job=job: job.state() == "ended")  # type: ignore[misc]
        os.utime(job.dir / "exit.json", (ended, ended))
        os.utime(job.dir.parent, (ended, ended))
    run_local_job(req(["true"]).model_copy(update={"execution": "another"}), Beats(), jobs)
    kept = {
        JobStore.key(req(["true"]).model_copy(update={"execution": e})) for e in ("recent", "another")
    }
    assert {p.name for p in jobs.iterdir()} == kept


def test_pruning_survives_key_directories_removed_under_it(tmp_path: Path) -> None:
    # Another worker prunes (or creates) key directories while this one looks at them:
    # a directory gone between the listing and the look inside it is no error.
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    churn = subprocess.Popen(
        [
            sys.executable, "-c",
            "import os, sys\n"
            "steps = [os.path.join(sys.argv[1], f'other-step-{i}') for i in range(16)]\n"
            "open(os.path.join(sys.argv[1], 'churning'), 'w').close()\n"
            "while True:\n"
            "    for d in steps:\n"
            "        try:\n"
            "            os.mkdir(d); os.utime(d, (0, 0))\n"
            "        except OSError:\n"
            "            pass\n"
            "    for d in steps:\n"
            "        try:\n"
            "            os.rmdir(d)\n"
            "        except OSError:\n"
            "            pass\n",
            str(jobs),
        ]
    )
    try:
        wait_until_sync(lambda: (jobs / "churning").exists())
        store = JobStore(jobs)
        for _ in range(3000):
            store._prune(keep="this-step")
    finally:
        churn.kill()
        churn.wait()


def test_a_command_runs_with_sigint_at_its_default(tmp_path: Path) -> None:
    # The supervisor ignores SIGINT; an ignored signal survives exec, so without care every
    # command would shrug off Ctrl-C (and a `kill -INT` from its own scripts).
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    sig_ign = "grep SigIgn /proc/self/status"
    result = run_local_job(
        req(["sh", "-c", f"{sys.executable} -c '{probe}'; {sig_ign}"]), Beats(), tmp_path / "jobs"
    )
    ignored, mask = result.output.splitlines()
    assert ignored == "False", "the command inherited an ignored SIGINT"
    assert int(mask.split()[1], 16) & (1 << (signal.SIGINT - 1)) == 0, mask


class Streamed(Beats):
    """A Progress that keeps step logs: gets the command's output as it is printed."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def output(self, text: str) -> None:
        self.text += text


def test_secret_values_are_masked_before_the_output_reaches_disk(tmp_path: Path) -> None:
    # The secret a command was given (a group value, an `${env.X}`) and prints itself,
    # here cut in two writes with a pause between them: output.log never holds it.
    secret, jobs, gate = "TOP-SECRET-VALUE-42", tmp_path / "jobs", tmp_path / "gate"
    script = (
        f"echo first line; printf 'key=TOP-SECR'; while [ ! -f {gate} ]; do sleep 0.02; done; "
        "printf 'ET-VALUE-42 done\\n'; echo \"again $TOKEN\"; printf 'ends TOP'"
    )
    request = req(["sh", "-c", script], env={"TOKEN": secret}, redact=[secret, "ab"])
    assert secret not in repr(request) and secret not in str(request)
    progress, result = Streamed(), []
    worker = threading.Thread(target=lambda: result.append(run_local_job(request, progress, jobs)))
    worker.start()
    # A line is not held back while the command waits: only a possible start of a value is.
    wait_until_sync(lambda: "first line" in progress.text, what="the first line streamed")
    (log,) = jobs.glob("*/*/output.log")
    wait_until_sync(lambda: b"key=" in log.read_bytes(), what="the unmasked part written")
    assert b"TOP-SECR" not in log.read_bytes()
    gate.touch()
    worker.join(30)
    assert result and result[0].output == "first line\nkey=*** done\nagain ***\nends TOP"
    assert log.read_bytes() == b"first line\nkey=*** done\nagain ***\nends TOP"
    assert secret not in progress.text and "key=*** done" in progress.text
    # Short values are not masked (as `redact` does), and a job with nothing to mask
    # writes its output straight to the file, as before.
    plain = run_local_job(req(["sh", "-c", "echo ab"], redact=["ab"]), Beats(), tmp_path / "p")
    assert plain.output == "ab\n"
