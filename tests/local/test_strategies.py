"""Rollout strategies on the local target, measured with live clients through the front port.

A watcher polls the runtime during each rollout and records how many instances ran and
how many were ready, so the surge and unavailability bounds are checked, not assumed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.base import Invalid, RolloutFailed, RolloutRequest, RolloutResult
from shipflow.activities.targets.local.target import LocalTarget
from shipflow.workflows.spec import Strategy
from tests.helpers import free_port, wait_until
from tests.local.support import Beats, Load, RuntimeProcess, demo_service, make_target

STARTUP = {"DEMO_STARTUP_DELAY": "0.3"}


class Watch:
    """Polls `/services/{name}`: the most instances running, the fewest ready, per moment."""

    def __init__(self, runtime: RuntimeProcess, name: str):
        self.runtime, self.name = runtime, name
        self.running: list[int] = []
        self.ready: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        async with httpx.AsyncClient(headers=self.runtime.headers, timeout=5) as client:
            while True:
                svc = (await client.get(f"{self.runtime.url}/services/{self.name}")).json()
                live = [i for i in svc["instances"] if i["state"] != "stopping"]
                self.running.append(len(live))
                self.ready.append(sum(1 for i in live if i["ready"]))
                await asyncio.sleep(0.01)

    def __enter__(self) -> Watch:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def roll(target: LocalTarget, image: str, strategy: dict[str, Any] | None = None) -> RolloutResult:
    req = RolloutRequest(
        run_id="run-1",
        step_id=f"deploy-{image}",
        service="web",
        image=image,
        strategy=Strategy.model_validate(strategy) if strategy else None,
    )
    return await asyncio.to_thread(target.rollout, req, Beats())


async def test_rolling_surge_and_unavailable_bound_every_moment_with_zero_failures(
    runtime: RuntimeProcess,
) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=4, env=STARTUP)})
    await roll(target, "v1")
    load = Load(port)
    load.start()
    await wait_until(lambda: len(load.results) > 20)

    with Watch(runtime, "web") as default:
        one = await roll(target, "v2")  # the default: surge 1, unavailable 0
    with Watch(runtime, "web") as surge_two:
        two = await roll(target, "v3", {"rolling": {"max_surge": 2, "max_unavailable": 0}})
    with Watch(runtime, "web") as half_down:
        down = await roll(target, "v4", {"rolling": {"max_surge": 0, "max_unavailable": "50%"}})
    done = time.monotonic()
    await wait_until(lambda: any(r[0] > done + 0.2 for r in load.results))
    await load.stop()

    assert (one.strategy, one.rounds) == ("rolling", 4)
    assert max(default.running) <= 5 and min(default.ready) >= 4
    # Two new instances per round: half the rounds, never more than 6 running, 4 ready.
    assert two.rounds == 2 < one.rounds
    assert max(surge_two.running) <= 6 and min(surge_two.ready) >= 4
    assert max(surge_two.running) == 6, surge_two.running  # the surge was used
    # No surge, half may be down: two rounds, never more than 4 running, never under 2 ready.
    assert down.rounds == 2
    assert max(half_down.running) <= 4 and min(half_down.ready) >= 2
    # Zero failed requests while max_unavailable was 0; the 50% rollout drained too, so
    # every answer counts there as well.
    assert load.failures() == [], load.failures()[:5]
    assert load.versions_after(done) == {"v4"}
    assert {"v1", "v2", "v3", "v4"} <= {r[2] for r in load.results}


async def test_a_service_strategy_applies_and_a_step_strategy_wins(runtime: RuntimeProcess) -> None:
    port = free_port()
    service = {**demo_service(port, replicas=2), "strategy": {"rolling": {"max_surge": "100%"}}}
    target = make_target(runtime, {"web": service})
    await roll(target, "v1")
    assert (await roll(target, "v2")).rounds == 1  # the service's: surge 2 of 2 at once
    assert (await roll(target, "v3", {"rolling": {"max_surge": 1}})).rounds == 2


async def test_recreate_stops_the_old_before_the_new_and_reports_the_gap(runtime: RuntimeProcess) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, env={"DEMO_STARTUP_DELAY": "0.5"})})
    await roll(target, "v1")
    old = runtime.pids("web")
    load = Load(port)
    load.start()
    await wait_until(lambda: len(load.results) > 20)
    result = await roll(target, "v2", {"recreate": {}})
    done = time.monotonic()
    await wait_until(lambda: any(r[0] > done + 0.2 and r[2] == "v2" for r in load.results))
    await load.stop()

    assert result.strategy == "recreate" and result.downtime_s is not None
    last_v1 = max(t for t, ok, what in load.results if ok and what == "v1")
    first_v2 = min(t for t, ok, what in load.results if ok and what == "v2")
    assert last_v1 < first_v2  # never both at once: the old one stopped first
    client_gap = first_v2 - last_v1
    # The new instance needs its 0.5 s startup after the old one is gone: a real gap,
    # which the client saw too (within the load client's own polling slack).
    assert result.downtime_s >= 0.4
    assert abs(client_gap - result.downtime_s) < 1.0, (client_gap, result.downtime_s)
    assert all(pid not in runtime.pids("web") for pid in old)
    failed_at = [t for t, ok, _ in load.results if not ok]
    assert all(last_v1 - 0.5 <= t <= first_v2 + 0.5 for t in failed_at)  # only in the gap


async def test_a_recreate_whose_new_version_never_gets_ready_starts_the_old_one_again(
    runtime: RuntimeProcess,
) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=2, deadline="1.5s")})
    await roll(target, "v1")
    with pytest.raises(RolloutFailed):
        await roll(target, "v2-broken", {"recreate": {}})
    await wait_until(lambda: len([i for i in runtime.service("web")["instances"] if i["ready"]]) == 2)
    assert {i["image"] for i in runtime.service("web")["instances"]} == {"v1"}
    answer = httpx.get(f"http://127.0.0.1:{port}/version", timeout=5)
    assert answer.json()["version"] == "v1"


@pytest.mark.parametrize("field", ["active_service", "preview_service"])
def test_kubernetes_service_names_are_refused_on_the_local_target(field: str, tmp_path: Any) -> None:
    """Refused before the runtime is asked (none runs here): a name of a Kubernetes Service
    means nothing at the front port."""
    target = LocalTarget(
        {"kind": "local", "services": {"web": demo_service(free_port())}},
        Settings(data_dir=tmp_path, runtime_url="http://127.0.0.1:9"),
    )
    strategy = Strategy.model_validate({"blue_green": {field: "web"}})
    req = RolloutRequest(run_id="r", step_id="d", service="web", image="v2", strategy=strategy)
    with pytest.raises(Invalid) as refused:
        target.rollout(req, Beats())
    assert f"strategy.blue_green.{field} names a Kubernetes Service" in str(refused.value)
