"""Supervision of a running stack: a child that dies is restarted with exponential back-off.

Each restart is logged with the exit code and counted (`restarts()`); the stack gives up,
stops everything and says why (`failure`) only when one child crashes more than
`max_restarts` times within `restart_window_s`.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable

from shipflow.infra.stack.lifecycle import StackLifecycle
from shipflow.infra.stack.processes import Child, StackError, _Pending


class Supervision(StackLifecycle):
    """Restarting children that die, with back-off and a crash budget (mixed into `EmbeddedStack`)."""

    def dead_child(self) -> Child | None:
        """A child that exited on its own, if any (until the supervisor restarts it)."""
        for child in self.children:
            if not child.alive():
                return child
        return None

    def restarts(self) -> dict[str, int]:
        """How often each child was restarted since the stack started."""
        return {c.name: c.restarts for c in self.children}

    def wait(self, poll_s: float = 0.5) -> Child:
        """Supervise until a child keeps crashing; return it (`failure` says why).

        Every child that exits on its own is restarted (see `supervise_once`). Ctrl-C
        raises KeyboardInterrupt as usual; the caller then calls `stop()`.
        """
        while True:
            given_up = self.supervise_once()
            if given_up is not None:
                return given_up
            if self._stopping.wait(poll_s):
                raise StackError("the stack was stopped")

    def supervise_in_background(self, poll_s: float = 0.2) -> None:
        """Supervise from a thread until `stop()`; a child that keeps crashing stops the stack.

        The thread restarts children, so it is their parent thread for `--pdeathsig`: it
        lives until the stack stops.
        """
        if self._supervisor is not None:
            return

        def loop() -> None:
            while not self._stopping.wait(poll_s):
                try:
                    given_up = self.supervise_once()
                except Exception as e:  # never die silently: say why and stop
                    self.failure = f"the supervisor failed: {type(e).__name__}: {e}"
                    given_up = None
                if given_up is not None or self.failure is not None:
                    self._say(f"error: {self.failure}")
                    self.stop()
                    return
            # The children this thread restarted get SIGTERM when it ends (pdeathsig):
            # end only once stop() has stopped them in order (services first).
            self._stopped.wait(timeout=300)

        self._supervisor = threading.Thread(target=loop, name="stack-supervisor", daemon=True)
        self._supervisor.start()

    def supervise_once(self) -> Child | None:
        """Restart every child that has exited; return one that keeps crashing, if any.

        A child is restarted after a back-off that doubles with each crash within
        `restart_window_s`; if it crashed more than `max_restarts` times in that window
        it is left dead, `failure` says so and the child is returned.
        """
        with self._children_lock:
            for child in list(self.children):
                if self._stopping.is_set():
                    return None
                if child.alive() or child not in self.children:
                    continue
                now = time.monotonic()
                child.crashes = [t for t in child.crashes if now - t < self.restart_window_s]
                child.crashes.append(now)
                code = child.proc.returncode
                if len(child.crashes) > self.max_restarts:
                    self.failure = (
                        f"{child.name} exited with code {code} and crashed "
                        f"{len(child.crashes)} times within {self.restart_window_s:g}s "
                        f"(after {child.restarts} restarts); stopping the stack. Its log "
                        f"({child.log_path}) ends with:\n{child.log_tail(1500)}"
                    )
                    return child
                delay = min(self.backoff_s * 2 ** (len(child.crashes) - 1), self.max_backoff_s)
                self._say(
                    f"{child.name}: exited with code {code}; restarting it in {delay:.1f}s "
                    f"(restart {child.restarts + 1}; {len(child.crashes)} crashes within "
                    f"{self.restart_window_s:g}s)"
                )
                if self._stopping.wait(delay):
                    return None
                self._restart(child)
        return None

    def _restart(self, old: Child) -> None:
        """Start `old`'s piece again in its place (same ports, data, log file)."""
        starters: dict[str, Callable[[], _Pending | None]] = {
            "temporal": self._start_temporal,
            "runtime": self._start_runtime,
            "s3": self._start_s3_pending,
            "worker": self._start_worker,
            "api": self._start_api,
        }
        index = self.children.index(old)
        self.children.remove(old)
        self._stop_child(old)  # reaps what it left in its group, closes its log
        before = list(self.children)
        try:
            pending = starters[old.name]()
        except StackError as e:
            # Could not even start it: count it as one more crash on the next round.
            self._say(f"{old.name}: restart failed: {e}")
            self.children.insert(index, old)
            return
        new = next((c for c in self.children if c not in before), None)
        if new is None:
            return
        self.children.remove(new)
        self.children.insert(index, new)
        new.restarts, new.crashes = old.restarts + 1, old.crashes
        try:
            self._await(pending)
        except StackError as e:
            self._say(f"{old.name}: not healthy after restart: {e}")
            self._kill(new)  # seen dead on the next round: one more crash
            with contextlib.suppress(subprocess.TimeoutExpired):
                new.proc.wait(timeout=5)
            return
        self._say(f"{new.name}: restarted (pid {new.proc.pid}, restart {new.restarts})")
