"""How a rollout ends other than by success: aborted on request, or failed (with a code)."""

from __future__ import annotations


class RolloutAborted(Exception):
    pass


class RolloutError(Exception):
    """The rollout failed; `code` is the wire `error_code` (`not_ready`, `analysis_failed`)."""

    def __init__(self, message: str, code: str = "not_ready"):
        super().__init__(message)
        self.code = code
