"""Proxy benchmark: requests/s and p99 latency through a front port vs direct to an instance,
and what per-request weighting (a canary's routing) costs against splicing connections.

One demo instance behind two front ports of the local runtime: one splices whole
connections (a plain service), the other reads HTTP/1.1 request by request and routes each
by weight (a service whose strategy is canary). The same client load (keep-alive
connections, N concurrent workers) runs straight at the instance, through the splicing
port and through the per-request port, **repeated** `--repeat` times with the two proxied
modes interleaved (their order alternating), so that a load change on a shared machine
hits both alike. Reported per mode: min and median req/s and p99 over the repetitions, the
median and min of the per-repetition ratio per-request / splice, and the runtime process's
own CPU per request in each mode (from /proc: what the proxy spends, whatever saturates
first). Issue #17's target: per-request routing costs under 10% of the throughput, i.e.
per-request / splice >= 0.9.

Clients: `raw` (default: asyncio streams, one GET per round trip on a kept connection,
parsing only the status line and Content-Length; light, so that on 2 cores the proxy, not
the client, is measured), `httpx` (what earlier rows used), or `wrk` when on PATH.

Reading the numbers on a 2-core machine: the client, the proxy and the demo app (a stdlib
ThreadingHTTPServer) share two cores, so req/s is bounded by the three together and moves
with other work on the machine; the CPU per request of the proxy process is the steadier
measure of what per-request routing costs.

Run: `.venv/bin/python bench/proxy_bench.py [--seconds 3 --concurrency 16 --repeat 5
--client raw|httpx|wrk]`, or `main(...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.rollout_bench import demo_service, local_runtime, runtime_headers  # noqa: E402
from tests.helpers import wait_until_sync  # noqa: E402

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


async def _raw_load(port: int, seconds: float, concurrency: int) -> dict[str, float]:
    """Keep-alive GETs on raw asyncio streams: far less client CPU per request than httpx."""
    latencies: list[float] = []
    errors = 0
    request = b"GET /version HTTP/1.1\r\nHost: bench\r\n\r\n"
    stop_at = time.monotonic() + seconds

    async def one_worker() -> None:
        nonlocal errors
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            try:
                if streams is None:
                    streams = await asyncio.open_connection("127.0.0.1", port)
                reader, writer = streams
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await asyncio.wait_for(reader.readexactly(length), 10)
                ok = head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
                ok = False
                if streams is not None:
                    streams[1].close()
                streams = None
            if ok:
                latencies.append(time.perf_counter() - began)
            else:
                errors += 1
        if streams is not None:
            streams[1].close()

    began = time.monotonic()
    await asyncio.gather(*(one_worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else float("nan")
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


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process so far (Linux /proc), 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runtime_pid(data_dir: Path) -> int | None:
    """The runtime process serving `data_dir` (its front ports are where the proxy runs)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"shipflow.worker.runtime" in argv and str(data_dir).encode() in argv:
            return int(entry.name)
    return None


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    rps = [r["rps"] for r in runs]
    p99 = [r["p99_ms"] for r in runs]
    cpu = [r["cpu_us_per_req"] for r in runs if r.get("cpu_us_per_req")]
    return {
        "rps_min": round(min(rps), 1),
        "rps_median": round(statistics.median(rps), 1),
        "p99_ms_min": round(min(p99), 2),
        "p99_ms_median": round(statistics.median(p99), 2),
        "cpu_us_per_req_median": round(statistics.median(cpu), 1) if cpu else 0.0,
        "errors": int(sum(r["errors"] for r in runs)),
    }


def main(seconds: float = 3.0, concurrency: int = 16, repeat: int = 5, client: str = "raw") -> dict[str, Any]:
    import httpx

    from tests.helpers import free_port

    tool = "wrk" if client == "wrk" and shutil.which("wrk") else ("httpx" if client == "httpx" else "raw")
    front = free_port()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sf-proxy-bench-") as tmp, local_runtime(Path(tmp)) as url:
        spec = demo_service(front, replicas=1, startup=0.0, period=0.2)
        auth = runtime_headers(Path(tmp))
        runtime_pid = _runtime_pid(Path(tmp))
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
            cpu_before = _cpu_seconds(runtime_pid)
            if tool == "wrk":
                out = _wrk_load(target, seconds, concurrency)
            elif tool == "httpx":
                out = asyncio.run(_httpx_load(target, seconds, concurrency))
            else:
                out = asyncio.run(_raw_load(port, seconds, concurrency))
            cpu = _cpu_seconds(runtime_pid) - cpu_before
            served = out["rps"] * seconds
            out["cpu_us_per_req"] = cpu / served * 1e6 if served and port != instance["port"] else 0.0
            return out

        load(instance["port"])  # warm-up: the instance
        load(front)  # and both front ports
        load(per_request_port)
        runs: dict[str, list[dict[str, float]]] = {"direct": [], "splice": [], "per_request": []}
        for rep in range(repeat):
            runs["direct"].append(load(instance["port"]))
            order = [("splice", front), ("per_request", per_request_port)]
            for mode, port in order if rep % 2 == 0 else order[::-1]:
                runs[mode].append(load(port))
    load_after = os.getloadavg()
    direct, splice, per_request = (_summary(runs[m]) for m in ("direct", "splice", "per_request"))
    pair_ratios = [p["rps"] / s["rps"] if s["rps"] else 0.0 for s, p in zip(runs["splice"], runs["per_request"], strict=True)]
    ratio = splice["rps_median"] / direct["rps_median"] if direct["rps_median"] else 0.0
    weighting = statistics.median(pair_ratios)
    cpu_ratio = (
        per_request["cpu_us_per_req_median"] / splice["cpu_us_per_req_median"]
        if splice["cpu_us_per_req_median"] else 0.0
    )
    result = {
        "tool": tool,
        "concurrency": concurrency,
        "seconds": seconds,
        "repeat": repeat,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "direct": direct,
        "splice": splice,
        "per_request": per_request,
        "runs_rps": {m: [round(r["rps"], 1) for r in rs] for m, rs in runs.items()},
        "ratio": round(ratio, 3),
        "per_request_vs_splice_median": round(weighting, 3),
        "per_request_vs_splice_min": round(min(pair_ratios), 3),
        "per_request_vs_splice_of_medians": round(per_request["rps_median"] / splice["rps_median"], 3)
        if splice["rps_median"] else 0.0,
        "cpu_per_request_vs_splice": round(cpu_ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ok": ratio >= TARGET_RATIO,
        "weighting_ok": weighting >= 0.9,
    }
    n = f"{repeat} reps"
    print(f"{tool} client, {concurrency} connections, {seconds:g}s per load, {repeat} repetitions (splice and "
          f"per-request interleaved); load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print()
    print("| mode | req/s min | req/s median | p99 median | proxy CPU per request (median) | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, row in (("direct to the instance", direct), ("front port, splicing", splice),
                       ("front port, per-request weighting", per_request)):
        cpu = f"{row['cpu_us_per_req_median']:.0f} us" if row["cpu_us_per_req_median"] else "-"
        print(f"| {label} | {row['rps_min']:.0f} | {row['rps_median']:.0f} | {row['p99_ms_median']:.1f} ms | "
              f"{cpu} | {row['errors']} |")
    print()
    print("| ratio | value | target |")
    print("|---|---:|---|")
    print(f"| splice / direct (medians of {n}) | {ratio:.2f} | >= {TARGET_RATIO} |")
    print(f"| per-request / splice, median of the {repeat} paired runs | {weighting:.2f} | >= 0.9 (issue #17) |")
    print(f"| per-request / splice, worst paired run | {min(pair_ratios):.2f} | - |")
    print(f"| proxy CPU per request, per-request / splice | {cpu_ratio:.2f} | - |")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--client", choices=("raw", "httpx", "wrk"), default="raw")
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args()
    out = main(ns.seconds, ns.concurrency, ns.repeat, ns.client)
    if ns.json:
        print(json.dumps(out))
