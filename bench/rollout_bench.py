"""Rollout benchmark: wall time of a 3-replica rolling deploy on the local target.

A rolling deploy cannot be faster than replicas x (startup + one readiness period): each
surge instance has to start, then pass one readiness probe, before the next one may
replace another old instance. The ratio of the measured wall time (through the real
LocalTarget and runtime process, demo app instances) to that lower bound shows what the
runtime itself adds: spawning, probing, draining, stopping. Target: ratio <= 1.3.

Run: `.venv/bin/python bench/rollout_bench.py [--replicas 3 --startup 0.5 --period 0.2]`,
or `main(...)`, which returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import wait_until_sync

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_RATIO = 1.3
DEMO_APP = str(ROOT / "infra" / "demo" / "app.py")


def runtime_headers(data_dir: Path) -> dict[str, str]:
    """The runtime's key (generated into its data dir at start) as a request header."""
    return {"Authorization": "Bearer " + (data_dir / "runtime.key").read_text().strip()}


@contextlib.contextmanager
def local_runtime(data_dir: Path) -> Iterator[str]:
    """A runtime process on a free port; every service removed and the runtime stopped after."""
    import httpx

    from tests.helpers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(data_dir / "runtime.log", "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipflow.worker.runtime", "--data-dir", str(data_dir),
         "--port", str(port)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    try:

        def answers() -> bool:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    return True
            if proc.poll() is not None:
                raise RuntimeError("the runtime did not start; see " + str(data_dir / "runtime.log"))
            return False

        wait_until_sync(
            answers, timeout=15, interval=0.02, what=f"the runtime starts (see {data_dir / 'runtime.log'})"
        )
        yield url
    finally:
        with contextlib.suppress(Exception):
            auth = runtime_headers(data_dir)
            for svc in httpx.get(url + "/services", headers=auth, timeout=5).json():
                httpx.delete(f"{url}/services/{svc['name']}", headers=auth, timeout=30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def demo_service(port: int, replicas: int, startup: float, period: float) -> dict[str, Any]:
    return {
        "command": [sys.executable, DEMO_APP, "--port", "{port}", "--version", "{image}"],
        "port": port,
        "replicas": replicas,
        "env": {"DEMO_STARTUP_DELAY": str(startup)},
        "termination_grace": "5s",
        "progress_deadline": "60s",
        "probes": {"readiness": {"http": {"path": "/healthz"}, "period": f"{period}s"}},
    }


class _Quiet:
    resume = None

    def beat(self, details: dict[str, Any]) -> None:
        return None

    def cancelled(self) -> bool:
        return False


def main(replicas: int = 3, startup: float = 0.5, period: float = 0.2, reps: int = 3) -> dict[str, Any]:
    from shipflow.activities.core.settings import Settings
    from shipflow.activities.targets.base import RolloutRequest
    from shipflow.activities.targets.local.target import LocalTarget
    from tests.helpers import free_port

    with tempfile.TemporaryDirectory(prefix="sf-rollout-bench-") as tmp, local_runtime(Path(tmp)) as url:
        spec = {"kind": "local", "services": {"web": demo_service(free_port(), replicas, startup, period)}}
        settings = Settings(runtime_url=url, runtime_key_file=Path(tmp) / "runtime.key")
        target = LocalTarget(spec, settings)

        def roll(image: str) -> float:
            began = time.monotonic()
            target.rollout(RolloutRequest(run_id="bench", step_id=image, service="web", image=image), _Quiet())
            return time.monotonic() - began

        first = roll("v0")
        times = [roll(f"v{i + 1}") for i in range(reps)]
    bound = replicas * (startup + period)
    wall = statistics.median(times)
    result = {
        "replicas": replicas,
        "startup_s": startup,
        "period_s": period,
        "first_deploy_s": round(first, 3),
        "rollout_s": round(wall, 3),
        "rollout_runs_s": [round(t, 3) for t in times],
        "lower_bound_s": round(bound, 3),
        "ratio": round(wall / bound, 3),
        "target_ratio": TARGET_RATIO,
        "ok": wall / bound <= TARGET_RATIO,
    }
    print("| benchmark | measured | bound | ratio | target |")
    print("|---|---|---|---|---|")
    print(
        f"| local rollout, {replicas} replicas (startup {startup}s, period {period}s), median of "
        f"{reps} | {wall:.2f}s | {bound:.2f}s | {wall / bound:.2f} | <= {TARGET_RATIO} |"
    )
    print(f"| local first deploy, {replicas} replicas | {first:.2f}s | {startup + period:.2f}s | "
          f"{first / (startup + period):.2f} | - |")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--startup", type=float, default=0.5)
    parser.add_argument("--period", type=float, default=0.2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    ns = parser.parse_args()
    out = main(ns.replicas, ns.startup, ns.period, ns.reps)
    if ns.json:
        print(json.dumps(out))
