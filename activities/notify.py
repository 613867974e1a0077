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
from collections.abc import Mapping

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from shipflow.activities.envrefs import resolve_env, resolve_env_in
from shipflow.workflows.io.notify import (
    IDEMPOTENCY_HEADER,
    REQUEST_TIMEOUT_S,
    RUN_EVENT,
    SEND,
    NotifyInput,
    NotifyOutput,
    RunEventInput,
    RunEventOutput,
)
from shipflow.workflows.redaction import redact

#: How much of a failed run's error a run event quotes.
MAX_ERROR_CHARS = 1000
#: Webhook calls by kind (step, run_event) and result (ok, http_<code>, unreachable):
#: per attempt, recorded with the activity metric meter.
DELIVERIES = "shipflow_notification_deliveries_total"


def _count(kind: str, result: str) -> None:
    activity.metric_meter().create_counter(
        DELIVERIES, "Webhook calls of notify steps and run-event notifications, by result."
    ).add(1, {"kind": kind, "result": result})


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

    def __init__(
        self,
        http: httpx.AsyncClient | None = None,
        *,
        api_url: str = "http://127.0.0.1:8000",
        ui_url: str | None = None,
    ):
        self._http = http
        self._api_url = api_url.rstrip("/")
        self._ui_url = ui_url

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
        status_code = await self._post(url, body, headers, _request_timeout(input), "step")
        return NotifyOutput(status_code=status_code, idempotency_key=key)

    @activity.defn(name=RUN_EVENT)
    async def run_event(self, input: RunEventInput) -> RunEventOutput:
        """Post a run event of the flow's `notifications:` (Slack blocks or generic JSON)."""
        url = resolve_env(input.webhook)
        info = activity.info()
        key = f"{input.run_id}/{input.event}/{input.step_id or ''}/{input.index}/{info.workflow_run_id}"
        headers: dict[str, str] = dict(resolve_env_in(input.headers))
        if not any(name.lower() == IDEMPOTENCY_HEADER.lower() for name in headers):
            headers[IDEMPOTENCY_HEADER] = key
        body = run_event_body(input, self._links(input), key)
        status_code = await self._post(url, body, headers, REQUEST_TIMEOUT_S, "run_event")
        return RunEventOutput(status_code=status_code, idempotency_key=key)

    def _links(self, input: RunEventInput) -> dict[str, str]:
        links = {"link": f"{self._api_url}/runs/{input.run_id}"}
        if self._ui_url:
            namespace = activity.info().namespace
            links["ui_url"] = (
                f"{self._ui_url.rstrip('/')}/namespaces/{namespace}/workflows/{input.run_id}"
            )
        if input.event == "waiting":
            links["approve_url"] = f"{self._api_url}/runs/{input.run_id}/approve"
        return links

    async def _post(
        self, url: str, body: Mapping[str, object], headers: dict[str, str], timeout: float, kind: str
    ) -> int:
        """POST `body`; the status code, or ApplicationError naming only the URL's host."""
        http = self._http or httpx.AsyncClient()
        try:
            call = asyncio.ensure_future(http.post(url, json=body, headers=headers, timeout=timeout))
            try:
                response = await self._heartbeating(call)
            finally:
                if not call.done():  # cancelled while waiting: drop the request
                    call.cancel()
                    with contextlib.suppress(BaseException):
                        await call
        except httpx.HTTPError as e:
            _count(kind, "unreachable")
            # The URL may carry a token (Slack-style hooks): name only its host.
            raise ApplicationError(
                f"webhook {httpx.URL(url).host} unreachable: {type(e).__name__}",
                type="NotifyFailed",
            ) from None
        finally:
            if self._http is None:
                await http.aclose()
        if response.status_code >= 400:
            _count(kind, f"http_{response.status_code}")
            raise ApplicationError(
                f"webhook {httpx.URL(url).host} answered HTTP {response.status_code}",
                type="NotifyFailed",
                non_retryable=400 <= response.status_code < 500 and response.status_code != 429,
            )
        _count(kind, "ok")
        return response.status_code

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


def run_event_body(input: RunEventInput, links: dict[str, str], key: str) -> dict[str, object]:
    """The JSON a run event posts: Slack-compatible blocks, or the generic fields.

    Both carry `text` (Slack's fallback, a chat line), the run, flow, stage, state and links;
    a `waiting` event names the step and how to approve it.
    """
    error = redact(input.error) if input.error else None
    if error and len(error) > MAX_ERROR_CHARS:  # chat blocks take at most 3000 characters
        error = error[:MAX_ERROR_CHARS] + "…"
    where = f"{input.flow} → {input.stage}"
    if input.event == "waiting":
        text = (
            f"{where}: run {input.run_id} waits for approval of step {input.step_id}"
            f" (shipflow approve {input.run_id} {input.step_id})"
        )
    else:
        text = f"{where}: run {input.run_id} {input.state.replace('_', ' ')}"
        if error:
            text += f": {error}"
    if input.format != "slack":
        return {
            "text": text,
            "message": text,
            "event": input.event,
            "run_id": input.run_id,
            "flow": input.flow,
            "stage": input.stage,
            "state": input.state,
            "step": input.step_id,
            "error": error,
            **links,
            "idempotency_key": key,
        }
    fields = [
        {"type": "mrkdwn", "text": f"*Run*\n<{links['link']}|{input.run_id}>"},
        {"type": "mrkdwn", "text": f"*Flow*\n{input.flow}"},
        {"type": "mrkdwn", "text": f"*Stage*\n{input.stage}"},
        {"type": "mrkdwn", "text": f"*State*\n{input.state}"},
    ]
    if input.step_id:
        fields.append({"type": "mrkdwn", "text": f"*Step*\n{input.step_id}"})
    blocks: list[dict[str, object]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "section", "fields": fields},
    ]
    buttons: list[dict[str, object]] = [
        {"type": "button", "text": {"type": "plain_text", "text": "Open run"}, "url": links["link"]}
    ]
    if "ui_url" in links:
        buttons.append(
            {"type": "button", "text": {"type": "plain_text", "text": "History"}, "url": links["ui_url"]}
        )
    if "approve_url" in links:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"Approve: `POST {links['approve_url']}` or "
                        f"`shipflow approve {input.run_id} {input.step_id}`",
                    }
                ],
            }
        )
    blocks.append({"type": "actions", "elements": buttons})
    return {"text": text, "blocks": blocks}
