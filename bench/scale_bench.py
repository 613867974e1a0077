"""Scale (issue 12, part 3): a burst of queued runs across many stages, the stage locks'
history under it, and a 1,000-step flow.

One fresh dev server (the embedded stack's dynamic config, plus
`limit.historyCount.suggestContinueAsNew` lowered to `SUGGEST_CAN_EVENTS` so that the stage
locks must continue-as-new during the burst, as they would after days of traffic on a real
cluster), one in-process worker built exactly as `shipflow worker` builds it (real
activities, SQLite runs index), runs started the way the API starts them (`start_release`).

1. **Burst**: `--runs` runs (1,000) over `--stages` stages (50), flow concurrency `queue`, all
   started as fast as the client can (a bounded number of starts in flight). Reported: time to
   start them all, time until all ended, the worker process's CPU, every run's outcome, and
   per stage (a) that no two runs overlapped and (b) that runs held the stage in the order the
   lock admitted them (the order of `acquire` updates in the lock's history, across its
   continue-as-new chain).
2. **Stage locks**: per lock chain, the number of continue-as-new and the longest history of
   one run, against Temporal's hard limit (51,200 events); the `lock.closed_runs` polls made
   while busy; and, after the burst, that an idle lock's history does not grow over more than
   one poll interval (it polls only while it holds or queues a run).
3. **Large flow**: a flow of 1,000 actions (20 sequential `parallel` groups of 25 `wait` and
   25 `migrate` steps) applied through the API (`POST /flows`), started (`POST
   /flows/{name}/runs`) and run to the end; its plan and start-memo bytes, the run's
   history events and bytes. Then the plan size per step kind and the step count at which
   `MAX_PLAN_BYTES` refuses a flow.

`python -m bench.scale_bench [--runs 1000 --stages 50 --large-steps 1000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from bench.common import print_report, run_as_script, start_dev_server
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import RunLook, plan_for, read_status, start_release
from shipflow.api.app import create_app
from shipflow.worker.main import build_worker
from shipflow.workflows.plan import MAX_PLAN_BYTES, compile
from shipflow.workflows.spec import MAX_STEPS, load_flow_text, parse_flow
from shipflow.workflows.stage_lock import REAP_INTERVAL_S, lock_id

#: The lock workflows must continue-as-new during the burst: the server suggests it here.
SUGGEST_CAN_EVENTS = 400
HARD_LIMIT_EVENTS = 51_200
START_CONCURRENCY = 50


@dataclass
class Burst:
    runs: int
    stages: int
    start_s: float = 0.0
    total_s: float = 0.0
    cpu_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    overlaps: int = 0
    order_kept: int = 0  # stages whose runs held the stage in admission order
    start_order_kept: int = 0  # ... and in the order they were started (informational)
    locks: list[dict[str, Any]] = field(default_factory=list)
    idle_growth: int = 0
    idle_wait_s: float = 0.0
    run_seconds: list[float] = field(default_factory=list)


def _spec(name: str, stage: str) -> Any:
    return parse_flow(
        {
            "apiVersion": "shipflow/v1",
            "name": name,
            "stage": stage,
            "concurrency": "queue",
            "steps": [{"migrate": {"id": "migrate", "command": ["true"]}}],
        }
    )


async def _lock_chain(client: Client, workflow_id: str) -> dict[str, Any]:
    """Every run of one lock's continue-as-new chain: history lengths, acquire order, polls."""
    runs: list[int] = []
    admitted: list[str] = []
    polls = 0
    run_id: str | None = None
    # Walk back from the newest run to the first through `continued_execution_run_id`.
    histories = []
    while True:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        history = await handle.fetch_history()
        histories.append(history)
        first = history.events[0].workflow_execution_started_event_attributes
        if not first.continued_execution_run_id:
            break
        run_id = first.continued_execution_run_id
    for history in reversed(histories):
        runs.append(len(history.events))
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
                request = event.workflow_execution_update_accepted_event_attributes.accepted_request
                [data] = await client.data_converter.decode(request.input.args.payloads[:1])
                admitted.append(data["run_id"])
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                polls += 1
    return {"id": workflow_id, "runs": runs, "admitted": admitted, "polls": polls}


async def burst(
    client: Client,
    settings: Settings,
    *,
    runs: int,
    stages: int,
    idle_wait_s: float = REAP_INTERVAL_S + 3,
) -> Burst:
    result = Burst(runs=runs, stages=stages)
    names = [f"burst-{i:02d}" for i in range(stages)]
    plans = {n: plan_for(_spec(n, f"stage-{n}"), settings) for n in names}
    started_order: dict[str, list[str]] = defaultdict(list)
    semaphore = asyncio.Semaphore(START_CONCURRENCY)

    async def start(index: int) -> str:
        name = names[index % stages]
        run_id = f"{name}-{index:05d}"
        started_order[name].append(run_id)  # in index order: the order starts are issued
        async with semaphore:
            await start_release(client, settings, plans[name], run_id=run_id)
        return run_id

    cpu = time.process_time()
    began = time.perf_counter()
    run_ids = await asyncio.gather(*(start(i) for i in range(runs)))
    result.start_s = time.perf_counter() - began

    async def ended(run_id: str) -> Any:
        handle = client.get_workflow_handle(run_id)
        try:
            await handle.result()
        except Exception:
            pass
        return await read_status(client, run_id)

    statuses = await asyncio.gather(*(ended(r) for r in run_ids))
    result.total_s = time.perf_counter() - began
    result.cpu_s = time.process_time() - cpu
    outcomes: dict[str, int] = defaultdict(int)
    by_stage: dict[str, list[Any]] = defaultdict(list)
    for status in statuses:
        outcomes[status.state.value] += 1
        by_stage[status.flow].append(status)
        if status.started_at and status.ended_at:
            result.run_seconds.append((status.ended_at - status.started_at).total_seconds())
    result.outcomes = dict(outcomes)
    for name in names:
        chain = await _lock_chain(client, lock_id(f"stage-{name}", settings.task_queue))
        held = sorted(by_stage[name], key=lambda s: s.steps[0].started_at)
        order = [s.run_id for s in held]
        for before, after in itertools.pairwise(held):
            if before.steps[0].ended_at > after.steps[0].started_at:
                result.overlaps += 1
        # A retried acquire (its first try timed out) is accepted again: the first counts.
        admitted = list(dict.fromkeys(r for r in chain["admitted"] if r in set(order)))
        result.order_kept += order == admitted
        result.start_order_kept += order == started_order[name]
        result.locks.append({k: v for k, v in chain.items() if k != "admitted"})
    # Idle locks do not poll: their histories do not grow over more than one poll interval.
    before = [sum(lock["runs"]) for lock in result.locks]
    await asyncio.sleep(idle_wait_s)
    after = [
        sum((await _lock_chain(client, lock_id(f"stage-{n}", settings.task_queue)))["runs"])
        for n in names
    ]
    result.idle_growth = sum(a - b for a, b in zip(after, before, strict=True))
    result.idle_wait_s = idle_wait_s
    return result


def large_flow_text(name: str, actions: int) -> str:
    groups = max(1, actions // 50)
    lines = ["apiVersion: shipflow/v1", f"name: {name}", "stage: large", "steps:"]
    for g in range(groups):
        lines.append("  - parallel:")
        for i in range(50):
            if i % 2:
                lines.append(f"      - migrate: {{id: m{g}-{i}, command: [\"true\"]}}")
            else:
                lines.append(f"      - wait: {{id: w{g}-{i}, duration: 1s}}")
    return "\n".join(lines) + "\n"


async def large_flow(client: Client, settings: Settings, actions: int) -> dict[str, Any]:
    name = f"large-{uuid.uuid4().hex[:6]}"
    text = large_flow_text(name, actions)
    plan = plan_for(load_flow_text(text), settings)
    look = RunLook.of(settings, plan, "x", None, None, "api")
    memo_bytes = len(json.dumps(look.memo))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            began = time.perf_counter()
            applied = await http.post("/flows", content=text)
            apply_s = time.perf_counter() - began
            if applied.status_code not in (200, 201):
                raise RuntimeError(f"apply: {applied.status_code} {applied.text[:500]}")
            began = time.perf_counter()
            response = await http.post(f"/flows/{name}/runs", json={})
            start_s = time.perf_counter() - began
            if response.status_code != 202:
                raise RuntimeError(f"start: {response.status_code} {response.text[:500]}")
            run_id = response.json()["run_id"]
            began = time.perf_counter()
            cpu = time.process_time()
            handle = client.get_workflow_handle(run_id)
            await handle.result()
            run_s = time.perf_counter() - began
            cpu_s = time.process_time() - cpu
            detail = (await http.get(f"/runs/{run_id}")).json()
    history = await handle.fetch_history()
    description = await handle.describe()
    return {
        "actions": len(list(plan.actions())),
        "plan_bytes": len(plan.model_dump_json()),
        "start_memo_bytes": memo_bytes,
        "apply_s": apply_s,
        "start_s": start_s,
        "run_s": run_s,
        "cpu_s": cpu_s,
        "state": detail["state"],
        "succeeded_steps": sum(1 for s in detail["steps"] if s["state"] == "succeeded"),
        "history_events": len(history.events),
        "history_bytes": description.raw_description.workflow_execution_info.history_size_bytes,
        "closed": description.status == WorkflowExecutionStatus.COMPLETED,
    }


def plan_sizes() -> dict[str, Any]:
    """Plan bytes per step of each kind, and how many such steps MAX_PLAN_BYTES allows."""
    kinds = {
        "wait": "wait: {{id: s{i}, duration: 1s}}",
        "deploy": "deploy: {{id: s{i}, service: api, image: 'registry.example/app:1.2.3'}}",
        "migrate with undo": (
            "migrate: {{id: s{i}, command: [python, migrate.py, --db, app.db, --to, v1], "
            "undo: {{command: [python, undo.py]}}}}"
        ),
    }
    out: dict[str, Any] = {}
    for kind, line in kinds.items():
        sizes = []
        for count in (100, 200):
            text = (
                "apiVersion: shipflow/v1\nname: sizes\nstage: s\ntarget: {kind: local, services: "
                "{api: {command: [x], port: 1}}}\nsteps:\n"
                + "".join("  - " + line.format(i=i) + "\n" for i in range(count))
            )
            sizes.append(len(compile(load_flow_text(text)).model_dump_json()))
        per_step = (sizes[1] - sizes[0]) / 100
        fixed = sizes[0] - 100 * per_step
        out[kind] = {
            "bytes_per_step": per_step,
            "steps_within_plan_limit": int((MAX_PLAN_BYTES - fixed) / per_step),
        }
    return out


async def run_bench(*, runs: int, stages: int, large_steps: int) -> dict[str, Any]:
    env = await start_dev_server(
        "--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={SUGGEST_CAN_EVENTS}"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="shipflow-scale-bench-") as tmp:
            settings = Settings(
                temporal_address=env.client.service_client.config.target_host,
                task_queue=f"scale-{uuid.uuid4().hex[:8]}",
                data_dir=Path(tmp),
                open_dev_instance=True,
                payload_keys=None,
                pending_reconcile_interval_s=3600,
            )
            worker = build_worker(env.client, settings)
            async with worker:
                burst_result = await burst(env.client, settings, runs=runs, stages=stages)
                large = await large_flow(env.client, settings, large_steps)
    finally:
        await env.shutdown()
    result = {
        "burst": burst_result.__dict__ | {"run_seconds": None},
        "run_seconds_median": statistics.median(burst_result.run_seconds or [0]),
        "large_flow": large,
        "plan_sizes": plan_sizes(),
        "max_steps": MAX_STEPS,
        "max_plan_bytes": MAX_PLAN_BYTES,
    }
    result["markdown"] = markdown(result)
    return result


def markdown(r: dict[str, Any]) -> str:
    b = r["burst"]
    locks = b["locks"]
    longest = max((max(lock["runs"]) for lock in locks), default=0)
    cans = [len(lock["runs"]) - 1 for lock in locks]
    polls = sum(lock["polls"] for lock in locks)
    large = r["large_flow"]
    lines = [
        "## Scale: a burst of queued runs, the stage locks, a 1,000-step flow",
        "",
        "One fresh dev server (the embedded stack's dynamic config, plus "
        f"`limit.historyCount.suggestContinueAsNew={SUGGEST_CAN_EVENTS}` so that the locks must "
        "continue-as-new during the burst), one in-process worker built as `shipflow worker` "
        "builds it, runs started as the API starts them.",
        "",
        f"### Burst: {b['runs']} runs over {b['stages']} stages, `concurrency: queue`",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| all runs started in | {b['start_s']:.1f} s |",
        f"| all runs ended after | {b['total_s']:.1f} s |",
        f"| throughput | {b['runs'] / max(b['total_s'], 1e-9):.1f} runs/s |",
        f"| worker (+ client) CPU | {b['cpu_s']:.1f} s ({1000 * b['cpu_s'] / b['runs']:.0f} ms per run) |",
        f"| outcomes | {', '.join(f'{k}: {v}' for k, v in sorted(b['outcomes'].items()))} |",
        f"| median run time (start to end, queueing included) | {r['run_seconds_median']:.1f} s |",
        f"| overlapping runs within a stage | {b['overlaps']} |",
        f"| stages whose runs held the stage in the lock's admission order | {b['order_kept']} of {b['stages']} |",
        f"| ... in the order their starts were issued | {b['start_order_kept']} of {b['stages']} |",
        "",
        "### Stage locks",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| continue-as-new per lock (min / max) | {min(cans, default=0)} / {max(cans, default=0)} |",
        f"| longest history of one lock run | {longest} events (hard limit {HARD_LIMIT_EVENTS}) |",
        f"| `lock.closed_runs` polls during the burst (all locks) | {polls} |",
        f"| lock history growth while idle for {b['idle_wait_s']:.0f} s (all locks) | {b['idle_growth']} events |",
        "",
        f"### A {large['actions']}-action flow",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| plan (workflow input) | {large['plan_bytes'] / 1024:.0f} KiB |",
        f"| start memo | {large['start_memo_bytes'] / 1024:.0f} KiB |",
        f"| `POST /flows` | {large['apply_s'] * 1000:.0f} ms |",
        f"| `POST /flows/{{name}}/runs` | {large['start_s'] * 1000:.0f} ms |",
        f"| run (20 groups of 50 parallel steps, `wait 1s` and `migrate true`) | {large['run_s']:.1f} s, {large['cpu_s']:.1f} s CPU |",
        f"| outcome | {large['state']}, {large['succeeded_steps']} steps succeeded |",
        f"| history | {large['history_events']} events, {large['history_bytes'] / 1024 / 1024:.1f} MiB |",
        "",
        f"### Plan size limit (`MAX_PLAN_BYTES` = {r['max_plan_bytes']:,}; `MAX_STEPS` = {r['max_steps']:,})",
        "",
        "| step kind | plan bytes per step | steps within the plan-size limit |",
        "|---|---:|---:|",
    ]
    for kind, s in r["plan_sizes"].items():
        lines.append(f"| {kind} | {s['bytes_per_step']:.0f} | {s['steps_within_plan_limit']:,} |")
    lines += [
        "",
        "A flow is refused at apply (422 naming the limit) at whichever comes first: "
        f"{r['max_steps']:,} steps or a {r['max_plan_bytes']:,}-byte plan. Temporal's payload "
        "limit is 2 MB; the start request carries the plan and the start memo (about 0.23 KB "
        "per step), so the step count keeps both well inside it.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--stages", type=int, default=50)
    parser.add_argument("--large-steps", type=int, default=1000)
    args = parser.parse_args(argv or [])
    result = asyncio.run(
        run_bench(runs=args.runs, stages=args.stages, large_steps=args.large_steps)
    )
    return print_report(result)


if __name__ == "__main__":
    run_as_script(main)
