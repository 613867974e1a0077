"""Canary on the local target: per-request weights at the front port, pauses, promotion,
analysis that aborts, and a runtime restart in the middle; all with live clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.base import NotFound, RolloutFailed, RolloutRequest, RolloutResult
from shipflow.activities.targets.local import target as local_target
from shipflow.activities.targets.local.runtime_client import RuntimeClient
from shipflow.activities.targets.local.target import LocalTarget, RolloutCancelled, rollout_key
from shipflow.api.app import create_app
from shipflow.infra.cli.main import app as cli
from shipflow.workflows.spec import Strategy
from tests.analysis.prometheus_stub import PrometheusStub, error, vector
from tests.api.conftest import TOKENS, api_client, bearer, token_settings
from tests.helpers import free_port, wait_until
from tests.local.support import Beats, RuntimeProcess, demo_service, make_target


def canary_request(image: str, steps: list[dict[str, Any]]) -> RolloutRequest:
    return RolloutRequest(
        run_id="run-1", step_id=f"deploy-{image}", service="web", image=image,
        strategy=Strategy.model_validate({"canary": {"steps": steps}}),
    )


class Connection:
    """One raw HTTP/1.1 keep-alive connection: light enough that 2,000 requests on a busy
    2-core machine measure the proxy, not the client."""

    def __init__(self, port: int):
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> tuple[int, str]:
        """(status, version) of one request; the connection is opened once and kept."""
        try:
            if self._streams is None:
                self._streams = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = self._streams
            writer.write(f"GET {path} HTTP/1.1\r\nHost: web\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(next(
                line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            ))
            body = await asyncio.wait_for(reader.readexactly(length), 10)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, StopIteration) as e:
            self.close()
            return 0, type(e).__name__
        return int(head.split(b" ", 2)[1]), json.loads(body).get("version", "?")

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


class KeepAlive:
    """Clients on keep-alive connections: (monotonic time, status, version) per request."""

    def __init__(self, port: int):
        self.port = port
        self.results: list[tuple[float, int, str]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def send(self, conn: Connection) -> None:
        status, version = await conn.get("/version")
        self.results.append((time.monotonic(), status, version))

    async def count(self, requests: int, connections: int = 8) -> list[tuple[float, int, str]]:
        """Send `requests` requests, each of `connections` keep-alive connections its share."""
        before = len(self.results)

        async def one_connection() -> None:
            conn = Connection(self.port)
            for _ in range(requests // connections):
                await self.send(conn)
            conn.close()

        await asyncio.gather(*(one_connection() for _ in range(connections)))
        return self.results[before:]

    async def _loop(self) -> None:
        conn = Connection(self.port)  # one keep-alive connection for the whole test
        while not self._stop.is_set():
            await self.send(conn)
            await asyncio.sleep(0.002)
        conn.close()

    def start(self, clients: int = 3) -> None:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def client_of(runtime: RuntimeProcess) -> RuntimeClient:
    return RuntimeClient(runtime.url, runtime.settings())


def paused(runtime: RuntimeProcess, rid: str) -> bool:
    """The rollout waits in a pause (False while it is not even created yet)."""
    try:
        return client_of(runtime).rollout("web", rid).paused
    except NotFound:
        return False


async def started(target: LocalTarget, req: RolloutRequest) -> asyncio.Future[RolloutResult]:
    return asyncio.get_running_loop().run_in_executor(None, target.rollout, req, Beats())


async def test_weight_20_sends_20_percent_of_keep_alive_requests_then_promotion(runtime: RuntimeProcess) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=2)})
    await asyncio.to_thread(target.rollout, canary_request("v1", [{"set_weight": 50}]), Beats())
    req = canary_request("v2", [{"set_weight": 20}, {"pause": {}}])
    rollout = await started(target, req)
    client = client_of(runtime)
    rid = rollout_key(req)
    await wait_until(lambda: paused(runtime, rid), timeout=30)
    view = client.rollout("web", rid)
    assert (view.weight, view.step_index, view.state) == (20, 1, "running")

    load = KeepAlive(port)
    answers = await load.count(2000)
    share = sum(1 for _, _, v in answers if v == "v2") / len(answers)
    assert all(status == 200 for _, status, _ in answers)
    assert len(answers) == 2000 and 0.17 <= share <= 0.23, share  # per request, not per connection

    client.promote("web", rid)
    result = await asyncio.wait_for(rollout, 30)
    assert result.strategy == "canary" and len(result.instances) == 2
    after = await load.count(40)
    assert {v for _, _, v in after} == {"v2"}


async def test_a_canary_with_5_percent_errors_is_aborted_by_analysis(runtime: RuntimeProcess) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=2)})
    await asyncio.to_thread(target.rollout, canary_request("v1", [{"set_weight": 50}]), Beats())
    load = KeepAlive(port)
    load.start()
    await wait_until(lambda: len(load.results) > 20)
    analysis = {"success_rate": 0.99, "interval": "1s", "count": 3, "min_requests": 5}
    req = canary_request("v2-flaky", [{"set_weight": 50}, {"analysis": analysis}])
    with pytest.raises(RolloutFailed) as failed:
        await asyncio.to_thread(target.rollout, req, Beats())
    aborted = time.monotonic()
    await wait_until(lambda: any(t > aborted + 1.0 for t, _, _ in load.results), timeout=30)
    await load.stop()

    assert "canary analysis failed" in str(failed.value) and "success rate" in str(failed.value)
    view = client_of(runtime).rollout("web", rollout_key(req))
    assert view.error_code == "analysis_failed" and view.analysis[-1]["phase"] == "failed"
    assert view.analysis[-1]["success_rate"] < 0.99 and view.analysis[-1]["requests"] >= 5
    errors = [(t, s, v) for t, s, v in load.results if s != 200]
    assert errors, "the flaky canary answered some requests with 500"
    assert {v for _, _, v in errors} == {"v2-flaky"}  # only the canary's share failed
    assert all(s == 200 and v == "v1" for t, s, v in load.results if t > aborted)
    assert runtime.pids("web", "v2-flaky") == set()  # the canary instance is gone
    assert await asyncio.to_thread(target.current_image, "web") == "v1"


async def test_a_runtime_restarted_mid_canary_keeps_its_weight_and_step(
    runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rollout below waits through the restart; past the grace it would hand the step's
    # retry a Transient. A restart takes 2 s on a quiet machine
    # and took over 10 s on a loaded one, which is not what this test is about.
    monkeypatch.setattr(local_target, "UNREACHABLE_GRACE_S", 60.0)
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=1)})
    await asyncio.to_thread(target.rollout, canary_request("v1", [{"set_weight": 50}]), Beats())
    req = canary_request("v2", [{"set_weight": 30}, {"pause": {}}, {"set_weight": 60}, {"pause": {}}])
    rollout = await started(target, req)
    rid = rollout_key(req)
    await wait_until(lambda: paused(runtime, rid), timeout=30)
    client_of(runtime).promote("web", rid)
    await wait_until(lambda: client_of(runtime).rollout("web", rid).weight == 60, timeout=30)
    await wait_until(lambda: paused(runtime, rid), timeout=30)

    runtime.kill(signal.SIGKILL)
    saved = json.loads((runtime.data_dir / "state.json").read_text())
    (ro,) = [r for r in saved["services"]["web"]["rollouts"] if r["id"] == rid]
    assert (ro["weight"], ro["step_index"]) == (60, 3)
    runtime.start()
    view = client_of(runtime).rollout("web", rid)
    assert (view.state, view.weight, view.step_index) == ("running", 60, 3)
    await wait_until(lambda: paused(runtime, rid), timeout=30)
    answers = await KeepAlive(port).count(200)
    assert 0.5 <= sum(1 for _, _, v in answers if v == "v2") / len(answers) <= 0.7
    client_of(runtime).promote("web", rid)
    result = await asyncio.wait_for(rollout, 30)
    assert result.image == "v2"
    assert client_of(runtime).rollout("web", rid).state == "succeeded"


async def test_promote_through_the_api_ends_the_pause_of_the_runs_canary(
    runtime: RuntimeProcess, settings: Settings
) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=1)})
    await asyncio.to_thread(target.rollout, canary_request("v1", [{"set_weight": 50}]), Beats())
    req = canary_request("v2", [{"set_weight": 25}, {"pause": {}}])
    rollout = await started(target, req)
    rid = rollout_key(req)
    await wait_until(lambda: paused(runtime, rid), timeout=30)

    api_settings = token_settings(settings.model_copy(update={"runtime_url": runtime.url}))
    async with api_client(api_settings) as http:
        refused = await http.post("/runs/run-1/promote", json={}, headers=bearer("viewer"))
        assert refused.status_code == 403
        # Runs with nothing waiting in the runtime are looked up: these are unknown to Temporal.
        other = await http.post("/runs/run-2/promote", json={}, headers=bearer("operator"))
        assert other.status_code == 404 and "no run" in other.json()["detail"]
        wrong_step = await http.post("/runs/run-1/promote", json={"step": "nope"}, headers=bearer("operator"))
        assert wrong_step.status_code == 404
        bad = await http.post("/runs/run-1/promote", json={"stp": "x"}, headers=bearer("operator"))
        assert bad.status_code == 422
        done = await http.post("/runs/run-1/promote", json={"step": "deploy-v2"}, headers=bearer("operator"))
        assert done.status_code == 200, done.text
        assert done.json()["service"] == "web" and done.json()["weight"] == 25
        result = await asyncio.wait_for(rollout, 30)
        assert result.image == "v2"
        again = await http.post("/runs/run-1/promote", headers=bearer("operator"))
        assert again.status_code == 404

    # The CLI, against the same API served on a real port.
    req3 = canary_request("v3", [{"set_weight": 10}, {"pause": {}}])
    rollout3 = await started(target, req3)
    await wait_until(lambda: paused(runtime, rollout_key(req3)), timeout=30)
    api_port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(api_settings), port=api_port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, timeout=30)
        argv = ["--api", f"http://127.0.0.1:{api_port}", "--token", TOKENS["operator"], "promote", "run-1"]
        said = await asyncio.to_thread(CliRunner().invoke, cli, argv)
        assert said.exit_code == 0, said.output
        assert "promoted web (deploy-v3 of run-1): weight 10%" in said.output
        assert (await asyncio.wait_for(rollout3, 30)).image == "v3"
        again = await asyncio.to_thread(CliRunner().invoke, cli, argv)
        assert again.exit_code != 0 and "no run" in again.output
    finally:
        server.should_exit = True
        await serving


async def test_a_cancelled_run_aborts_its_canary_back_to_stable_at_once(runtime: RuntimeProcess) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=1)})
    await asyncio.to_thread(target.rollout, canary_request("v1", [{"set_weight": 50}]), Beats())
    req = canary_request("v2", [{"set_weight": 50}, {"pause": {}}])
    beats = Beats(cancel_when=lambda beat: beat.get("paused"))
    with pytest.raises(RolloutCancelled):
        await asyncio.to_thread(target.rollout, req, beats)
    assert any(b.get("weight") == 50 for b in beats.beats)
    view = client_of(runtime).rollout("web", rollout_key(req))
    assert view.state == "aborted" and runtime.pids("web", "v2") == set()
    answers = await KeepAlive(port).count(40)
    assert {(s, v) for _, s, v in answers} == {(200, "v1")}


async def test_hostile_requests_at_a_per_request_front_port_only_lose_their_own_connection(
    runtime: RuntimeProcess,
) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=1)})
    await asyncio.to_thread(target.rollout, canary_request("v1", [{"set_weight": 50}]), Beats())
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"GET /version HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"POST /version HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /version HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort",
        b"POST /version HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = b""
        with contextlib.suppress(ConnectionError):  # the proxy may close before all is sent
            writer.write(raw)
            await writer.drain()
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 10)  # closed, with or without an answer
        assert not answer or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.1 5")), answer[:80]
        writer.close()
    answers = await KeepAlive(port).count(16, connections=2)
    assert {(s, v) for _, s, v in answers} == {(200, "v1")}


async def test_prometheus_analysis_with_an_env_url_aborts_a_canary_below_its_condition(
    runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The analysis URL's `${env.X}` is resolved on the worker; the query's verdict aborts."""
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=1)})
    await asyncio.to_thread(target.rollout, canary_request("v1", [{"set_weight": 50}]), Beats())
    with PrometheusStub(lambda q: vector("0.42")) as prom:
        monkeypatch.setenv("SF_TEST_PROM_PORT", prom.url.rsplit(":", 1)[1])
        prometheus = {"url": "http://127.0.0.1:${env.SF_TEST_PROM_PORT}", "query": 'sum(up{job="web"})',
                      "success_condition": "result[0] >= 0.95"}
        req = canary_request("v2", [{"set_weight": 50}, {"analysis": {"prometheus": prometheus, "interval": "100ms",
                                                                       "count": 2}}])
        with pytest.raises(RolloutFailed) as failed:
            await asyncio.to_thread(target.rollout, req, Beats())
        assert prom.queries == ['sum(up{job="web"})']
    assert "result[0] >= 0.95 not met (result [0.42])" in str(failed.value)
    view = client_of(runtime).rollout("web", rollout_key(req))
    assert view.error_code == "analysis_failed" and view.analysis[-1]["value"] == [0.42]
    assert runtime.pids("web", "v2") == set()
    assert await asyncio.to_thread(target.current_image, "web") == "v1"


async def test_a_prometheus_that_cannot_answer_aborts_after_errors_in_a_row_never_passes(
    runtime: RuntimeProcess,
) -> None:
    """An error is measured again (not a failure, not toward count); too many in a row abort."""
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=1)})
    await asyncio.to_thread(target.rollout, canary_request("v1", [{"set_weight": 50}]), Beats())
    with PrometheusStub(lambda q: error(503, "unavailable", "TSDB not ready")) as prom:
        prometheus = {"url": prom.url, "query": "up", "success_condition": "result[0] == 1"}
        analysis = {"prometheus": prometheus, "interval": "50ms", "count": 1, "failure_limit": 5,
                    "consecutive_error_limit": 2}
        req = canary_request("v2", [{"set_weight": 50}, {"analysis": analysis}])
        with pytest.raises(RolloutFailed) as failed:
            await asyncio.to_thread(target.rollout, req, Beats())
        assert prom.queries == ["up"] * 3
    assert "errored 3 times in a row (consecutive_error_limit 2)" in str(failed.value)
    view = client_of(runtime).rollout("web", rollout_key(req))
    assert view.error_code == "analysis_failed" and [m["phase"] for m in view.analysis] == ["error"] * 3
    assert runtime.pids("web", "v2") == set()
    assert await asyncio.to_thread(target.current_image, "web") == "v1"
