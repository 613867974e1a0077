"""Proxy benchmark: requests/s and p99 latency through a front port vs direct to an instance.

One demo instance behind the local runtime's front port; the same async client load
(httpx, keep-alive connections, N concurrent workers) first straight at the instance's
own port, then through the front port, then through a front port that routes each request
on its own (a canary's per-request weighting). The ratios of requests/s show what the
asyncio proxy costs, and what per-request routing costs on top. Target: front/direct >= 0.7. (`wrk` is used instead of httpx when it is on
PATH: it drives more load from less CPU, which matters on a 2-core machine.)

Reading the numbers on a 2-core machine: the Python client, the proxy and the demo app
(a stdlib ThreadingHTTPServer) share two cores, and the client is usually what saturates
first, so the ratio mostly says whether the proxy became the bottleneck (it should stay
near 1.0); run-to-run noise of +-15% is normal when other work runs on the machine.

Run: `.venv/bin/python bench/proxy_bench.py [--seconds 3 --concurrency 16]`, or `main(...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.helpers import wait_until_sync

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.rollout_bench import demo_service, local_runtime, runtime_headers  # noqa: E402

TARGET_RATIO = 0.7


async def _httpx_load(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        stop_at = time.monotonic() + seconds

        async def one_worker() -> None:
            nonlocal errors
            while time.monotonic() < stop_at:
                began = time.perf_counter()
                try:
                    response = await client.get(url)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors += 1

        began = time.monotonic()
        await asyncio.gather(*(one_worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    return {"rps": len(latencies) / elapsed, "p99_ms": p99 * 1000, "errors": errors}


def _wrk_load(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def main(seconds: float = 3.0, concurrency: int = 16) -> dict[str, Any]:
    import httpx

    from tests.helpers import free_port

    tool = "wrk" if shutil.which("wrk") else "httpx"
    front = free_port()
    with tempfile.TemporaryDirectory(prefix="sf-proxy-bench-") as tmp, local_runtime(Path(tmp)) as url:
        spec = demo_service(front, replicas=1, startup=0.0, period=0.2)
        auth = runtime_headers(Path(tmp))
        # The same instance behind a second front port that routes request by request, as
        # during a canary (a service whose strategy is canary is always routed so): what
        # per-request weighting costs against splicing whole connections.
        per_request_port = free_port()
        canary = {"canary": {"steps": [{"set_weight": 100}]}}
        for name, body in (
            ("web", {"spec": spec, "image": "v1", "rollout_id": "b"}),
            ("webc", {"spec": {**spec, "port": per_request_port, "strategy": canary}, "image": "v1",
                      "rollout_id": "b"}),
        ):
            httpx.put(f"{url}/services/{name}/rollout", json=body, headers=auth)
            wait_until_sync(
                lambda name=name: httpx.get(f"{url}/services/{name}/rollouts/b", headers=auth).json()["state"]
                != "running",
                timeout=15,
                what=f"demo instance {name} gets ready",
            )
        (instance,) = httpx.get(f"{url}/services/web", headers=auth).json()["instances"]

        def load(port: int) -> dict[str, float]:
            target = f"http://127.0.0.1:{port}/version"
            if tool == "wrk":
                return _wrk_load(target, seconds, concurrency)
            return asyncio.run(_httpx_load(target, seconds, concurrency))

        load(instance["port"])  # warm-up
        direct = load(instance["port"])
        proxied = load(front)
        per_request = load(per_request_port)
    ratio = proxied["rps"] / direct["rps"] if direct["rps"] else 0.0
    weighting = per_request["rps"] / proxied["rps"] if proxied["rps"] else 0.0
    result = {
        "tool": tool,
        "concurrency": concurrency,
        "seconds": seconds,
        "direct_rps": round(direct["rps"], 1),
        "direct_p99_ms": round(direct["p99_ms"], 2),
        "front_rps": round(proxied["rps"], 1),
        "front_p99_ms": round(proxied["p99_ms"], 2),
        "errors": int(direct["errors"] + proxied["errors"]),
        "ratio": round(ratio, 3),
        "per_request_rps": round(per_request["rps"], 1),
        "per_request_p99_ms": round(per_request["p99_ms"], 2),
        "per_request_vs_front": round(weighting, 3),
        "target_ratio": TARGET_RATIO,
        "ok": ratio >= TARGET_RATIO,
    }
    print("| benchmark | direct | front port | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| proxy req/s ({tool}, {concurrency} conns, {seconds:g}s) | {direct['rps']:.0f} | "
          f"{proxied['rps']:.0f} | {ratio:.2f} | >= {TARGET_RATIO} |")
    print(f"| proxy p99 latency | {direct['p99_ms']:.1f} ms | {proxied['p99_ms']:.1f} ms | "
          f"{proxied['p99_ms'] / direct['p99_ms']:.2f} | - |")
    print(f"| per-request routing (canary) req/s vs front port | {proxied['rps']:.0f} | "
          f"{per_request['rps']:.0f} | {weighting:.2f} | >= 0.9 (issue #17) |")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args()
    out = main(ns.seconds, ns.concurrency)
    if ns.json:
        print(json.dumps(out))
