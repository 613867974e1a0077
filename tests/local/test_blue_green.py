"""Blue-green on the local target: preview port, one switch with zero failed requests, and an
abort during the scale-down delay that switches back at once."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from shipflow.activities.targets.base import RolloutRequest
from shipflow.activities.targets.local.target import RolloutCancelled, rollout_key
from shipflow.workflows.spec import Strategy
from tests.helpers import free_port, wait_until
from tests.local.support import Beats, RuntimeProcess, demo_service, make_target
from tests.local.test_canary import KeepAlive, client_of, paused


def bg_request(image: str, **blue_green: Any) -> RolloutRequest:
    return RolloutRequest(
        run_id="run-1", step_id=f"deploy-{image}", service="web", image=image,
        strategy=Strategy.model_validate({"blue_green": blue_green}),
    )


async def version_at(port: int) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        return str((await client.get(f"http://127.0.0.1:{port}/version")).json()["version"])


async def test_preview_then_one_switch_with_zero_failed_requests(runtime: RuntimeProcess) -> None:
    port, preview = free_port(), free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=2)})
    await asyncio.to_thread(target.rollout, bg_request("v1"), Beats())
    load = KeepAlive(port)
    load.start()
    await wait_until(lambda: len(load.results) > 20)
    req = bg_request("v2", preview_port=preview, scale_down_delay="1s")
    rollout = asyncio.get_running_loop().run_in_executor(None, target.rollout, req, Beats())
    rid = rollout_key(req)
    await wait_until(lambda: paused(runtime, rid), timeout=30)
    assert await version_at(preview) == "v2"  # the new version, before any user sees it
    assert await version_at(port) == "v1"
    assert len(runtime.pids("web", "v2")) == 2  # in full beside the old one
    client_of(runtime).promote("web", rid)
    await wait_until(lambda: any(v == "v2" for _, _, v in load.results), timeout=30)
    switched = next(t for t, _, v in load.results if v == "v2")
    result = await asyncio.wait_for(rollout, 30)
    await load.stop()

    assert result.strategy == "blue_green" and len(result.instances) == 2
    assert [r for r in load.results if r[1] != 200] == []
    assert {v for t, _, v in load.results if t > switched} == {"v2"}  # at once, not gradually
    assert runtime.pids("web", "v1") == set()


async def test_an_abort_during_the_scale_down_delay_switches_back_at_once(runtime: RuntimeProcess) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=1)})
    await asyncio.to_thread(target.rollout, bg_request("v1"), Beats())
    req = bg_request("v2", auto_promote_after="0.2s", scale_down_delay="60s")
    beats = Beats(cancel_when=lambda beat: beat.get("weight") == 100)
    load = KeepAlive(port)
    load.start()
    await wait_until(lambda: len(load.results) > 20)
    rollout = asyncio.get_running_loop().run_in_executor(None, target.rollout, req, beats)
    await wait_until(lambda: any(v == "v2" for _, _, v in load.results), timeout=30)
    try:
        await asyncio.wait_for(rollout, 30)
        raise AssertionError("the rollout should have been cancelled")
    except RolloutCancelled:
        pass
    back = asyncio.get_running_loop().time()
    await wait_until(lambda: sum(1 for t, _, _ in load.results if t > back) > 30, timeout=30)
    await load.stop()
    assert [r for r in load.results if r[1] != 200] == []
    assert {v for t, _, v in load.results if t > back} == {"v1"}
    assert runtime.pids("web", "v1") and runtime.pids("web", "v2") == set()
