"""Chaos: releases keep their promises while shipflow's own processes are killed.

A real embedded stack (Temporal on its persistent database, runtime, S3, worker, API,
the runs index on a fresh PostgreSQL database), supervised as `shipflow dev` does, runs
N releases of one flow: a command that counts its executions, a wait, a local deploy
(2 replicas) behind a live HTTP client, a check, and a notify to a loopback sink.
Meanwhile, at seeded random moments, the worker is SIGKILLed (the supervisor starts a
replacement), the runtime is restarted, the Temporal server is SIGKILLed and comes back
on its database, and the API is restarted.

One release is a broken version that never gets ready: its deploy fails, the old version
keeps serving, and the run compensates (an undo command that counts its executions too).

Afterwards: every run ended in its expected state (`succeeded`, the broken one
`rolled_back`), no command or undo ran twice, every released run's message was sent under
one idempotency key, no run was stuck, the live client had no failed request (a failing
rollout never takes traffic, so none is excused), and once the stack is stopped no process
and no database session is left.

The bounded version (the defaults) runs in `make test` in about two minutes. `make chaos`
sets `SHIPFLOW_CHAOS_RUNS`, `SHIPFLOW_CHAOS_WORKER_KILLS`, `SHIPFLOW_CHAOS_ROUNDS` higher
and `SHIPFLOW_CHAOS_REPORT=docs/reliability.md`, where the counts are written.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipflow.infra.stack.embedded import EmbeddedStack
from tests.cli.test_stack import _alive, _processes_in_groups
from tests.helpers import free_ports, stack_on_free_ports, wait_until_sync

SEED = int(os.environ.get("SHIPFLOW_CHAOS_SEED", "1010"))
RUNS = int(os.environ.get("SHIPFLOW_CHAOS_RUNS", "6"))
WORKER_KILLS = int(os.environ.get("SHIPFLOW_CHAOS_WORKER_KILLS", "4"))
#: How often the runtime, Temporal and API restarts are each repeated.
ROUNDS = int(os.environ.get("SHIPFLOW_CHAOS_ROUNDS", "1"))
REPORT = os.environ.get("SHIPFLOW_CHAOS_REPORT")
#: Every run must be over by then (generous: runs are queued one after the other).
#: Which release (1-based) is a broken version that must be rolled back.
BROKEN = int(os.environ.get("SHIPFLOW_CHAOS_BROKEN", str(max(1, RUNS // 2))))
DEADLINE_S = float(os.environ.get("SHIPFLOW_CHAOS_DEADLINE_S", str(90 + 25 * RUNS)))

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(int(DEADLINE_S) + 240)]

FLOW = """\
apiVersion: shipflow/v1
name: chaos
stage: chaos
target:
  kind: local
  services:
    web:
      command: [python, infra/demo/app.py, --port, "{{port}}", --version, "{{image}}"]
      port: {front}
      replicas: 2
      termination_grace: 3s
      progress_deadline: 15s
      probes:
        readiness: {{http: {{path: /healthz}}, period: 250ms, failure_threshold: 2}}
concurrency: queue
args:
  n: {{default: "0"}}
steps:
  - migrate:
      id: count
      command: [sh, -c, "echo started >> {counts}/started-${{args.n}}; sleep 1; echo ran >> {counts}/run-${{args.n}}"]
      undo: {{command: [sh, -c, "echo undone >> {counts}/undo-${{args.n}}"]}}
  - wait: {{id: soak, duration: 1s}}
  # retries: a runtime that is down when a rollout *starts* fails the attempt (Transient);
  # the retry resumes the same rollout. Down in the middle of one is waited for.
  - deploy: {{id: web, service: web, image: "v${{args.n}}", retries: 2}}
  - check:
      id: smoke
      http: {{url: "http://127.0.0.1:{front}/version", contains: "v${{args.n}}"}}
      period: 200ms
      success_threshold: 2
      failure_threshold: 100
  - notify: {{id: tell, webhook: "{sink}/notify", message: "released v${{args.n}}"}}
"""


# ------------------------------------------------------------------ loopback parts


class Sink:
    """The webhook receiver: every delivery, by idempotency key."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with sink.lock:
                    sink.deliveries.append(
                        {"key": self.headers.get("Idempotency-Key"), "body": body}
                    )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class LiveClient:
    """Requests the service's front port all the time, as its users would.

    A request is failed when no 200 came within `budget_s` (a client retries a refused
    connection, as HTTP clients with retries do); first-try errors are counted apart.
    """

    url: str
    budget_s: float = 5.0
    requests: int = 0
    first_try_errors: int = 0
    failed: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=2.0) as http:
            while not self.stop.is_set():
                self.requests += 1
                deadline = time.monotonic() + self.budget_s
                first = True
                while True:
                    try:
                        answer = http.get(self.url)
                        if answer.status_code == 200:
                            self.versions[answer.json()["version"]] += 1
                            break
                        problem = f"HTTP {answer.status_code}"
                    except (httpx.HTTPError, ValueError) as e:
                        problem = type(e).__name__
                    if first:
                        self.first_try_errors += 1
                        first = False
                    if time.monotonic() > deadline:
                        self.failed.append(f"{datetime.now(UTC):%H:%M:%S.%f}: {problem}")
                        break
                    time.sleep(0.05)
                self.stop.wait(0.05)


@dataclass
class Event:
    at: float
    piece: str
    signal: str
    old_pid: int
    new_pid: int | None = None
    back_after_s: float | None = None


class Chaos:
    """Kills pieces of the stack at seeded random moments and waits until each is back."""

    def __init__(self, stack: EmbeddedStack, said: list[str], rng: random.Random, counts: Path):
        self.stack, self.said, self.rng, self.counts = stack, said, rng, counts
        plan = [("worker", signal.SIGKILL)] * WORKER_KILLS + [
            ("runtime", signal.SIGTERM),
            ("temporal", signal.SIGKILL),
            ("api", signal.SIGTERM),
        ] * ROUNDS
        rng.shuffle(plan)
        # Not left to chance: one worker kill lands while a command runs (the moment a
        # lost worker is most likely to make a side effect happen twice).
        plan.insert(min(1, len(plan)), ("worker-during-command", signal.SIGKILL))
        self.plan = plan
        self.events: list[Event] = []
        self.stop = threading.Event()
        self.error: str | None = None
        self.started = time.monotonic()

    def run(self) -> None:
        try:
            for what, sig in self.plan:
                if self.stop.wait(self.rng.uniform(1.5, 4.0)):
                    return
                piece = what.split("-")[0]
                if what == "worker-during-command" and not self._command_running():
                    self.error = "no command started within 60s for the targeted worker kill"
                    return
                old = self.stack.pids()[piece]
                event = Event(time.monotonic() - self.started, what, sig.name, old)
                os.kill(old, sig)
                self.events.append(event)
                if not self._until(lambda piece=piece, old=old: self._back(piece, old), 90, 0.1):
                    self.error = f"{piece} not back 90s after {sig.name}: {self.said[-5:]}"
                    return
                event.new_pid = self.stack.pids()[piece]
                event.back_after_s = time.monotonic() - self.started - event.at
        except Exception as e:  # reported by the test, never swallowed
            self.error = f"chaos failed: {type(e).__name__}: {e}"

    def _command_running(self) -> bool:
        """Wait until a run's command has started and not yet finished."""
        return self._until(
            lambda: any(
                not (self.counts / started.name.replace("started-", "run-")).exists()
                for started in self.counts.glob("started-*")
            ),
            60,
            0.02,
        )

    def _until(self, check: Callable[[], bool], timeout: float, interval: float) -> bool:
        """`wait_until_sync` that ends early when the test stops: whether `check` came true."""
        met: list[bool] = []

        def met_or_stopped() -> bool:
            if check():
                met.append(True)
                return True
            return self.stop.is_set()

        try:
            wait_until_sync(met_or_stopped, timeout=timeout, interval=interval)
        except AssertionError:
            pass
        return bool(met)

    def _back(self, piece: str, old: int) -> bool:
        pid = self.stack.pids().get(piece)
        return pid not in (None, old) and any(
            line.startswith(f"{piece}: restarted (pid {pid},") for line in self.said
        )


# ------------------------------------------------------------------ the test


@pytest.fixture
def chaos_stack(tmp_path: Path, pg_url: str) -> Iterator[tuple[EmbeddedStack, list[str]]]:
    said: list[str] = []
    stack = stack_on_free_ports(
        tmp_path / "stack",
        queue="chaos",
        say=said.append,
        extra_env={
            "SHIPFLOW_DATABASE_URL": pg_url,
            "SHIPFLOW_HEARTBEAT_TIMEOUT_S": "3",
            "SHIPFLOW_STICKY_TIMEOUT_S": "2",
            "SHIPFLOW_PENDING_GRACE_S": "30",
        },
        max_restarts=WORKER_KILLS + 3 * ROUNDS + 5,
        restart_window_s=3600,
        backoff_s=0.2,
        max_backoff_s=2.0,
    )
    stack.start()
    stack.supervise_in_background(poll_s=0.1)
    try:
        yield stack, said
    finally:
        stack.stop()


def _api(stack: EmbeddedStack, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One API call, retried while the API restarts (connection refused, 5xx)."""
    headers = {"Authorization": f"Bearer {stack.token}"}

    def answered() -> tuple[httpx.Response] | None:
        try:
            answer = httpx.request(
                method, stack.api_url + path, headers=headers, timeout=10, **kwargs
            )
        except httpx.TransportError:
            return None
        return (answer,) if answer.status_code < 500 else None

    (answer,) = wait_until_sync(
        answered, timeout=60, interval=0.2, what=f"{method} {path}: the API answers"
    )
    return answer



def _pg_sessions(pg_url: str) -> int:
    import psycopg

    name = pg_url.rsplit("/", 1)[1]
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_releases_survive_chaos(
    chaos_stack: tuple[EmbeddedStack, list[str]], tmp_path: Path, pg_url: str
) -> None:
    stack, said = chaos_stack
    initial = stack.pids()
    rng = random.Random(SEED)
    started = time.monotonic()
    counts = tmp_path / "counts"
    counts.mkdir()
    sink = Sink()
    front = free_ports(1)[0]
    flow = FLOW.format(front=front, counts=counts, sink=sink.url)
    answer = httpx.post(
        f"{stack.api_url}/flows",
        content=flow,
        headers={"Authorization": f"Bearer {stack.token}", "Content-Type": "application/yaml"},
        timeout=30,
    )
    assert answer.status_code in (200, 201), answer.text

    # Every release but one succeeds; the one whose version is broken never gets ready:
    # its deploy fails, the old version keeps serving, the run ends rolled_back.
    run_ids: list[str] = []
    expected: dict[str, str] = {}
    names = [f"{n}-broken" if n == BROKEN else str(n) for n in range(1, RUNS + 1)]
    for name in names:
        answer = _api(stack, "POST", "/flows/chaos/runs", json={"args": {"n": name}})
        assert answer.status_code == 202, answer.text
        run_ids.append(answer.json()["run_id"])
        expected[run_ids[-1]] = "rolled_back" if name.endswith("broken") else "succeeded"

    # The live client starts once the service exists (the first run's deploy).
    client = LiveClient(f"http://127.0.0.1:{front}/version")
    wait_until_sync(lambda: _answers(client.url), timeout=120, interval=0.2, what="the first deploy")
    client_thread = threading.Thread(target=client.run, daemon=True)
    client_thread.start()

    chaos = Chaos(stack, said, rng, counts)
    chaos_began = datetime.now(UTC)
    chaos_thread = threading.Thread(target=chaos.run, daemon=True)
    chaos_thread.start()

    states: dict[str, dict[str, Any]] = {}
    service_pids: set[int] = set()
    deadline = started + DEADLINE_S
    # Not a wait_until: each pass also collects the runs' final states and the instances'
    # pids, and a run still going at the deadline is reported below, not failed here.
    while True:
        for run_id in run_ids:
            if run_id in states:
                continue
            answer = _api(stack, "GET", f"/runs/{run_id}")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            if body["state"] in (
                "succeeded",
                "failed",
                "cancelled",
                "rolled_back",
                "rollback_failed",
            ):
                states[run_id] = body
        service_pids |= _instance_pids(stack)
        if len(states) == len(run_ids) and not chaos_thread.is_alive():
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    chaos.stop.set()
    chaos_thread.join(timeout=120)
    time.sleep(1.0)  # the client sees the last release settle
    client.stop.set()
    client_thread.join(timeout=30)
    service_pids |= _instance_pids(stack)
    elapsed = time.monotonic() - started

    # Counts before anything is asserted, so the report holds them either way.
    executions = {
        n: len((counts / f"run-{n}").read_text().splitlines())
        if (counts / f"run-{n}").exists()
        else 0
        for n in names
    }
    starts = {
        n: len((counts / f"started-{n}").read_text().splitlines())
        for n in names
        if (counts / f"started-{n}").exists()
    }
    undos = {
        n: len((counts / f"undo-{n}").read_text().splitlines())
        for n in names
        if (counts / f"undo-{n}").exists()
    }
    by_run: dict[str, set[str]] = defaultdict(set)
    deliveries: Counter[str] = Counter()
    for delivery in sink.deliveries:
        by_run[delivery["body"]["run_id"]].add(delivery["key"])
        deliveries[delivery["body"]["run_id"]] += 1
    sink.close()
    restarts = stack.restarts()
    stuck = [run_id for run_id in run_ids if run_id not in states]

    stack.stop()
    groups = set(every_child_pid(said, initial))
    leftovers = _processes_in_groups(groups) + [pid for pid in service_pids if _alive(pid)]
    wait_until_sync(lambda: _pg_sessions(pg_url) == 0, timeout=15, interval=0.2, what="PostgreSQL sessions to close")

    result = {
        "seed": SEED,
        "runs": RUNS,
        "elapsed_s": round(elapsed, 1),
        "states": Counter(body["state"] for body in states.values()),
        "stuck": stuck,
        "executions": executions,
        "undos": undos,
        "starts": starts,
        "deliveries": deliveries,
        "keys": {run: len(keys) for run, keys in by_run.items()},
        "events": chaos.events,
        "chaos_error": chaos.error,
        "restarts": restarts,
        "client": client,
        "leftovers": leftovers,
        "run_ids": run_ids,
        "said": [line for line in said if "exited with code" in line or "restart" in line],
    }
    if REPORT:
        write_report(Path(REPORT), result)

    # Every promise is checked and every broken one named, not only the first.
    problems: list[str] = []

    def expect(ok: bool, problem: str) -> None:
        if not ok:
            problems.append(problem)

    expect(chaos.error is None, f"chaos: {chaos.error}")
    expect(len(chaos.events) == len(chaos.plan), "not every planned kill happened")
    expect(stuck == [], f"runs not over within {DEADLINE_S:g}s: {stuck}")
    wrong = {
        r: (b["state"], b.get("error")) for r, b in states.items() if b["state"] != expected[r]
    }
    expect(wrong == {}, f"runs not in their expected state: {wrong}")
    twice = {n: c for n, c in executions.items() if c != 1}
    expect(
        twice == {},
        f"commands that did not run exactly once (run n: executions): {twice}; starts: {starts}",
    )
    broken = [n for n in names if n.endswith("broken")]
    expect(undos == dict.fromkeys(broken, 1), f"undo executions (1 expected): {undos}")
    announced = {r for r in run_ids if expected[r] == "succeeded"}
    expect(set(by_run) == announced, f"messages for {set(by_run)}, expected for {announced}")
    expect(all(len(k) == 1 for k in by_run.values()), f"idempotency keys per run: {by_run}")
    expect(client.failed == [], f"{len(client.failed)} failed requests: {client.failed[:5]}")
    expect(bool(client.versions), "the live client got no answer at all")
    expect(leftovers == [], f"processes left after stop: {leftovers}")
    expect(stack.failure is None, f"the stack gave up: {stack.failure}")
    # With the kills in wall-clock time, a failed request's time says what was down.
    events = [f"{chaos_began:%H:%M:%S.%f} chaos began"] + [
        f"+{e.at:.1f}s {e.piece} {e.signal} (pid {e.old_pid}), back after {e.back_after_s}s"
        for e in chaos.events
    ]
    assert problems == [], "\n".join(problems + events)


def every_child_pid(said: list[str], initial: dict[str, int]) -> list[int]:
    """Every process-group leader the stack ever had: the first children and each restart.

    Not S3: moto runs in the test's own process group (it is stopped by pid).
    """
    pids = [pid for name, pid in initial.items() if name != "s3"]
    for line in said:
        name, _, rest = line.partition(": restarted (pid ")
        if rest and name != "s3":
            pids.append(int(rest.split(",")[0]))
    return pids


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _instance_pids(stack: EmbeddedStack) -> set[int]:
    try:
        answer = httpx.get(f"{stack.runtime_url}/services/web", timeout=2)
        return {int(i["pid"]) for i in answer.json().get("instances", []) if i.get("pid")}
    except (httpx.HTTPError, ValueError, TypeError, KeyError):
        return set()


READING = """\
Reading it: a client error on the first try happens while the runtime restarts (the front
ports live in the runtime process and are closed for about a second); the client retries a
refused connection for up to 5 s, as HTTP clients with retries do, and a request counts as
failed only if no 200 came in that time. The deploy step has `retries: 2` because a runtime
that is down at the moment a rollout *starts* fails that attempt (retryable; the retry
resumes the same rollout); a runtime that goes down in the middle of a rollout is waited for.
"""


def write_report(path: Path, result: dict[str, Any]) -> None:
    client: LiveClient = result["client"]
    events: list[Event] = result["events"]
    kills = Counter(f"{e.piece} ({e.signal})" for e in events)
    lines = [
        "# Reliability: the chaos suite",
        "",
        f"Written by `make chaos` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"(`tests/chaos/test_chaos.py`, seed {result['seed']}).",
        "",
        "N releases of one flow (a command that counts its executions, a 1 s wait, a local",
        "deploy of 2 replicas behind a live HTTP client, a check, a notify to a loopback",
        "sink) on the embedded stack, while the worker is SIGKILLed, the runtime and the API",
        "are restarted and the Temporal server is SIGKILLed and comes back on its database.",
        "One release is a broken version that never gets ready: it must end rolled_back, its",
        "undo command run once, and the old version keep serving.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| releases | {result['runs']} |",
        f"| wall time | {result['elapsed_s']} s |",
        f"| final states | {dict(result['states'])} (expected: all succeeded but release "
        f"{BROKEN}, a broken version, rolled_back) |",
        f"| runs stuck (not over by the deadline) | {len(result['stuck'])} |",
        f"| kills and restarts | {dict(kills)} |",
        f"| restarts counted by the stack | {result['restarts']} |",
        f"| command executions per run (1 expected) | {sorted(Counter(result['executions'].values()).items())} (executions: runs) |",
        f"| runs whose command ran more than once | {sum(1 for c in result['executions'].values() if c > 1)} |",
        f"| runs whose command was started more than once (an interrupted start, killed before it finished, is allowed) | {sum(1 for c in result['starts'].values() if c > 1)} |",
        f"| undo executions of the rolled-back release (1 expected) | {result['undos']} |",
        f"| webhook deliveries | {sum(result['deliveries'].values())} for {len(result['deliveries'])} runs |",
        f"| distinct idempotency keys per run (1 expected) | {sorted(Counter(result['keys'].values()).items())} (keys: runs) |",
        f"| live client requests | {client.requests} |",
        f"| client errors on first try (retried) | {client.first_try_errors} |",
        f"| client requests failed (no 200 within {client.budget_s:g} s) | {len(client.failed)} |",
        f"| processes left after stop | {len(result['leftovers'])} |",
        f"| chaos error | {result['chaos_error'] or 'none'} |",
        "",
        *READING.splitlines(),
        "",
        "Events (seconds after the chaos started; back = healthy again after restart):",
        "",
    ]
    for e in events:
        back = f"{e.back_after_s:.1f}" if e.back_after_s is not None else "never"
        lines.append(
            f"- {e.at:6.1f} s: {e.piece} {e.signal} (pid {e.old_pid}), back after {back} s"
        )
    caused = Counter(e.piece.split("-")[0] for e in events)
    unprovoked = {p: n - caused[p] for p, n in result["restarts"].items() if n > caused[p]}
    lines += [
        "",
        f"Restarts the chaos did not cause itself (a piece that exited on its own, or was not "
        f"healthy in time after a restart, and was restarted again): {unprovoked or 'none'}.",
        "",
        "What the stack said about its children:",
        "",
        *[f"    {line}" for line in result["said"]],
    ]
    twice = {n: c for n, c in result["executions"].items() if c != 1}
    if twice:
        lines += [
            "",
            f"Commands that did not run exactly once (run n: executions): {twice}; "
            f"starts: {result['starts']}",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
