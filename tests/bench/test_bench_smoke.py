"""The benchmarks at a tiny size, so that their code cannot rot between benchmark runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from temporalio.client import Client

from bench import run_all, runs_index_bench, scale_bench
from bench.observability_bench import run_observability
from bench.orchestration import run_orchestration
from bench.orchestration_ablation import measure as measure_ablation
from bench.orchestration_runs import Bench, notify_flow
from bench.orchestration_worker import WorkerProcess
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import read_status
from shipflow.worker.main import build_worker
from shipflow.workflows.status import RunState, StepState


async def test_orchestration_bench_tiny(temporal_client: Client) -> None:
    report = await run_orchestration(
        temporal_client, steps=3, reps=1, concurrent_runs=2, concurrent_steps=2, concurrent_reps=1
    )
    ratios = report.ratios()
    assert list(ratios) == [
        "tuned: 3 sequential steps",
        "tuned: 3 parallel steps",
        "tuned: 2 concurrent runs of 2 steps (total)",
        "tuned: 3 sequential short steps (local activities)",
    ]
    assert all(ratio > 0 for ratio in ratios.values())
    # Warm-up + 1 measured rep per side, 3 sides (bare, duties, interpreter) but in the short
    # case (2): (3 + 3) steps * 2 runs * 3 + 2 runs * 2 steps * 2 batches * 3 + 3 * 2 * 2
    # (the short case's steps are local activities, counted all the same). Records: 2 per
    # run of the duties side and of the interpreter.
    assert report.activity_calls == {
        "notify.send": 36 + 24 + 12,
        "records.run": 2 * ((2 + 2 + 4) * 2 + 2),
    }
    table = report.markdown()
    assert "| 3 sequential steps |" in table and "<= 1.10" in table
    # the worker ran in its own process and its CPU was measured on every side it ran
    sides = {c.name: c.sides for c in report.comparisons}
    assert sides == {
        "3 sequential steps": ["baseline", "duties", "interpreter"],
        "3 parallel steps": ["baseline", "duties", "interpreter"],
        "2 concurrent runs of 2 steps (total)": ["baseline", "duties", "interpreter"],
        "3 sequential short steps (local activities)": ["baseline", "interpreter"],
    }
    assert all(len(c.cpu[side]) == 1 for c in report.comparisons for side in c.sides)
    # the targets compare the interpreter with the duties side where it ran
    assert [c.reference for c in report.comparisons] == ["duties"] * 3 + ["baseline"]


async def test_duties_baseline_keeps_a_runs_duties(temporal_client: Client) -> None:
    """The side the 1.10x targets are read against really does what an interpreter run does
    for its users: its status, read the way the API reads it (the memo, no worker asked),
    is the interpreter's; and it records itself in the runs index twice. Without that, a
    ratio over it would flatter the interpreter."""
    queue = f"bench-{uuid.uuid4().hex[:10]}"
    worker = await WorkerProcess.start(temporal_client, queue)
    try:
        bench = Bench(temporal_client, queue, worker, search_attributes=True, run_timeout=60)
        for parallel in (False, True):
            flow = notify_flow(f"duty-{int(parallel)}", 3, parallel=parallel)
            await bench.duties(flow, parallel=parallel)
            await bench.interpreter(flow)
            duties = await read_status(temporal_client, bench.last["duties"])
            interpreter = await read_status(temporal_client, bench.last["interpreter"])
            for status in (duties, interpreter):
                assert status.state == RunState.SUCCEEDED and status.ended_at is not None
                assert [s.id for s in status.steps] == ["n0", "n1", "n2"]
                assert all(s.state == StepState.SUCCEEDED for s in status.steps)
                assert all(s.started_at and s.ended_at and s.attempts == 1 for s in status.steps)
            history = await bench.history_size(bench.last["duties"])
            assert history.memo_upserts >= 1
            assert history.markers == 2  # the two `records.run` local activities
            memos = [
                await (
                    await temporal_client.get_workflow_handle(bench.last[side]).describe()
                ).memo()
                for side in ("duties", "interpreter")
            ]
            assert set(memos[0]) == set(memos[1])  # the status and an entry per step
    finally:
        counts = await worker.stop()
    assert counts == {"sends": 4 * 3, "records": 4 * 2}


async def test_orchestration_ablation_tiny() -> None:
    """The switches work: with run records and the memo mirror off, an interpreter run's
    history has neither the records' local-activity markers nor memo upserts.

    Counted by event type, not in total: totals also count whatever a loaded machine adds
    to either variant, such as a workflow task retried after a timeout (comparing totals,
    this test once failed in a parallel test run and passed alone)."""
    rows = await measure_ablation(("full", "neither"), runs=2, steps=2, parallel_steps=2, reps=1)
    by = {(r["variant"], r["case"]): r for r in rows}
    assert set(by) == {
        ("full", "2 concurrent runs of 2 steps"),
        ("full", "2 parallel steps"),
        ("neither", "2 concurrent runs of 2 steps"),
        ("neither", "2 parallel steps"),
    }
    for case in ("2 concurrent runs of 2 steps", "2 parallel steps"):
        full, neither = by[("full", case)], by[("neither", case)]
        # the two `records.run` markers (running, then final); the patch marker stays
        assert full["interpreter_markers"] - neither["interpreter_markers"] == 2, (full, neither)
        assert neither["interpreter_memo_upserts"] == 0 < full["interpreter_memo_upserts"]
    assert all(r["cpu_ratio"] > 0 and r["wall_ratio"] > 0 for r in rows)


def test_run_all_reports_missing_and_failing_modules() -> None:
    missing = run_all.run_module("no_such_bench")
    assert missing.status == "missing"
    box = run_all.machine()
    assert box["cores (nproc)"].isdigit() and box["temporalio"][0].isdigit()
    failed = run_all.Outcome("broken", "failed", error="RuntimeError: boom", seconds=1.0)
    text = run_all.render(
        [missing, failed], "python -m bench.run_all", datetime(2026, 1, 2, tzinfo=UTC), box
    )
    assert "`python -m bench.run_all`" in text and "2026-01-02 00:00 UTC" in text
    assert "| `bench.broken` | failed: RuntimeError: boom | 1 s |" in text
    assert box["CPU"] in text


async def test_runs_index_bench_tiny(temporal_client: Client, tmp_path: Path) -> None:
    address = temporal_client.service_client.config.target_host
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    result = await runs_index_bench.bench_database(
        temporal_client, address, url, "SQLite", runs=120, active=12, requests=3
    )
    index = {s["shape"]: s for s in result["index"]}
    baseline = {s["shape"]: s for s in result["baseline"]}
    assert all(s["temporal_calls_per_request"] == 0 for s in index.values())
    # The baseline asks Temporal about every live row of its page: 12 active runs.
    assert baseline["status=running"]["temporal_calls_per_request"] == 12
    assert index["status=running"]["rows"] == 4  # running, waiting and queued take turns
    assert "| today | status=running |" in runs_index_bench.markdown([result])


async def test_scale_bench_tiny(temporal_client: Client, settings: Settings) -> None:
    async with build_worker(temporal_client, settings):
        burst = await scale_bench.burst(temporal_client, settings, runs=6, stages=2, idle_wait_s=0)
    assert burst.outcomes == {"succeeded": 6}
    assert burst.overlaps == 0 and burst.order_kept == 2
    assert [len(lock["runs"]) for lock in burst.locks] == [1, 1]
    sizes = scale_bench.plan_sizes()
    assert 100 < sizes["wait"]["bytes_per_step"] < sizes["deploy"]["bytes_per_step"]
    assert sizes["wait"]["steps_within_plan_limit"] > 1000


async def test_observability_bench_tiny(temporal_client: Client) -> None:
    target = temporal_client.service_client.config.target_host
    result = await run_observability(steps=2, reps=1, target=target)
    assert result["ratio"] > 0 and result["cpu_ratio"] > 0
    # The measured side ran twice (warm-up + 1), counted on its endpoint and logged a line
    # per step and per run end.
    assert result["runs_counted"] == 2
    assert result["log_lines"] >= 2 * 3
    assert "| **on / off** |" in result["markdown"]
