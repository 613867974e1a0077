"""Whether the running attempt of a step is its last one.

A canary or blue-green that hits a retryable Kubernetes API error keeps its state for the
next attempt only when one will come; on the last attempt it aborts, so that no canary keeps
its share of the traffic behind a failed step. Two retry loops can bring a next attempt:

- the step's own, driven by the workflow (`release_attempts`; users see each attempt). Its
  activities run with Temporal's `maximum_attempts=1`, so Temporal's view says "last" every
  time; the attempt number is the tail of the activity id (`<step>:<activity>:<n>` or
  `...:<n>+<lost>`), the limit is the step's `max_attempts` in the activity input;
- Temporal's retry policy, for an activity scheduled with one (its attempt against
  `maximum_attempts`, 0 = unlimited, within the schedule-to-close deadline).

Unknown (an activity id of another shape, no limit given) counts as the last attempt: then
the strategy aborts, as it always did.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from temporalio import activity

_STEP_ATTEMPT = re.compile(r":(\d+)(?:\+\d+)?$")


def another_attempt_follows(step_max_attempts: int | None) -> bool:
    """True when a retryable failure of this activity execution is followed by another attempt.

    Args:
        step_max_attempts: the step's attempts in all (`retries + 1`), None if unknown.
    """
    info = activity.info()
    policy = info.retry_policy
    if policy is not None and (
        policy.maximum_attempts == 0 or info.attempt < policy.maximum_attempts
    ):
        deadline = info.schedule_to_close_timeout
        if not deadline:
            return True
        # The next attempt starts after the back-off; past the deadline it never starts.
        backoff = policy.initial_interval.total_seconds() * policy.backoff_coefficient ** (
            info.attempt - 1
        )
        if policy.maximum_interval is not None:
            backoff = min(backoff, policy.maximum_interval.total_seconds())
        first = info.scheduled_time
        if first.tzinfo is None:
            first = first.replace(tzinfo=UTC)
        return datetime.now(UTC) + timedelta(seconds=backoff) < first + deadline
    match = _STEP_ATTEMPT.search(info.activity_id or "")
    if match is None or not step_max_attempts:
        return False
    return int(match[1]) < step_max_attempts
