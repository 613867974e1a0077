"""What the interpreter's features cost over a hand-written workflow: a diagnosis, not a target.

`bench.orchestration` compares the interpreter, as a user gets it, with a bare hand-written
workflow that calls the same activities and does nothing else (and with one that also
keeps a run's duties, `bench.orchestration_duties`: the targets' reference). The
interpreter also records the run in the runs index (`records.run`, two local activities
per run: running, then final) and mirrors its status into the memo (`release_memo`),
which the bare workflow does not. This benchmark measures the bare comparison with those
features switched off in the worker, to tell what of the gap they are and what is the
interpreter's own work (its tree walk, status bookkeeping, patch marker, step summaries,
larger start input and result):

* `full`: the interpreter as shipped;
* `no-records`: `RunsIndexRecording._record_run` does nothing (no local activity);
* `no-memo`: `MemoFlushing._upsert_changes` writes nothing (no upsert; its flush timers
  still run);
* `neither`: both off;
* `gzip`: the interpreter as shipped, with the worker's gRPC traffic to Temporal gzipped
  (temporalio's default; `SHIPFLOW_TEMPORAL_COMPRESSION=gzip`) instead of left
  uncompressed as shipflow's clients do over loopback: not a feature, a transport choice,
  and it applies to both sides, so read its absolute CPU against `full`'s.

Each variant gets a worker process of its own (`orchestration_worker.WorkerProcess`, in
this module's `--serve-worker` mode, which switches the features off before it builds
the worker) on one fresh dev server with the embedded stack's config, runs the
`concurrent` and `parallel` cases of `bench.orchestration` (baseline and interpreter
interleaved), and reports the worker's CPU and the wall time, interpreter over baseline.
Runs of a variant are real runs that succeed; only what they leave in the runs index and
the memo differs.

`python -m bench.orchestration_ablation [--variants full no-memo ...] [--reps 3]`; not part
of `bench.run_all` (it answers a question about the numbers, it sets no target).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import uuid
from typing import Any

from temporalio.client import Client

from bench.orchestration import start_dev_server
from bench.orchestration_report import Comparison
from bench.orchestration_runs import Bench, notify_flow
from bench.orchestration_worker import WorkerProcess, serve_worker

#: Variant -> the features it switches off.
VARIANTS: dict[str, tuple[str, ...]] = {
    "full": (),
    "no-records": ("records",),
    "no-memo": ("memo",),
    "neither": ("records", "memo"),
    "gzip": ("uncompressed",),
}
MAIN = "bench.orchestration_ablation"


def switch_off(features: tuple[str, ...]) -> None:
    """Make the interpreter skip `features` in this (worker) process (`uncompressed`: the
    transport's, read when the worker connects)."""
    from shipflow.workflows.release_index import RunsIndexRecording
    from shipflow.workflows.release_memo import MemoFlushing

    async def no_record(self: Any) -> None:
        return None

    def no_upsert(self: Any) -> bool:
        self._dirty = False
        self._dirty_steps.clear()
        return False

    if "uncompressed" in features:
        os.environ["SHIPFLOW_TEMPORAL_COMPRESSION"] = "gzip"
    if "records" in features:
        RunsIndexRecording._record_run = no_record  # type: ignore[method-assign]
    if "memo" in features:
        MemoFlushing._upsert_changes = no_upsert  # type: ignore[method-assign]


async def measure(
    variants: tuple[str, ...], *, runs: int, steps: int, parallel_steps: int, reps: int
) -> list[dict[str, Any]]:
    """Both cases for each variant, each variant on its own worker process; one server."""
    env = await start_dev_server("tuned")
    results: list[dict[str, Any]] = []
    try:
        for variant in variants:
            cases = await measure_variant(
                env.client, variant, runs=runs, steps=steps, parallel_steps=parallel_steps, reps=reps
            )
            results += [_row(variant, case) for case in cases]
    finally:
        await env.shutdown()
    return results


async def measure_variant(
    client: Client, variant: str, *, runs: int, steps: int, parallel_steps: int, reps: int
) -> list[Comparison]:
    """The concurrent and the parallel case on a worker with `variant`'s features off."""
    queue = f"ablation-{uuid.uuid4().hex[:8]}"
    worker = await WorkerProcess.start(client, queue, main=MAIN, variant=variant)
    try:
        bench = Bench(client, queue, worker, search_attributes=True, run_timeout=300)
        small = notify_flow("abl-conc", steps, parallel=False)
        wide = notify_flow("abl-par", parallel_steps, parallel=True)

        async def many_baseline() -> None:
            await asyncio.gather(*(bench.baseline(steps, parallel=False) for _ in range(runs)))

        async def many_interpreter() -> None:
            await asyncio.gather(*(bench.interpreter(small) for _ in range(runs)))

        concurrent = await bench.compare(
            Comparison(f"{runs} concurrent runs of {steps} steps", steps, runs=runs),
            many_baseline,
            many_interpreter,
            reps,
        )
        widest = await bench.compare(
            Comparison(f"{parallel_steps} parallel steps", parallel_steps),
            lambda: bench.baseline(parallel_steps, parallel=True),
            lambda: bench.interpreter(wide),
            reps * 3,
        )
    finally:
        await worker.stop()
    return [concurrent, widest]


def _row(variant: str, case: Comparison) -> dict[str, Any]:
    baseline, interpreter = case.history.get("baseline"), case.history.get("interpreter")
    return {
        "variant": variant,
        "case": case.name,
        "wall_ratio": case.ratio,
        "cpu_ratio": case.cpu_ratio,
        "baseline_cpu_s": statistics.median(case.cpu["baseline"]),
        "interpreter_cpu_s": statistics.median(case.cpu["interpreter"]),
        "baseline_events": baseline.events if baseline else None,
        "interpreter_events": interpreter.events if interpreter else None,
        "interpreter_markers": interpreter.markers if interpreter else None,
        "interpreter_memo_upserts": interpreter.memo_upserts if interpreter else None,
    }


def markdown(results: list[dict[str, Any]], reps: int) -> str:
    lines = [
        "| variant | case | wall ratio (median) | worker CPU ratio (median) | worker CPU: "
        "baseline / interpreter | events per run: baseline / interpreter |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['case']} | {r['wall_ratio']:.2f} | {r['cpu_ratio']:.2f} | "
            f"{r['baseline_cpu_s'] * 1000:.0f} / {r['interpreter_cpu_s'] * 1000:.0f} ms | "
            f"{r['baseline_events']} / {r['interpreter_events']} |"
        )
    return "\n".join(
        [f"{reps} measured repetitions of the concurrent case, {3 * reps} of the parallel "
         "one, after a warm-up, per variant.", "", *lines, ""]
    )  # fmt: skip


def _cli() -> None:
    if len(sys.argv) == 7 and sys.argv[1] == "--serve-worker":
        address, namespace, task_queue, _sandbox, variant = sys.argv[2:7]
        switch_off(VARIANTS[variant])
        asyncio.run(serve_worker(address, namespace, task_queue))
        sys.stdout.flush()
        os._exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--parallel-steps", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    a = parser.parse_args()
    results = asyncio.run(
        measure(
            tuple(a.variants),
            runs=a.runs,
            steps=a.steps,
            parallel_steps=a.parallel_steps,
            reps=a.reps,
        )
    )
    print(markdown(results, a.reps))
    # The SDK's native runtime can crash while Python tears down (sdk-python issue 300).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    from bench.orchestration_ablation import _cli as cli

    cli()
