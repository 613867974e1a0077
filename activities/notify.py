"""The `notify` activity: POST a JSON message about the run to a webhook."""

from __future__ import annotations

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.envrefs import resolve_env, resolve_env_in
from activities.models.notify import SEND, NotifyInput, NotifyOutput


class NotifyActivities:
    """Given an HTTP client, sends notifications."""

    def __init__(self, http: httpx.AsyncClient | None = None):
        self._http = http

    @activity.defn(name=SEND)
    async def send(self, input: NotifyInput) -> NotifyOutput:
        url = resolve_env(input.webhook)
        body = {
            "text": input.message,
            "message": input.message,
            "run_id": input.context.run_id,
            "flow": input.context.flow,
            "stage": input.context.stage,
            "step": input.context.step_id,
            "state": input.run_state,
        }
        http = self._http or httpx.AsyncClient()
        try:
            response = await http.post(
                url, json=body, headers=resolve_env_in(input.headers), timeout=10
            )
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
        return NotifyOutput(status_code=response.status_code)
