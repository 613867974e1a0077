"""One analysis measurement on the worker, and the verdict over a run of them.

The Kubernetes target measures here (the local runtime has its own front-port counters):
the `http` check and the `prometheus` query of an analysis, each giving a phase. The
front port's counters (`success_rate`, `max_p95`) exist only on the local target; a
Kubernetes flow that asks for them is refused before anything is changed.

Phases and verdict, as Argo's AnalysisRun: a measurement is `successful`, `failed` (a
condition is false, the http check did not pass), `inconclusive` (no data, NaN) or `error`
(Prometheus could not be asked: refused connection, an HTTP error, an `error` answer).
More than `failure_limit` failed measurements, more than `consecutive_error_limit` errors
in a row, or more than `inconclusive_limit` inconclusive ones when that is set, end the
analysis as failed. An error does not count toward `count` (the measurement is taken
again at the next interval), so a query that cannot run never completes an analysis: it
errors in a row until it exceeds the limit, and a broken query cannot pass a canary.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from shipflow.activities.analysis.prometheus import QUERY_TIMEOUT_S, query_prometheus, where
from shipflow.workflows.spec import CanaryAnalysisSpec, HttpCheck


def measure(spec: CanaryAnalysisSpec) -> dict[str, Any]:
    """One measurement: the http check and the Prometheus query that the analysis names."""
    problems: list[str] = []
    notes: list[str] = []
    inconclusive = False
    out: dict[str, Any] = {"at": time.time()}
    if spec.http is not None:
        problem = http_check(spec.http)
        if problem:
            problems.append(problem)
    errors: list[str] = []
    if spec.prometheus is not None:
        result = query_prometheus(spec.prometheus)
        out["value"] = result.value
        if result.phase == "failed":
            problems.append(result.message)
        elif result.phase == "error":
            errors.append(result.message)
        elif result.phase == "inconclusive":
            inconclusive = True
            notes.append(result.message)
        else:
            notes.append(result.message)
    out["phase"] = phase_of(problems=problems, errors=errors, inconclusive=inconclusive)
    out["message"] = "; ".join(problems or errors or notes) or "ok"
    return out


def phase_of(*, problems: list[str], errors: list[str], inconclusive: bool) -> str:
    """One measurement's phase from what its parts found: a real failure outweighs an error
    (the canary was seen failing), an error outweighs inconclusive (nothing was learnt)."""
    if problems:
        return "failed"
    if errors:
        return "error"
    return "inconclusive" if inconclusive else "successful"


def counted(measurements: list[dict[str, Any]]) -> int:
    """The measurements that count toward `count`: all but the errors (taken again)."""
    return sum(1 for m in measurements if m.get("phase") != "error")


#: Measurements that keep their message and values when a list of them is stored.
KEEP_DETAILS = 10


def compact(measurements: list[dict[str, Any]]) -> None:
    """Drop the messages and values of all but the last `KEEP_DETAILS` measurements.

    The Kubernetes canary stores its measurements in an annotation (at most 256 KiB with
    all the others); phases are all a verdict needs, and the measurement that ends an
    analysis is always the latest, so its message is kept.
    """
    for m in measurements[:-KEEP_DETAILS]:
        m.pop("message", None)
        m.pop("value", None)


def errors_in_a_row(measurements: list[dict[str, Any]]) -> int:
    """Errors since the last measurement that was not one."""
    run = 0
    for m in reversed(measurements):
        if m.get("phase") != "error":
            break
        run += 1
    return run


def http_check(check: HttpCheck) -> str | None:
    """None when the request succeeded as the check step would judge it, else why not."""
    try:
        with httpx.Client(timeout=QUERY_TIMEOUT_S) as client:
            answer = client.request(check.method, check.url, headers=check.headers)
    except httpx.HTTPError as e:
        return f"{check_name(check)}: {type(e).__name__}"
    return judge_answer(check, answer)


def check_name(check: HttpCheck) -> str:
    """How a measurement names its request: scheme and host only, since the URL may hold a
    resolved `${env.X}`."""
    return f"http {where(check.url)}"


def judge_answer(check: HttpCheck, answer: httpx.Response) -> str | None:
    """None when `answer` passes `check` (its status, or any 2xx/3xx; the body text it must
    contain), else why not. One judgment for the worker's and the local runtime's requests."""
    ok = answer.status_code in check.status if check.status else 200 <= answer.status_code < 400
    if not ok:
        return f"{check_name(check)}: HTTP {answer.status_code}"
    if check.contains is not None and check.contains not in answer.text:
        return f"{check_name(check)}: the body does not contain {check.contains!r}"
    return None


def verdict(spec: CanaryAnalysisSpec, measurements: list[dict[str, Any]]) -> str | None:
    """Why the analysis failed so far (a sentence), or None while it holds."""
    failed = [m for m in measurements if m.get("phase") == "failed"]
    if len(failed) > spec.failure_limit:
        return (
            f"canary analysis failed {len(failed)} of {len(measurements)} measurements "
            f"(failure_limit {spec.failure_limit}): {failed[-1].get('message')}"
        )
    in_a_row = errors_in_a_row(measurements)
    if in_a_row > spec.consecutive_error_limit:
        return (
            f"canary analysis errored {in_a_row} times in a row (consecutive_error_limit "
            f"{spec.consecutive_error_limit}): {measurements[-1].get('message')}"
        )
    unsure = [m for m in measurements if m.get("phase") == "inconclusive"]
    if spec.inconclusive_limit is not None and len(unsure) > spec.inconclusive_limit:
        return (
            f"canary analysis was inconclusive {len(unsure)} of {len(measurements)} times "
            f"(inconclusive_limit {spec.inconclusive_limit}): {unsure[-1].get('message')}"
        )
    return None
