"""Kubernetes API errors mapped, in one place, to the target errors of `base.py`.

Every call the Kubernetes target makes goes through `call()` (or the `mapped()` context
manager), so a 403 reads the same whichever object was touched, and whether a failure
is permanent (the step fails at once) or temporary (the step's retry policy applies) is
decided here and nowhere else.

Messages name the verb, the object and the namespace, and carry the API server's own
message for 422s; they never carry request bodies (which may hold environment values).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from shipflow.activities.targets.base import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    TargetError,
    Transient,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Attempts of one API call inside the target for conflicts and transient failures;
#: the step's retry policy is the outer net, this only absorbs short blips.
CALL_ATTEMPTS = 4
CALL_BACKOFF_S = 0.1


def _api_message(e: ApiException) -> str:
    """The `message` of the Kubernetes `Status` body, or the HTTP reason if there is none."""
    body = e.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str) and body:
        try:
            status = json.loads(body)
        except ValueError:
            status = None
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    return str(e.reason or "")


def describe(verb: str, kind: str, name: str | None, namespace: str) -> str:
    what = f"{kind}/{name}" if name else kind
    return f"{verb} {what} in namespace {namespace}"


def api_error(
    e: BaseException, *, verb: str, kind: str, name: str | None, namespace: str
) -> TargetError:
    """The target error for a failed Kubernetes API call.

    Args:
        e: what the client raised: an `ApiException` or a urllib3/socket error.
        verb: the API verb (`get`, `list`, `watch`, `patch`, `create`, `delete`).
        kind: the resource, plural as in RBAC rules (`deployments`, `jobs`, `pods/log`).
        name: the object's name, None for collection calls.
        namespace: the namespace the call was made in.
    """
    what = f"{kind}/{name}" if name else kind
    where = f"in namespace {namespace}"
    if isinstance(e, ApiException):
        status = int(e.status or 0)
        message = _api_message(e)
        if status == 404:
            return NotFound(f"not found: {what} {where} ({verb})")
        if status == 403:
            return Forbidden(f"forbidden: cannot {verb} {what} {where}")
        if status == 401:
            return Forbidden(f"unauthorized: cannot {verb} {what} {where} (check the credentials)")
        if status == 409:
            return Conflict(f"conflict: {verb} {what} {where}: {message}")
        if status == 422:
            return Invalid(f"invalid: {verb} {what} {where}: {message}")
        if status == 410:
            return Transient(f"expired: {verb} {what} {where}: {message}")
        if status == 429 or status >= 500 or status == 0:
            return Transient(
                f"kubernetes API unavailable ({status or 'no status'}): "
                f"{describe(verb, kind, name, namespace)}: {message}"
            )
        return TargetError(
            f"kubernetes API error {status}: {describe(verb, kind, name, namespace)}: {message}",
            retryable=False,
        )
    return Transient(
        f"kubernetes API unreachable: {describe(verb, kind, name, namespace)}: {type(e).__name__}"
    )


class Cancelled(TargetError):
    """The run asked the step to stop; the target stopped (and cleaned up what it owns)."""

    retryable = False


#: What a lost or refused connection looks like from the client.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


@contextmanager
def mapped(verb: str, kind: str, name: str | None, namespace: str) -> Iterator[None]:
    """Run a block of client calls; raise its failure as a target error."""
    try:
        yield
    except ApiException as e:
        raise api_error(e, verb=verb, kind=kind, name=name, namespace=namespace) from e
    except CONNECTION_ERRORS as e:
        raise api_error(e, verb=verb, kind=kind, name=name, namespace=namespace) from e


def call(
    fn: Callable[..., T],
    *args: Any,
    verb: str,
    kind: str,
    name: str | None,
    namespace: str,
    attempts: int = CALL_ATTEMPTS,
    retry_conflicts: bool = True,
    **kwargs: Any,
) -> T:
    """Call a client method, mapping its errors, retrying conflicts and blips a few times.

    The backoff is short and bounded (0.1 s, 0.2 s, 0.4 s): a longer outage is the step
    retry policy's business, which also makes it visible in the run's history.

    `retry_conflicts=False` is for creates, where a 409 means "it exists already" and
    the caller decides (adopt it or not).

    Raises:
        TargetError: the mapped error of the last attempt.
    """
    for attempt in range(1, attempts + 1):
        try:
            with mapped(verb, kind, name, namespace):
                return fn(*args, **kwargs)
        except (Conflict, Transient) as e:
            if attempt == attempts or (isinstance(e, Conflict) and not retry_conflicts):
                raise
            log.info("retrying after %s (attempt %d of %d)", e, attempt, attempts)
            time.sleep(CALL_BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
