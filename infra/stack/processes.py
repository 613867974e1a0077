"""The stack's child processes: `Child`, starting one in its own process group, stopping it.

Kept apart from what each child is (`components.py`) and from when it counts as started
(`readiness.py`): this is only process mechanics, including the parent-death signal that
keeps a child from outliving a stack that died without `stop()`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shipflow.infra.stack.config import REPO_ROOT, StackConfig


class StackError(RuntimeError):
    """The stack could not start (a child died, or was not healthy in time)."""


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    """Prefix `argv` so that the child gets SIGTERM if the stack's process dies unstopped.

    `setpriv --pdeathsig` (util-linux) sets it and execs the command; the setting
    survives exec. Where setpriv is missing only `stop()` (and atexit) protect against
    orphans. Not done with `preexec_fn`: running Python between fork and exec is unsafe
    once the Temporal client's threads exist. The signal fires when the *thread* that
    started the child exits, so start the stack from a thread that lives as long as it.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


@dataclass
class Child:
    """One started process. `own_group`: started in its own session, so its group is ours to kill."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    own_group: bool = True
    grace_s: float = 10.0
    log_file: IO[bytes] | None = field(default=None, repr=False)
    #: How often it was restarted, and when it crashed lately (monotonic seconds).
    restarts: int = 0
    crashes: list[float] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


#: A started child, what it is awaited for, and the readiness check.
_Pending = tuple[Child, str, Callable[[], bool]]


class ChildProcesses(StackConfig):
    """Starting and stopping the stack's children (mixed into `EmbeddedStack`).

    Each child runs in its own session with its log under `<data_dir>/logs`; stopping is
    SIGTERM, a grace period, then SIGKILL of the whole process group.
    """

    def _spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        grace_s: float = 10.0,
    ) -> Child:
        log_path = self.logs_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115  (closed in _stop_child)
        try:
            proc = subprocess.Popen(
                _with_parent_death_signal(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                # Own session: Ctrl-C in the terminal reaches only us, and we stop the
                # children in order; their whole group can be killed at the end.
                start_new_session=True,
            )
        except OSError as e:
            log_file.close()
            raise StackError(f"cannot start {name} ({argv[0]}): {e}") from e
        child = Child(name, proc, log_path, own_group=True, grace_s=grace_s, log_file=log_file)
        self.children.append(child)
        return child

    def _stop_child(self, child: Child) -> None:
        proc = child.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=child.grace_s)
            except subprocess.TimeoutExpired:
                self._say(f"{child.name}: no exit {child.grace_s:g}s after SIGTERM; killing it")
                self._kill(child)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        if child.own_group:
            # Whatever it started in its group and left behind goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if child.log_file is not None:
            child.log_file.close()

    @staticmethod
    def _kill(child: Child) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if child.own_group:
                os.killpg(child.proc.pid, signal.SIGKILL)
            else:
                child.proc.kill()
