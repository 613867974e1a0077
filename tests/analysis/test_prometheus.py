"""The Prometheus analysis provider against a server speaking Prometheus' HTTP API, and
the condition language it is judged by (parsed, never evaluated as Python)."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from shipflow.activities.analysis.measure import (
    compact,
    counted,
    errors_in_a_row,
    measure,
    phase_of,
    verdict,
)
from shipflow.activities.analysis.prometheus import query_prometheus
from shipflow.workflows.conditions import ConditionError, Inconclusive, parse_condition
from shipflow.workflows.spec import CanaryAnalysisSpec, PrometheusAnalysis, Strategy
from tests.analysis.prometheus_stub import PrometheusStub, error, scalar, vector


def spec(url: str, condition: str = "result[0] >= 0.95", query: str = "sum(rate(ok[1m]))") -> PrometheusAnalysis:
    return PrometheusAnalysis(url=url, query=query, success_condition=condition)


def test_vector_and_scalar_answers_are_judged_by_the_condition() -> None:
    answers = {"good": vector("0.99"), "bad": vector("0.5"), "two": vector(0.99, 0.2), "one": scalar(3)}
    with PrometheusStub(lambda q: answers[q]) as prom:
        assert query_prometheus(spec(prom.url, query="good")).phase == "successful"
        bad = query_prometheus(spec(prom.url, query="bad"))
        assert bad.phase == "failed" and bad.value == [0.5]
        assert "result[0] >= 0.95 not met" in bad.message and "0.5" in bad.message
        both = spec(prom.url, "result[0] > 0.9 and result[1] > 0.9", query="two")
        assert query_prometheus(both).phase == "failed"
        either = spec(prom.url, "result[0] > 0.9 or result[1] > 0.9", query="two")
        assert query_prometheus(either).phase == "successful"
        assert query_prometheus(spec(prom.url, "result == 3 and len(result) == 1", query="one")).phase == "successful"
        assert prom.queries[0] == "good"  # the query went as written, URL-encoded by the client


def test_empty_and_nan_results_are_inconclusive_errors_are_errors() -> None:
    answers = {
        "empty": vector(),
        "nan": vector("NaN"),
        "bad": error(400, "bad_data", 'invalid parameter "query": 1:5: parse error'),
        "down": error(503, "unavailable", "TSDB not ready"),
        "matrix": (200, {"status": "success", "data": {"resultType": "matrix", "result": []}}),
        "junk": (200, {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "x"]}]}}),
    }
    with PrometheusStub(lambda q: answers[q]) as prom:
        empty = query_prometheus(spec(prom.url, query="empty"))
        assert empty.phase == "inconclusive" and "does not exist (0 values)" in empty.message
        assert query_prometheus(spec(prom.url, query="nan")).phase == "inconclusive"
        bad = query_prometheus(spec(prom.url, query="bad"))
        assert bad.phase == "error" and "HTTP 400: bad_data" in bad.message and "parse error" in bad.message
        assert "HTTP 503: unavailable" in query_prometheus(spec(prom.url, query="down")).message
        assert "instant vector or scalar" in query_prometheus(spec(prom.url, query="matrix")).message
        assert "not a number" in query_prometheus(spec(prom.url, query="junk")).message
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = query_prometheus(spec(f"http://user:hunter2@127.0.0.1:{port}/prom?token=hunter2"))
    assert down.phase == "error" and down.message.startswith(f"prometheus at http://127.0.0.1:{port}: Connect")
    assert "hunter2" not in down.message  # credentials in the URL never reach a message


def test_a_measurement_and_the_verdict_follow_failure_and_inconclusive_limits() -> None:
    values = iter(["0.99", "0.5", "0.5"])
    with PrometheusStub(lambda q: vector(next(values)) if q == "rate" else vector()) as prom:
        analysis = CanaryAnalysisSpec(prometheus=spec(prom.url, query="rate"), failure_limit=1)
        runs = [measure(analysis) for _ in range(3)]
        assert [m["phase"] for m in runs] == ["successful", "failed", "failed"]
        assert verdict(analysis, runs[:2]) is None
        assert "failed 2 of 3 measurements (failure_limit 1)" in str(verdict(analysis, runs))
        unsure = CanaryAnalysisSpec(prometheus=spec(prom.url, query="none"), inconclusive_limit=1)
        seen = [measure(unsure), measure(unsure)]
        assert [m["phase"] for m in seen] == ["inconclusive", "inconclusive"]
        assert "inconclusive 2 of 2 times (inconclusive_limit 1)" in str(verdict(unsure, seen))
        assert verdict(unsure.model_copy(update={"inconclusive_limit": None}), seen) is None


def test_errors_are_measured_again_and_only_errors_in_a_row_fail_the_analysis() -> None:
    """Argo's consecutiveErrorLimit (default 4): an error is neither a pass nor a failure."""
    answers = iter([error(400, "bad_data", "parse error"), vector("0.99")])
    with PrometheusStub(lambda q: next(answers)) as prom:
        analysis = CanaryAnalysisSpec(prometheus=spec(prom.url), failure_limit=0)
        assert analysis.consecutive_error_limit == 4
        broken, fine = measure(analysis), measure(analysis)
    assert broken["phase"] == "error" and "HTTP 400: bad_data: parse error" in broken["message"]
    assert fine["phase"] == "successful"
    assert verdict(analysis, [broken]) is None  # not a failure, even with failure_limit 0
    assert counted([broken, fine]) == 1  # and not a measurement toward count: taken again
    five = [broken] * 5
    assert verdict(analysis, five[:4]) is None
    assert "errored 5 times in a row (consecutive_error_limit 4): prometheus at" in str(verdict(analysis, five))
    assert verdict(analysis, [broken, broken, fine, broken, broken, broken]) is None  # a success resets
    strict = analysis.model_copy(update={"consecutive_error_limit": 0})
    assert "errored 1 times in a row" in str(verdict(strict, [broken]))
    with pytest.raises(ValidationError) as negative:
        CanaryAnalysisSpec(prometheus=spec("http://x"), consecutive_error_limit=-1)
    assert "consecutive_error_limit" in str(negative.value)
    stored = [{"phase": "error", "message": f"m{i}", "value": [i]} for i in range(30)]
    compact(stored)  # what the Kubernetes canary keeps in its annotation
    assert [m.get("message") for m in stored[-10:]] == [f"m{i}" for i in range(20, 30)]
    assert stored[0] == {"phase": "error"} and errors_in_a_row(stored) == 30
    # In one measurement a real failure outweighs an error, which outweighs inconclusive.
    assert phase_of(problems=["http 500"], errors=["prometheus down"], inconclusive=True) == "failed"
    assert phase_of(problems=[], errors=["prometheus down"], inconclusive=True) == "error"


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("result[0] >= 0.95", [0.95], True),
        ("result < 1e-3", [0.0005], True),
        ("not (result[0] > 1 or result[1] > 1)", [0.5, 0.7], True),
        ("result[0] != -1 && !(len(result) == 0)", [2.0], True),
        ("len(result) > 2 || result[0] == .5", [0.5], True),
        ("result[0] <= 0.1", [0.2], False),
    ],
)
def test_the_condition_grammar(text: str, values: list[float], expected: bool) -> None:
    assert parse_condition(text).holds(values) is expected


def test_a_condition_reading_what_is_not_there_is_inconclusive() -> None:
    with pytest.raises(Inconclusive):
        parse_condition("result >= 1").holds([1.0, 2.0])
    with pytest.raises(Inconclusive):
        parse_condition("result[2] >= 1").holds([1.0])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("__import__('os').system('id') == 0", "unexpected character"),
        ("result.count(1) > 0", "unexpected character"),
        ("result[0] >=", "expected a number"),
        ("result[0]", "expected a comparison"),
        ("result[x] > 1", "whole number index"),
        ("len(q) > 1", "expected 'result'"),
        ("open > 1", "got 'open'"),
        ("result[0] > 1 extra", "unexpected 'extra'"),
    ],
)
def test_anything_else_is_refused_with_where(text: str, problem: str) -> None:
    with pytest.raises(ConditionError) as refused:
        parse_condition(text)
    assert problem in str(refused.value)


def test_a_bad_condition_fails_the_flow_naming_the_field() -> None:
    step = {"analysis": {"prometheus": {"url": "http://prom:9090", "query": "up", "success_condition": "result[0] =< 1"}}}
    with pytest.raises(ValidationError) as refused:
        Strategy.model_validate({"canary": {"steps": [step]}})
    text = str(refused.value)
    assert "canary.steps.0" in text and "success_condition" in text and "position" in text
    with pytest.raises(ValidationError) as missing:
        Strategy.model_validate({"canary": {"steps": [{"analysis": {"count": 2}}]}})
    assert "at least one of http, success_rate, max_p95 or prometheus" in str(missing.value)
