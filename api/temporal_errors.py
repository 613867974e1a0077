"""Temporal's answers as HTTP errors: one mapping for every route that reads a run from Temporal.

A read of a run (its status query, its start input) fails in three ways that a caller must
tell apart: the workflow does not exist (404), Temporal did not answer or answered with an
error (503, with Temporal's message), or it took longer than the route waits (503 naming
the wait). A workflow that exists but is not a shipflow run (its memo or input does not
parse) is a 404 too, with its own message. Routes await `ask_temporal(...)` instead of
repeating that `try` block.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import HTTPException, status
from temporalio.service import RPCError, RPCStatusCode

T = TypeVar("T")


def temporal_unavailable(e: RPCError) -> HTTPException:
    """The 503 for a Temporal call that failed other than with NOT_FOUND."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, f"Temporal did not answer: {e.message}"
    )


def temporal_timeout(within_s: float) -> HTTPException:
    """The 503 for a Temporal call that took longer than the route waits."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, f"Temporal did not answer within {within_s:g}s"
    )


async def ask_temporal(
    call: Awaitable[T],
    *,
    missing: str,
    within_s: float | None = None,
    unknown: tuple[type[Exception], ...] = (LookupError,),
    unknown_detail: str | None = None,
) -> T:
    """Await a read from Temporal; its failures become the HTTP errors described above.

    Args:
        call: the read (e.g. `read_status(client, run_id)`).
        missing: the 404 detail when Temporal has no such workflow.
        within_s: how long to wait (None: as long as the call takes).
        unknown: the errors that mean "not a shipflow run" (404).
        unknown_detail: their 404 detail (default: `missing`).
    """
    try:
        if within_s is None:
            return await call
        return await asyncio.wait_for(call, within_s)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, missing) from None
        raise temporal_unavailable(e) from None
    except TimeoutError:
        assert within_s is not None  # only `wait_for` times out here
        raise temporal_timeout(within_s) from None
    except unknown:
        raise HTTPException(status.HTTP_404_NOT_FOUND, unknown_detail or missing) from None
