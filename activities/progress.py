"""Heartbeats as a `Progress`: how targets and long activities report and resume.

A step's attempt after a lost worker is a new activity execution; the interpreter hands
it the last heartbeat of the lost one as `resume` in the input. `ActivityProgress`
exposes that (or, for a Temporal-level retry, the heartbeat details Temporal kept) so
the target can continue instead of starting over.
"""

from __future__ import annotations

import time
from typing import Any

from temporalio import activity


class ActivityProgress:
    """The `shipflow.activities.targets.base.Progress` of the running activity."""

    def __init__(self, resume: dict[str, Any] | None = None, *, min_interval_s: float = 0.5):
        if resume is None:
            details = activity.info().heartbeat_details
            if details and isinstance(details[0], dict):
                resume = details[0]
        self._resume = resume
        self._min_interval_s = min_interval_s
        self._last_beat = 0.0
        self.last: dict[str, Any] | None = resume

    @property
    def resume(self) -> dict[str, Any] | None:
        return self._resume

    def beat(self, details: dict[str, Any]) -> None:
        """Heartbeat, but not more often than every `min_interval_s` for unchanged details.

        The SDK throttles heartbeats too; this keeps chatty loops from building payloads.
        """
        now = time.monotonic()
        if details != self.last or now - self._last_beat >= self._min_interval_s:
            self.last = details
            self._last_beat = now
            activity.heartbeat(details)

    def cancelled(self) -> bool:
        return activity.is_cancelled() or activity.is_worker_shutdown()
