"""The canary strategy: weights at the front port, pauses, analysis, then full promotion.

One instance of the new revision starts beside the stable ones; from then on the front
port routes each HTTP request by the current weight (`Service.pick_request`). The
canary's steps run in order: `set_weight` changes the share, `pause` waits for its
duration or, without one, for an operator's promotion, `analysis` measures (an http
check, the canary's success rate and p95 latency at the front port, a `prometheus` query on
a thread) and fails the rollout by Argo's rules (`measure.verdict`): more than
`failure_limit` failed measurements, more than `consecutive_error_limit` errors in a row
(a query that cannot run; an error is measured again, not counted), or, when set, more
than `inconclusive_limit` inconclusive ones. After the last step the new
revision gets all new requests and replaces the stable instances one at a time.

The weight, the index of the next step, the end of a timed pause and a promotion are
durable (`Rollout` in `state.json`): a runtime restarted mid-canary goes on at the step
it stood at, with the same weight, and never runs a finished step again. A failure or an
abort sends every new request back to the stable version at once and removes the
canary instances (`Rollouts._revert`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import httpx

from shipflow.activities.analysis.measure import (
    check_name,
    counted,
    judge_answer,
    phase_of,
    verdict,
)
from shipflow.activities.analysis.prometheus import query_prometheus
from shipflow.worker.runtime.errors import RolloutAborted, RolloutError
from shipflow.worker.runtime.state import Rollout, Service
from shipflow.workflows.spec import (
    AnalysisStep,
    CanaryAnalysisSpec,
    LocalService,
    PauseStep,
    SetWeightStep,
)

if TYPE_CHECKING:
    from shipflow.worker.runtime.rollout import Rollouts

log = logging.getLogger("shipflow.runtime")
TICK_S = 0.05


async def run_canary(rollouts: Rollouts, svc: Service, ro: Rollout, stops: list[asyncio.Task[None]]) -> None:
    spec = LocalService.model_validate(ro.spec)
    assert spec.strategy is not None and spec.strategy.canary is not None
    old = [i for i in svc.instances if i.revision != ro.revision and not i.stopping]
    if not old and ro.weight is None:
        # A first deploy has nothing to compare with: all replicas at once.
        await rollouts.rolling(svc, ro, stops)
        return
    if ro.weight is None:
        ro.weight = 0
        rollouts.sup.save()
    svc.canary = ro
    new = [i for i in svc.instances if i.revision == ro.revision and not i.stopping]
    if not new:
        new = [rollouts.start_for(svc, ro)]
        ro.rounds += 1
    for inst in new:
        await rollouts.wait_ready(svc, ro, inst)
    ro.progress_at = time.time()
    steps = spec.strategy.canary.steps
    while ro.step_index < len(steps):
        step = steps[ro.step_index]
        if isinstance(step, SetWeightStep):
            ro.weight = step.set_weight
            log.info("%s canary %s: weight %s%%", svc.name, ro.id, ro.weight)
        elif isinstance(step, PauseStep):
            await _pause(rollouts, ro, step.pause.duration.total_seconds() if step.pause.duration else None)
        elif isinstance(step, AnalysisStep):
            await _analyse(rollouts, svc, ro, step.analysis)
        ro.step_index += 1
        ro.pause_until, ro.paused, ro.promote_requested = None, False, False
        ro.progress_at = time.time()
        rollouts.sup.save()
    ro.weight = 100
    rollouts.sup.save()
    await rollouts.rolling(svc, ro, stops)
    svc.canary = None


def _interrupted(ro: Rollout) -> None:
    if ro.abort_requested:
        raise RolloutAborted()


async def _pause(rollouts: Rollouts, ro: Rollout, seconds: float | None) -> None:
    """Wait out a timed pause (its end is durable) or, without a duration, a promotion."""
    if seconds is not None and ro.pause_until is None:
        ro.pause_until = time.time() + seconds
    ro.paused = True
    rollouts.sup.save()
    while not ro.promote_requested and (ro.pause_until is None or time.time() < ro.pause_until):
        _interrupted(ro)
        await asyncio.sleep(TICK_S)


async def _analyse(rollouts: Rollouts, svc: Service, ro: Rollout, spec: CanaryAnalysisSpec) -> None:
    """`count` measurements, one per `interval`, judged by `measure.verdict` after each.

    Each measurement looks at the canary's requests at the front port since the previous
    one. Too few of them (under `min_requests`) is inconclusive for the counters and
    counts neither way; the http check always decides. An error (Prometheus could not
    answer) is measured again at the next interval and does not count toward `count`.
    """
    interval = spec.interval.total_seconds()
    since = time.monotonic()
    taken: list[dict[str, Any]] = []
    while counted(taken) < spec.count:
        end = time.monotonic() + interval
        while time.monotonic() < end:
            _interrupted(ro)
            await asyncio.sleep(min(TICK_S, max(0.0, end - time.monotonic())))
        result = await _measure(svc, ro, spec, since)
        since = time.monotonic()
        result["measurement"] = len(taken) + 1
        taken.append(result)
        ro.analysis.append(result)
        rollouts.sup.save()
        failed = verdict(spec, taken)
        if failed is not None:
            raise RolloutError(f"{failed}; all traffic is back on the stable version", code="analysis_failed")


async def _measure(svc: Service, ro: Rollout, spec: CanaryAnalysisSpec, since: float) -> dict[str, Any]:
    problems: list[str] = []
    notes: list[str] = []
    inconclusive = False
    samples = [s for s in svc.samples.get(ro.revision, ()) if s[0] >= since]
    out: dict[str, Any] = {"at": time.time(), "requests": len(samples)}
    if spec.success_rate is not None or spec.max_p95 is not None:
        if len(samples) < spec.min_requests:
            inconclusive = True
        else:
            rate = sum(1 for s in samples if s[2]) / len(samples)
            latencies = sorted(s[1] for s in samples)
            p95 = latencies[max(0, math.ceil(0.95 * len(latencies)) - 1)]
            out.update(success_rate=round(rate, 4), p95_s=round(p95, 4))
            if spec.success_rate is not None and rate < spec.success_rate:
                problems.append(f"success rate {rate:.1%} < {spec.success_rate:.1%}")
            if spec.max_p95 is not None and p95 > spec.max_p95.total_seconds():
                problems.append(f"p95 {p95 * 1000:.0f} ms > {spec.max_p95.total_seconds() * 1000:.0f} ms")
    if spec.http is not None:
        problem = await _http_check(spec)
        if problem:
            problems.append(problem)
    errors: list[str] = []
    if spec.prometheus is not None:
        answer = await asyncio.to_thread(query_prometheus, spec.prometheus)
        out["value"] = answer.value
        if answer.phase == "failed":
            problems.append(answer.message)
        elif answer.phase == "error":  # measured again; too many in a row fail the analysis
            errors.append(answer.message)
        elif answer.phase == "inconclusive":
            inconclusive = True
            notes.append(answer.message)
    out["phase"] = phase_of(problems=problems, errors=errors, inconclusive=inconclusive)
    if inconclusive and (spec.success_rate is not None or spec.max_p95 is not None) and len(samples) < spec.min_requests:
        notes.insert(0, f"only {len(samples)} canary requests (min_requests {spec.min_requests})")
    out["message"] = "; ".join(problems) or "; ".join(errors) or "; ".join(notes) or "ok"
    return out


async def _http_check(spec: CanaryAnalysisSpec) -> str | None:
    check = spec.http
    assert check is not None
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            answer = await client.request(check.method, check.url, headers=check.headers)
    except httpx.HTTPError as e:
        return f"{check_name(check)}: {type(e).__name__}"
    return judge_answer(check, answer)
