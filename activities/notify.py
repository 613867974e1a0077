"""The `notify` activity: POST a JSON message about the run to a webhook.

A webhook call can be slow, and a worker can die while it waits for the answer. So the
activity heartbeats while the call runs (a dead worker is then noticed within one
heartbeat timeout and the step resumes on another worker without counting an attempt),
and every request carries an idempotency key that is the same for every attempt and
every resumption of this step in this run: the receiver can drop a second delivery.
A short notify step runs as a local activity (`shipflow.workflows.step_kinds`): then it
does not heartbeat, its worker's workflow task is what tells a lost worker.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from shipflow.activities.envrefs import resolve_env, resolve_env_in
from shipflow.workflows.io.notify import (
    IDEMPOTENCY_HEADER,
    REQUEST_TIMEOUT_S,
    SEND,
    NotifyInput,
    NotifyOutput,
)


def idempotency_key(input: NotifyInput) -> str:
    """`<run>/<step>/<workflow run>`: equal for every attempt of this step in this run.

    The run id and step id say what the message is about; Temporal's run-unique id of the
    workflow execution tells apart two executions that share a run id and a step id (a
    workflow reset, or a run id reused by a later start), whose messages are new ones.
    """
    info = activity.info()
    return f"{input.context.run_id}/{input.context.step_id}/{info.workflow_run_id}"


def _request_timeout(input: NotifyInput) -> float:
    if input.timeout_s:
        return min(REQUEST_TIMEOUT_S, input.timeout_s)
    return REQUEST_TIMEOUT_S


def _heartbeat_interval() -> float:
    timeout = activity.info().heartbeat_timeout
    if timeout is None:
        return 5.0
    return max(0.1, timeout.total_seconds() / 4)


class NotifyActivities:
    """Given an HTTP client, sends notifications."""

    def __init__(self, http: httpx.AsyncClient | None = None):
        self._http = http

    @activity.defn(name=SEND)
    async def send(self, input: NotifyInput) -> NotifyOutput:
        url = resolve_env(input.webhook)
        key = idempotency_key(input)
        headers: dict[str, str] = dict(resolve_env_in(input.headers))
        # A key the flow sets itself wins (the receiver may expect its own format).
        for name, value in headers.items():
            if name.lower() == IDEMPOTENCY_HEADER.lower():
                key = value
                break
        else:
            headers[IDEMPOTENCY_HEADER] = key
        body = {
            "text": input.message,
            "message": input.message,
            "run_id": input.context.run_id,
            "flow": input.context.flow,
            "stage": input.context.stage,
            "step": input.context.step_id,
            "state": input.run_state,
            "idempotency_key": key,
        }
        http = self._http or httpx.AsyncClient()
        try:
            call = asyncio.ensure_future(
                http.post(url, json=body, headers=headers, timeout=_request_timeout(input))
            )
            try:
                response = await self._heartbeating(call)
            finally:
                if not call.done():  # cancelled while waiting: drop the request
                    call.cancel()
                    with contextlib.suppress(BaseException):
                        await call
        except httpx.HTTPError as e:
            # The URL may carry a token (Slack-style hooks): name only its host.
            raise ApplicationError(
                f"webhook {httpx.URL(url).host} unreachable: {type(e).__name__}",
                type="NotifyFailed",
            ) from None
        finally:
            if self._http is None:
                await http.aclose()
        if response.status_code >= 400:
            raise ApplicationError(
                f"webhook {httpx.URL(url).host} answered HTTP {response.status_code}",
                type="NotifyFailed",
                non_retryable=400 <= response.status_code < 500 and response.status_code != 429,
            )
        return NotifyOutput(status_code=response.status_code, idempotency_key=key)

    @staticmethod
    async def _heartbeating(call: asyncio.Future[httpx.Response]) -> httpx.Response:
        """Wait for the call, heartbeating so that a lost worker is noticed quickly."""
        interval = _heartbeat_interval()
        while True:
            done, _ = await asyncio.wait({call}, timeout=interval)
            if done:
                return call.result()
            if not activity.info().is_local:  # a local activity's liveness is its workflow task
                activity.heartbeat()
