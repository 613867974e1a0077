"""The Prometheus analysis provider: one instant query, judged by a success condition.

It speaks Prometheus' HTTP API (`GET /api/v1/query?query=...`), whose answer is
`{"status": "success", "data": {"resultType": "vector" | "scalar", "result": ...}}` or
`{"status": "error", "errorType": ..., "error": ...}`. A vector gives one value per
series, a scalar one value; the condition (`shipflow.workflows.conditions`, parsed when
the flow was validated, never `eval`ed) reads them as `result`.

A measurement is `successful`, `failed` (the condition is false), `inconclusive` (no
series, NaN, a value the condition reads is missing) or `error` (Prometheus could not be
asked or refused the query). An error is not a pass: the caller measures again and
counts errors in a row against `consecutive_error_limit` (`measure.verdict`), so a broken
query cannot let a bad canary through.

Messages name Prometheus by scheme and host only: the URL may carry a credential taken
from the worker's environment (`${env.X}`), which must not reach a step's output.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field

from shipflow.workflows.conditions import Inconclusive, parse_condition
from shipflow.workflows.spec import PrometheusAnalysis

#: One query's time limit; a measurement must not hold the analysis for long.
QUERY_TIMEOUT_S = 10.0


class Measurement(BaseModel):
    phase: str = Field(description="successful | failed | inconclusive | error")
    message: str
    value: list[float] | None = Field(None, description="the sample values the condition read")


def where(url: str) -> str:
    """`scheme://host:port` of a URL: what a message may say about it."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def query_prometheus(spec: PrometheusAnalysis, *, client: httpx.Client | None = None) -> Measurement:
    """Run `spec.query` at `spec.url` (already resolved) and judge it."""
    condition = parse_condition(spec.success_condition)
    endpoint = spec.url.rstrip("/") + "/api/v1/query"
    name = f"prometheus at {where(spec.url)}"
    own = client is None
    http = client or httpx.Client(timeout=QUERY_TIMEOUT_S)
    try:
        answer = http.get(endpoint, params={"query": spec.query})
    except httpx.HTTPError as e:
        return Measurement(phase="error", message=f"{name}: {type(e).__name__}")
    finally:
        if own:
            http.close()
    try:
        body: Any = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") != "success":
        detail = ""
        if isinstance(body, dict) and body.get("status") == "error":
            detail = f": {body.get('errorType', 'error')}: {str(body.get('error', ''))[:200]}"
        return Measurement(phase="error", message=f"{name}: HTTP {answer.status_code}{detail}")
    try:
        values = _values(body.get("data"))
    except ValueError as e:
        return Measurement(phase="error", message=f"{name}: {e}")
    shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
    try:
        ok = condition.holds(values)
    except Inconclusive as e:
        return Measurement(phase="inconclusive", message=f"{name}: {e} (result [{shown}])", value=values)
    verdict = "met" if ok else "not met"
    return Measurement(
        phase="successful" if ok else "failed",
        message=f"{name}: {spec.success_condition} {verdict} (result [{shown}])",
        value=values,
    )


def _values(data: Any) -> list[float]:
    """The sample values of a `vector` or `scalar` result (NaN kept: the condition decides)."""
    if not isinstance(data, dict):
        raise ValueError("the answer has no data")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return [_number(result)]
    if kind == "vector" and isinstance(result, list):
        return [_number(item.get("value") if isinstance(item, dict) else None) for item in result]
    raise ValueError(f"result type {kind!r} is not supported: write an instant vector or scalar query")


def _number(sample: Any) -> float:
    if not (isinstance(sample, list) and len(sample) == 2):
        raise ValueError("a sample is not [time, value]")
    try:
        return float(sample[1])  # "NaN", "+Inf" and "-Inf" are valid sample values
    except (TypeError, ValueError):
        raise ValueError(f"sample value {str(sample[1])[:40]!r} is not a number") from None


