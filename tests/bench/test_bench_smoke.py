"""The benchmarks at a tiny size, so that their code cannot rot between benchmark runs."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio.client import Client

from bench import run_all
from bench.observability_bench import run_observability
from bench.orchestration import run_orchestration


async def test_orchestration_bench_tiny(temporal_client: Client) -> None:
    report = await run_orchestration(
        temporal_client, steps=3, reps=1, concurrent_runs=2, concurrent_steps=2, concurrent_reps=1
    )
    ratios = report.ratios()
    assert list(ratios) == [
        "3 sequential steps",
        "3 parallel steps",
        "2 concurrent runs of 2 steps (total)",
    ]
    assert all(ratio > 0 for ratio in ratios.values())
    # warm-up + 1 measured rep per side: (3 + 3) * 2 runs + 2 runs * 2 steps * 2 batches, twice
    assert report.activity_calls == {"notify.send": 2 * (12 + 8), "records.run": 2 + 2 + 4}
    table = report.markdown()
    assert "| 3 sequential steps |" in table and "<= 1.15" in table


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


async def test_observability_bench_tiny(temporal_client: Client) -> None:
    target = temporal_client.service_client.config.target_host
    result = await run_observability(steps=2, reps=1, target=target)
    assert result["ratio"] > 0 and result["cpu_ratio"] > 0
    # The measured side ran twice (warm-up + 1), counted on its endpoint and logged a line
    # per step and per run end.
    assert result["runs_counted"] == 2
    assert result["log_lines"] >= 2 * 3
    assert "| **on / off** |" in result["markdown"]
