"""The `check` activity: probe an HTTP endpoint or a TCP port until it is healthy.

Semantics follow Kubernetes probes: `success_threshold` consecutive successes pass the
check, `failure_threshold` consecutive failures fail it, one probe every `period`.
The step's `timeout` bounds the whole check.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from sqlalchemy import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from shipflow.activities.core.steplogs import StepLogWriter
from shipflow.activities.envrefs import resolve_env, resolve_env_in, secret_values
from shipflow.workflows.io.checks import PROBE, CheckInput, CheckOutput
from shipflow.workflows.redaction import redact
from shipflow.workflows.spec import CheckSpec


class CheckActivities:
    """Given an HTTP client (and the database, for step logs), runs health checks."""

    def __init__(self, http: httpx.AsyncClient | None = None, logs: Engine | None = None):
        self._http = http
        self._logs = logs

    @activity.defn(name=PROBE)
    async def probe(self, input: CheckInput) -> CheckOutput:
        spec = input.check
        started = time.monotonic()
        await asyncio.sleep(spec.initial_delay.total_seconds())
        successes = failures = 0
        consecutive_ok = consecutive_bad = 0
        last = "not probed"
        http = self._http or httpx.AsyncClient()
        log = StepLogWriter(self._logs, input.context.run_id, input.context.step_id)
        await asyncio.to_thread(log.write, f"check (attempt {activity.info().attempt}): {_where(spec)}")
        try:
            while True:
                ok, last = await self._probe_once(http, spec)
                await asyncio.to_thread(
                    log.write,
                    f"probe {successes + failures + 1}: {'pass' if ok else 'FAIL'} "
                    f"{_where(spec)}: {last}",
                )
                if ok:
                    successes += 1
                    consecutive_ok += 1
                    consecutive_bad = 0
                else:
                    failures += 1
                    consecutive_bad += 1
                    consecutive_ok = 0
                if not activity.info().is_local:  # its workflow task is its liveness
                    activity.heartbeat(
                        {"successes": successes, "failures": failures, "last": last}
                    )
                if consecutive_ok >= spec.success_threshold:
                    return CheckOutput(
                        successes=successes,
                        failures=failures,
                        last_status=last,
                        duration_s=round(time.monotonic() - started, 3),
                    )
                if consecutive_bad >= spec.failure_threshold:
                    raise ApplicationError(
                        redact(
                            f"{_where(spec)} failed {consecutive_bad} times in a row (last: {last})"
                        ),
                        type="CheckFailed",
                        non_retryable=False,
                    )
                if input.timeout_s is not None and time.monotonic() - started > input.timeout_s:
                    raise ApplicationError(
                        redact(
                            f"{_where(spec)} did not pass within {input.timeout_s:g}s (last: {last})"
                        ),
                        type="CheckTimeout",
                    )
                await asyncio.sleep(spec.period.total_seconds())
        finally:
            if self._http is None:
                await http.aclose()

    async def _probe_once(self, http: httpx.AsyncClient, spec: CheckSpec) -> tuple[bool, str]:
        timeout = spec.probe_timeout.total_seconds()
        if spec.http is not None:
            url = resolve_env(spec.http.url)
            try:
                response = await http.request(
                    spec.http.method,
                    url,
                    headers=resolve_env_in(spec.http.headers),
                    timeout=timeout,
                )
            except httpx.HTTPError as e:
                # httpx quotes the URL in some errors: it may carry a token or a password.
                text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                return False, redact(text, secret_values(spec.http.url))
            accepted = spec.http.status or None
            ok = response.status_code in accepted if accepted else 200 <= response.status_code < 400
            if ok and spec.http.contains is not None and spec.http.contains not in response.text:
                return False, f"HTTP {response.status_code}, body lacks {spec.http.contains!r}"
            return ok, f"HTTP {response.status_code}"
        assert spec.tcp is not None
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(spec.tcp.host, spec.tcp.port), timeout
            )
        except (OSError, TimeoutError) as e:
            return (
                False,
                f"tcp {spec.tcp.host}:{spec.tcp.port}: {e.strerror if isinstance(e, OSError) and e.strerror else 'timeout'}",
            )
        writer.close()
        await writer.wait_closed()
        return True, "tcp connected"


def _where(spec: CheckSpec) -> str:
    if spec.http is not None:
        return (
            f"GET {spec.http.url}"
            if spec.http.method == "GET"
            else f"{spec.http.method} {spec.http.url}"
        )
    assert spec.tcp is not None
    return f"tcp {spec.tcp.host}:{spec.tcp.port}"
