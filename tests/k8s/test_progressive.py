"""Canary and blue-green on the Kubernetes target, through the API emulator: the extra
Deployment and Services they create, the durable phase a lost worker resumes from, the
abort that leaves the stable version serving everything, and the cleanup at the end."""

from __future__ import annotations

import json
import secrets
import threading
from typing import Any

import pytest
from kubernetes import client
from temporalio.exceptions import ApplicationError

from shipflow.activities.targets.base import (
    Invalid,
    NotFound,
    RolloutFailed,
    RolloutRequest,
    RolloutResult,
    Transient,
)
from shipflow.activities.targets.k8s_errors import Cancelled
from shipflow.activities.targets.k8s_progressive import (
    PAUSED,
    PROMOTE,
    STATE,
    canary_beside,
    canary_replicas,
    canary_split,
    promote_paused,
)
from shipflow.activities.targets.kubernetes import KubernetesTarget
from shipflow.workflows.spec import Strategy
from tests.analysis.prometheus_stub import PrometheusStub, error, vector
from tests.helpers import wait_until_sync
from tests.k8s.conftest import Cluster, RecordingProgress, SimulatedCrash
from tests.k8s.emulator import KubeEmulator
from tests.k8s.test_target import SETTINGS


def request(strategy: dict[str, Any], image: str, run_id: str | None = None) -> RolloutRequest:
    return RolloutRequest(
        run_id=run_id or f"run-{secrets.token_hex(3)}", step_id="deploy", service="api", image=image,
        strategy=Strategy.model_validate(strategy),
    )


def roll(cluster: Cluster, req: RolloutRequest, progress: RecordingProgress) -> RolloutResult:
    return KubernetesTarget(cluster.spec, SETTINGS).rollout(req, progress)


def exists(cluster: Cluster, kind: str, name: str) -> bool:
    try:
        if kind == "deployments":
            client.AppsV1Api(cluster.api).read_namespaced_deployment(name, cluster.namespace)
        else:
            client.CoreV1Api(cluster.api).read_namespaced_service(name, cluster.namespace)
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def replicas_seen(emulator: KubeEmulator, namespace: str, name: str) -> list[int]:
    """Every `spec.replicas` the Deployment had, in order, from the emulator's history."""
    seen: list[int] = []
    for _, resource, _, obj in emulator.events:
        meta = obj["metadata"]
        if resource == "deployments" and (meta["namespace"], meta["name"]) == (namespace, name):
            value = obj["spec"]["replicas"]
            if not seen or seen[-1] != value:
                seen.append(value)
    return seen


def test_canary_sizes_by_weight_analyses_and_promotes(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=4)
    with PrometheusStub(lambda q: vector("0.99")) as prom:
        strategy = {"canary": {"steps": [
            {"set_weight": 20},
            {"analysis": {"prometheus": {"url": prom.url, "query": "ok_ratio", "success_condition": "result[0] >= 0.95"},
                          "interval": "50ms", "count": 2}},
            {"pause": {"duration": "100ms"}},
            {"set_weight": 50},
        ]}}
        progress = RecordingProgress()
        result = roll(cluster, request(strategy, new), progress)
        assert prom.queries == ["ok_ratio", "ok_ratio"]
    assert result.strategy == "canary" and result.image == new and result.previous_image == old
    assert replicas_seen(emulator, cluster.namespace, "api-canary") == [0, 1, 2]  # 1 of 5 pods, then 2 of 4
    assert not exists(cluster, "deployments", "api-canary")  # cleaned up
    stable = cluster.deployment("api")
    assert stable.spec.template.spec.containers[0].image == new and stable.spec.replicas == 4
    assert replicas_seen(emulator, cluster.namespace, "api") == [4, 2, 4]  # 50%: 2 and 2; promoted: 4
    canary = next(o for _, r, k, o in emulator.events if r == "deployments" and o["metadata"]["name"] == "api-canary")
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert labels == {"app": "api", "shipflow/track": "canary"}  # the Service's app=api selects them
    weights = [b.get("weight") for b in progress.beats if b.get("canary_share")]
    assert {b["canary_share"] for b in progress.beats if b.get("canary_share")} == {0.2, 0.5} and 50 in weights
    assert [canary_replicas(4, w) for w in (0, 10, 20, 25, 49, 50, 100)] == [0, 1, 1, 1, 2, 2, 4]
    splits = [canary_split(4, w) for w in (0, 20, 50, 75, 80, 100)]
    assert splits == [(0, 4), (1, 4), (2, 2), (3, 1), (4, 1), (4, 0)]
    assert canary_split(1, 20) == canary_split(1, 90) == (1, 1)  # one replica: a pod on each side
    assert canary_split(10, 25) == (3, 8) and canary_split(0, 50) == (0, 0)


def ready_of(emulator: KubeEmulator, namespace: str, names: tuple[str, ...]) -> list[dict[str, int]]:
    """The ready pods of each Deployment after every event, until one of them is deleted."""
    ready = {name: 0 for name in names}
    seen: list[dict[str, int]] = []
    for _, resource, kind, obj in emulator.events:
        meta = obj["metadata"]
        if resource != "deployments" or meta["namespace"] != namespace or meta["name"] not in names:
            continue
        if kind == "DELETED":
            break
        ready[meta["name"]] = (obj.get("status") or {}).get("readyReplicas") or 0
        seen.append(dict(ready))
    return seen


def test_canary_above_half_scales_the_stable_down_and_a_lost_worker_resumes(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    """Argo's canary without traffic routing: above 50% the stable shrinks as the canary grows."""
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=4)
    strategy = {"canary": {"steps": [{"set_weight": 75}, {"pause": {"duration": "300ms"}}, {"set_weight": 100}]}}
    req = request(strategy, new)
    first = RecordingProgress(crash_when=lambda d: d.get("paused"))  # killed in the pause, at 75%
    with pytest.raises(SimulatedCrash):
        roll(cluster, req, first)
    assert (cluster.deployment("api-canary").spec.replicas, cluster.deployment("api").spec.replicas) == (3, 1)
    state = json.loads(cluster.deployment("api-canary").metadata.annotations[STATE])
    assert (state["weight"], state["stable_replicas"]) == (75, 4)  # the original size is durable
    assert any(b.get("canary_share") == 0.75 for b in first.beats)
    second = RecordingProgress(resume=first.beats[-1])
    result = roll(cluster, req, second)  # a new worker: the stable now has 1 pod, the state says 4
    assert result.image == new and result.previous_image == old
    assert replicas_seen(emulator, cluster.namespace, "api-canary") == [0, 3, 4]
    assert replicas_seen(emulator, cluster.namespace, "api") == [4, 1, 0, 4]  # 100%: none, then promoted
    assert any(b.get("canary_share") == 1.0 for b in second.beats)
    stable = cluster.deployment("api")
    assert stable.spec.replicas == 4 and stable.spec.template.spec.containers[0].image == new
    assert stable.status.ready_replicas == 4 and not exists(cluster, "deployments", "api-canary")
    counts = ready_of(emulator, cluster.namespace, ("api", "api-canary"))
    first_full = next(i for i, c in enumerate(counts) if c["api"] == 4)
    assert min(sum(c.values()) for c in counts[first_full:]) >= 4  # never below the original capacity


def test_an_abort_above_half_gives_the_stable_its_size_back(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=4)
    with PrometheusStub(lambda q: vector("0.5")) as prom:
        analysis = {"prometheus": {"url": prom.url, "query": "ok", "success_condition": "result[0] >= 0.95"},
                    "interval": "50ms", "count": 2}
        strategy = {"canary": {"steps": [{"set_weight": 80}, {"analysis": analysis}, {"set_weight": 100}]}}
        with pytest.raises(RolloutFailed) as failed:
            roll(cluster, request(strategy, new), RecordingProgress())
    assert "all traffic is on the stable version" in str(failed.value)
    assert replicas_seen(emulator, cluster.namespace, "api") == [4, 1, 4]  # 80%: 4 and 1; abort: 4 again
    stable = cluster.deployment("api")
    assert stable.spec.replicas == 4 and stable.spec.template.spec.containers[0].image == old
    assert not exists(cluster, "deployments", "api-canary")


def test_failed_analysis_aborts_at_once_and_leaves_the_stable_untouched(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=3)
    with PrometheusStub(lambda q: vector("0.80")) as prom:
        strategy = {"canary": {"steps": [
            {"set_weight": 25},
            {"analysis": {"prometheus": {"url": prom.url, "query": "ok", "success_condition": "result[0] >= 0.95"},
                          "interval": "50ms", "count": 3, "failure_limit": 1}},
            {"set_weight": 50},
        ]}}
        with pytest.raises(RolloutFailed) as failed:
            roll(cluster, request(strategy, new), RecordingProgress())
        assert len(prom.queries) == 2  # the second failure ended it
    message = str(failed.value)
    assert "failed 2 of 2 measurements (failure_limit 1)" in message and "0.8" in message
    assert "all traffic is on the stable version" in message and not failed.value.retryable
    assert not exists(cluster, "deployments", "api-canary")
    assert emulator.patches_of(cluster.namespace, "api") == []  # the stable was never touched
    assert [d["name"] for d in emulator.deletes if d["resource"] == "deployments"] == ["api-canary"]


def test_a_lost_worker_resumes_the_canary_at_its_durable_step(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    with PrometheusStub(lambda q: vector("1")) as prom:
        strategy = {"canary": {"steps": [
            {"set_weight": 30},
            {"analysis": {"prometheus": {"url": prom.url, "query": "ok", "success_condition": "result >= 1"},
                          "interval": "50ms", "count": 2}},
            {"pause": {"duration": "400ms"}},
            {"set_weight": 50},
        ]}}
        req = request(strategy, new)
        first = RecordingProgress(crash_when=lambda d: d.get("paused"))  # killed in the pause
        with pytest.raises(SimulatedCrash):
            roll(cluster, req, first)
        state = json.loads(cluster.deployment("api-canary").metadata.annotations[STATE])
        assert (state["index"], state["weight"], "pause_until" in state) == (2, 30, True)
        second = RecordingProgress(resume=first.beats[-1])
        result = roll(cluster, req, second)
        assert len(prom.queries) == 2  # the finished analysis did not run again
    assert result.previous_image == old and cluster.deployment("api").spec.template.spec.containers[0].image == new
    assert emulator.image_patches(cluster.namespace, "api") == [new]
    creates = [r for r in emulator.requests if r == ("create", f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments")]
    assert len(creates) == 2  # the stable's own, and the canary once: adopted, not created again
    assert not any(b.get("weight") == 0 for b in second.beats)  # never back to an earlier step
    assert not exists(cluster, "deployments", "api-canary")


def test_an_indefinite_pause_waits_for_promotion_and_a_cancel_aborts(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    strategy = {"canary": {"steps": [{"set_weight": 40}, {"pause": {}}, {"pause": {}}]}}
    progress = RecordingProgress()
    outcome: list[BaseException | RolloutResult] = []

    def run() -> None:
        try:
            outcome.append(roll(cluster, request(strategy, new), progress))
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    apps = client.AppsV1Api(cluster.api)

    def paused_at() -> str | None:
        dep = cluster.deployment("api-canary") if exists(cluster, "deployments", "api-canary") else None
        return (dep.metadata.annotations or {}).get(PAUSED) if dep else None

    assert wait_until_sync(lambda: paused_at() == "1", what="the first pause")
    apps.patch_namespaced_deployment("api-canary", cluster.namespace, {"metadata": {"annotations": {PROMOTE: "1"}}})
    assert wait_until_sync(lambda: paused_at() == "2", what="the second pause")
    progress.cancel_when = lambda d: True
    worker.join(timeout=30)
    (error,) = outcome
    assert isinstance(error, Cancelled) and "all traffic is on the stable version" in str(error)
    assert not exists(cluster, "deployments", "api-canary")
    assert cluster.deployment("api").spec.template.spec.containers[0].image == old


def test_blue_green_previews_switches_the_selector_and_cleans_up(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    emulator.add_service(cluster.namespace, "api", {"app": "api"})
    strategy = {"blue_green": {"scale_down_delay": "300ms"}}
    progress = RecordingProgress()
    outcome: list[Any] = []
    req = request(strategy, new)
    worker = threading.Thread(target=lambda: outcome.append(roll(cluster, req, progress)))
    worker.start()
    core = client.CoreV1Api(cluster.api)
    wait_until_sync(lambda: any(b.get("paused") for b in progress.beats), what="green ready, waiting")
    preview = core.read_namespaced_service("api-preview", cluster.namespace)
    assert preview.spec.selector == {"app": "api-green"} and preview.spec.ports[0].port == 80
    assert core.read_namespaced_service("api", cluster.namespace).spec.selector == {"app": "api"}
    green = cluster.deployment("api-green")
    assert green.spec.replicas == 2 and green.status.ready_replicas == 2
    assert green.spec.template.spec.containers[0].image == new
    target = KubernetesTarget(cluster.spec, SETTINGS)
    with pytest.raises(NotFound):  # another run's step finds nothing of its own to promote
        promote_paused(target, "api", "run-other", "deploy")
    assert promote_paused(target, "api", req.run_id, "deploy") == ("api-green", "switch")  # as `shipflow promote`
    assert cluster.deployment("api-green").metadata.annotations[PROMOTE] == "switch"
    worker.join(timeout=30)
    (result,) = outcome
    assert isinstance(result, RolloutResult) and result.strategy == "blue_green"
    selectors = [p["body"]["spec"]["selector"] for p in emulator.patches_of(cluster.namespace, "api", "services")]
    assert selectors == [{"app": "api-green"}, {"app": "api"}]  # one switch, then back to the updated stable
    assert cluster.deployment("api").spec.template.spec.containers[0].image == new
    assert not exists(cluster, "deployments", "api-green") and not exists(cluster, "services", "api-preview")


def test_blue_green_abort_after_the_switch_switches_back(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    emulator.add_service(cluster.namespace, "api", {"app": "api"})
    strategy = {"blue_green": {"auto_promote_after": "0s", "scale_down_delay": "1h"}}
    switched = lambda d: d.get("phase") == "switched" and "switched to the green" in str(d.get("message"))  # noqa: E731
    with pytest.raises(Cancelled) as cancelled:
        roll(cluster, request(strategy, new), RecordingProgress(cancel_when=switched))
    assert "all traffic is on the stable version" in str(cancelled.value)
    selectors = [p["body"]["spec"]["selector"] for p in emulator.patches_of(cluster.namespace, "api", "services")]
    assert selectors == [{"app": "api-green"}, {"app": "api"}]
    assert emulator.patches_of(cluster.namespace, "api") == []  # the old version kept serving as it was
    assert not exists(cluster, "deployments", "api-green") and not exists(cluster, "services", "api-preview")


def test_what_kubernetes_cannot_do_is_refused_before_any_change(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old)
    for strategy, field in (
        ({"canary": {"steps": [{"set_weight": 10}, {"analysis": {"success_rate": 0.99}}]}}, "steps[1].analysis"),
        ({"blue_green": {"preview_port": 9001}}, "preview_port"),
    ):
        with pytest.raises(Invalid) as refused:
            roll(cluster, request(strategy, new), RecordingProgress())
        assert field in str(refused.value) and not refused.value.retryable
    with pytest.raises(NotFound) as no_service:
        roll(cluster, request({"blue_green": {}}, new), RecordingProgress())
    assert "blue_green switches services/api, the Service in front of deployments/api" in str(no_service.value)
    assert emulator.patches == [] and not exists(cluster, "deployments", "api-canary")


def test_an_api_outage_mid_canary_aborts_and_stays_retryable(cluster: Cluster, emulator: KubeEmulator) -> None:
    """The step may have no attempt left: a canary never keeps its share behind a failed step."""
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    emulator.fail("patch", r"/deployments/api-canary$", 503, times=50)
    with pytest.raises(Transient) as failed:
        roll(cluster, request({"canary": {"steps": [{"set_weight": 50}]}}, new), RecordingProgress())
    assert failed.value.retryable and "canary aborted: all traffic is on the stable version" in str(failed.value)
    assert not exists(cluster, "deployments", "api-canary")
    assert emulator.patches_of(cluster.namespace, "api") == []


def test_env_in_an_analysis_url_is_resolved_on_the_worker(
    cluster: Cluster, emulator: KubeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=1)

    def strategy(url: str) -> dict[str, Any]:
        prometheus = {"url": url, "query": "up", "success_condition": "result[0] == 1"}
        return {"canary": {"steps": [{"set_weight": 10}, {"analysis": {"prometheus": prometheus, "interval": "10ms",
                                                                        "count": 1}}]}}

    monkeypatch.delenv("SF_TEST_NOPE", raising=False)
    with pytest.raises(ApplicationError) as missing:
        roll(cluster, request(strategy("http://${env.SF_TEST_NOPE}:9090"), new), RecordingProgress())
    assert "SF_TEST_NOPE is not set on the worker" in str(missing.value) and missing.value.non_retryable
    assert emulator.patches == [] and not exists(cluster, "deployments", "api-canary")
    with PrometheusStub(lambda q: vector("1")) as prom:
        monkeypatch.setenv("SF_TEST_PROM_PORT", prom.url.rsplit(":", 1)[1])
        result = roll(cluster, request(strategy("http://127.0.0.1:${env.SF_TEST_PROM_PORT}"), new), RecordingProgress())
        assert prom.queries == ["up"] and result.image == new


def test_a_lost_worker_after_the_blue_green_switch_resumes_without_a_second_green(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    emulator.add_service(cluster.namespace, "api", {"app": "api"})
    req = request({"blue_green": {"auto_promote_after": "0s", "scale_down_delay": "300ms"}}, new)
    switched = lambda d: "switched to the green" in str(d.get("message"))  # noqa: E731
    first = RecordingProgress(crash_when=switched)
    with pytest.raises(SimulatedCrash):
        roll(cluster, req, first)
    core = client.CoreV1Api(cluster.api)
    assert core.read_namespaced_service("api", cluster.namespace).spec.selector == {"app": "api-green"}
    state = json.loads(cluster.deployment("api-green").metadata.annotations[STATE])
    assert state["phase"] == "switched"
    result = roll(cluster, req, RecordingProgress(resume=first.beats[-1]))
    assert result.strategy == "blue_green" and result.previous_image == old
    creates = [r for r in emulator.requests if r[0] == "create"]
    assert len(creates) == 3  # the stable (by the test), the green and the preview: once each
    assert core.read_namespaced_service("api", cluster.namespace).spec.selector == {"app": "api"}
    assert cluster.deployment("api").spec.template.spec.containers[0].image == new
    assert not exists(cluster, "deployments", "api-green") and not exists(cluster, "services", "api-preview")


def test_a_broken_query_never_passes_a_canary_and_errors_are_measured_again(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    """Errors count against consecutive_error_limit (default 4), not as failures, not toward count."""
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    query = {"query": "sum(rate(x[1m])", "success_condition": "result[0] >= 0.95"}
    with PrometheusStub(lambda q: error(400, "bad_data", "1:16: parse error: unclosed left parenthesis")) as prom:
        analysis = {"prometheus": {"url": prom.url, **query}, "interval": "10ms", "count": 1, "failure_limit": 9}
        strategy = {"canary": {"steps": [{"set_weight": 50}, {"analysis": analysis}]}}
        with pytest.raises(RolloutFailed) as failed:
            roll(cluster, request(strategy, new), RecordingProgress())
        assert len(prom.queries) == 5  # measured again after each error, until 5 in a row
    message = str(failed.value)
    assert "errored 5 times in a row (consecutive_error_limit 4)" in message and "bad_data" in message
    assert "all traffic is on the stable version" in message and not exists(cluster, "deployments", "api-canary")
    assert cluster.deployment("api").spec.template.spec.containers[0].image == old
    flaky = iter([error(503, "unavailable", "TSDB not ready"), vector("0.99")] * 2)
    with PrometheusStub(lambda q: next(flaky)) as prom:
        analysis = {"prometheus": {"url": prom.url, **query}, "interval": "10ms", "count": 2,
                    "consecutive_error_limit": 1}
        progress = RecordingProgress()
        result = roll(cluster, request({"canary": {"steps": [{"set_weight": 50}, {"analysis": analysis}]}}, new),
                      progress)
        assert len(prom.queries) == 4  # error, success, error, success: 2 that count
    assert result.image == new
    phases = [b["analysis"]["phase"] for b in progress.beats if "analysis" in b and "/2:" in str(b.get("message"))]
    assert phases[-1] == "successful" and "error" in phases


def test_an_api_blip_mid_canary_with_an_attempt_left_keeps_it_for_the_next_attempt(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    """Argo keeps a canary's state across API blips: no finished weight, analysis or pause
    runs again, the traffic split stays as it was, and the next attempt goes on from there."""
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=4)
    stable_patch = rf"/namespaces/{cluster.namespace}/deployments/api$"

    def answer(query: str) -> Any:
        if len(prom.queries) == 2:  # the analysis is done: the stable's next scale-down fails
            emulator.fail("patch", stable_patch, 503, times=4)  # every try of one call
        return vector("1")

    with PrometheusStub(answer) as prom:
        strategy = {"canary": {"steps": [
            {"set_weight": 25},
            {"analysis": {"prometheus": {"url": prom.url, "query": "ok", "success_condition": "result[0] >= 1"},
                          "interval": "50ms", "count": 2}},
            {"pause": {"duration": "50ms"}},
            {"set_weight": 50},
            {"set_weight": 75},
        ]}}
        req = request(strategy, new).model_copy(update={"another_attempt": True})
        first = RecordingProgress()
        with pytest.raises(Transient) as blip:
            roll(cluster, req, first)
        message = str(blip.value)
        assert "503" in message and "canary kept at canary step 3 (weight 50%)" in message
        assert blip.value.retryable and "aborted" not in message
        # Left as it was: the canary grew to its 50% share; the stable kept its 25% size.
        assert (cluster.deployment("api-canary").spec.replicas, cluster.deployment("api").spec.replicas) == (2, 3)
        state = json.loads(cluster.deployment("api-canary").metadata.annotations[STATE])
        assert (state["index"], state["weight"], state["previous_image"]) == (3, 50, old)
        second = RecordingProgress()  # a retry after a failure gets no heartbeat back
        result = roll(cluster, req, second)
        assert len(prom.queries) == 2  # the finished analysis did not run again
    assert not any(b.get("paused") for b in second.beats)  # nor the finished pause
    assert {b.get("canary_step") for b in second.beats if "canary_step" in b} == {3, 4}
    assert result.previous_image == old and result.image == new
    assert replicas_seen(emulator, cluster.namespace, "api-canary") == [0, 1, 2, 3]
    assert replicas_seen(emulator, cluster.namespace, "api") == [4, 3, 2, 1, 4]
    creates = [r for r in emulator.requests if r == ("create", f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments")]
    assert len(creates) == 2  # the stable's own, and the canary once
    assert emulator.image_patches(cluster.namespace, "api") == [new]
    assert not exists(cluster, "deployments", "api-canary")


def test_a_blip_on_the_last_attempt_or_a_cancel_aborts_even_with_attempts_left(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    strategy = {"canary": {"steps": [{"set_weight": 50}, {"pause": {}}]}}
    req = request(strategy, new).model_copy(update={"another_attempt": True})
    kept = RecordingProgress(crash_when=lambda d: d.get("paused"))
    with pytest.raises(SimulatedCrash):  # a canary at 50%, waiting for an operator
        roll(cluster, req, kept)
    # The last attempt: a blip now aborts, all traffic back on the stable at its size.
    emulator.fail("patch", r"/deployments/api-canary$", 503, times=4)
    with pytest.raises(Transient) as last:
        roll(cluster, req.model_copy(update={"another_attempt": False}), RecordingProgress())
    assert "canary aborted: all traffic is on the stable version" in str(last.value)
    assert not exists(cluster, "deployments", "api-canary") and cluster.deployment("api").spec.replicas == 2
    # A cancel aborts although another attempt would follow.
    other = request(strategy, new).model_copy(update={"another_attempt": True})
    with pytest.raises(Cancelled) as cancelled:
        roll(cluster, other, RecordingProgress(cancel_when=lambda d: d.get("paused")))
    assert "all traffic is on the stable version" in str(cancelled.value)
    assert not exists(cluster, "deployments", "api-canary") and cluster.deployment("api").spec.replicas == 2


def test_an_autoscaled_stable_keeps_its_size_and_the_canary_is_sized_beside_it(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    """Scaling an autoscaled stable down fights its HPA: the canary grows beside it instead,
    against the size the HPA chose at each weight, and the output says so."""
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=4)
    emulator.add_hpa(cluster.namespace, "api-hpa", "api", min_replicas=4, max_replicas=8)
    strategy = {"canary": {"steps": [{"set_weight": 20}, {"set_weight": 50}, {"pause": {}}]}}
    # Cancelled in its pause: the abort deletes the canary and leaves the stable's size alone.
    cancelled = RecordingProgress(cancel_when=lambda d: d.get("paused"))
    with pytest.raises(Cancelled):
        roll(cluster, request(strategy, new), cancelled)
    assert [b["canary_replicas"] for b in cancelled.beats if "canary_share" in b][-1] == 4  # 4 of 8 pods: 50%
    assert not exists(cluster, "deployments", "api-canary")
    assert emulator.patches_of(cluster.namespace, "api") == []  # never scaled, never touched

    def load_after_the_first_weight(details: dict[str, Any]) -> bool:
        if details.get("canary_share") == 0.2 and emulator.hpa_wants.get((cluster.namespace, "api-hpa")) is None:
            emulator.hpa_wants[(cluster.namespace, "api-hpa")] = 6  # the HPA scales the stable up
            wait_until_sync(lambda: cluster.deployment("api").spec.replicas == 6, what="the HPA scales up")
        return False

    strategy = {"canary": {"steps": [{"set_weight": 20}, {"set_weight": 50}, {"pause": {"duration": "10ms"}}]}}
    progress = RecordingProgress(cancel_when=load_after_the_first_weight)
    result = roll(cluster, request(strategy, new), progress)
    sized = [(b["canary_replicas"], b["stable_replicas"]) for b in progress.beats if "canary_share" in b]
    assert sized[0] == (1, 4) and sized[-1] == (6, 6)  # 1 beside 4 (20%), then 6 beside 6 (50%)
    assert progress.beats[-1]["autoscaler"] == "horizontalpodautoscalers/api-hpa"
    assert "the stable's size is left to horizontalpodautoscalers/api-hpa" in str(
        next(b["message"] for b in progress.beats if b.get("canary_share") == 0.5)
    )
    assert result.instances[-1] == {"canary_weight": 50, "stable_replicas": "left to horizontalpodautoscalers/api-hpa"}
    # Shipflow patched the stable's image only; its size is the HPA's (6).
    assert emulator.image_patches(cluster.namespace, "api") == [new]
    assert all("replicas" not in p["body"].get("spec", {}) for p in emulator.patches_of(cluster.namespace, "api"))
    stable = cluster.deployment("api")
    assert stable.spec.replicas == 6 and stable.spec.template.spec.containers[0].image == new
    assert not exists(cluster, "deployments", "api-canary")
    assert [canary_beside(4, w, most=8) for w in (0, 10, 20, 50, 75, 100)] == [0, 1, 1, 4, 8, 8]


def test_blue_green_beside_an_autoscaled_stable_sizes_green_like_it(cluster: Cluster, emulator: KubeEmulator) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    emulator.add_service(cluster.namespace, "api", {"app": "api"})
    emulator.add_hpa(cluster.namespace, "api", "api", min_replicas=3, max_replicas=5)
    wait_until_sync(lambda: cluster.deployment("api").spec.replicas == 3, what="the HPA scales the stable to 3")
    strategy = {"blue_green": {"auto_promote_after": "0s", "scale_down_delay": "0s"}}
    result = roll(cluster, request(strategy, new), RecordingProgress())
    green = next(o for _, r, k, o in emulator.events if r == "deployments" and o["metadata"]["name"] == "api-green")
    assert green["spec"]["replicas"] == 3
    assert result.instances[-1] == {"green_replicas": 3, "stable_replicas": "left to horizontalpodautoscalers/api"}
    assert all("replicas" not in p["body"].get("spec", {}) for p in emulator.patches_of(cluster.namespace, "api"))


def test_blue_green_switches_the_named_active_service_and_points_the_named_preview(
    cluster: Cluster, emulator: KubeEmulator
) -> None:
    """The Service in front of deployments/api is `web`; an Ingress points at `web-next`:
    the switch patches `web`, the preview is `web-next` pointed at green and put back."""
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=2)
    emulator.add_service(cluster.namespace, "web", {"app": "api"})
    emulator.add_service(cluster.namespace, "web-next", {"app": "api"})
    strategy = {"blue_green": {"active_service": "web", "preview_service": "web-next", "scale_down_delay": "0s"}}
    core = client.CoreV1Api(cluster.api)
    seen: list[dict[str, str]] = []

    def look(details: dict[str, Any]) -> bool:
        if details.get("paused") and not seen:
            seen.append(core.read_namespaced_service("web-next", cluster.namespace).spec.selector)
            seen.append(core.read_namespaced_service("web", cluster.namespace).spec.selector)
            promote_paused(KubernetesTarget(cluster.spec, SETTINGS), "api", req.run_id, "deploy")
        return False

    req = request(strategy, new)
    result = roll(cluster, req, RecordingProgress(cancel_when=look))
    assert result.strategy == "blue_green" and result.image == new
    assert seen == [{"app": "api-green"}, {"app": "api"}]  # the preview on green, the active not yet
    web = [p["body"]["spec"]["selector"] for p in emulator.patches_of(cluster.namespace, "web", "services")]
    assert web == [{"app": "api-green"}, {"app": "api"}]
    assert core.read_namespaced_service("web-next", cluster.namespace).spec.selector == {"app": "api"}  # put back
    assert not exists(cluster, "services", "api-preview") and not exists(cluster, "deployments", "api-green")
    assert exists(cluster, "services", "web-next")  # the user's: never created, never deleted
    assert not [r for r in emulator.requests if r[0] == "create" and r[1].endswith("/services")]


@pytest.mark.parametrize(
    ("services", "named", "message"),
    [
        ({}, {"active_service": "web"}, "strategy.blue_green.active_service: services/web does not exist"),
        ({"web": {"app": "other"}}, {"active_service": "web"},
         "strategy.blue_green.active_service: blue_green needs services/web to select the pods of deployments/api"),
        ({"api": {"app": "api"}}, {"preview_service": "next"},
         "strategy.blue_green.preview_service: services/next does not exist"),
        ({"api": {"app": "api"}, "next": {"app": "api", "tier": "edge"}}, {"preview_service": "next"},
         "strategy.blue_green.preview_service: blue_green needs services/next to select the pods"),
    ],
    ids=["active-missing", "active-selects-other-pods", "preview-missing", "preview-selects-other-pods"],
)
def test_a_named_service_that_is_missing_or_selects_other_pods_is_refused_naming_the_field(
    cluster: Cluster, emulator: KubeEmulator, services: dict[str, dict[str, str]], named: dict[str, str], message: str
) -> None:
    old, new = cluster.images
    cluster.create_deployment("api", old, replicas=1)
    for name, selector in services.items():
        emulator.add_service(cluster.namespace, name, selector)
    with pytest.raises((NotFound, Invalid)) as refused:
        roll(cluster, request({"blue_green": named}, new), RecordingProgress())
    assert message in str(refused.value) and not refused.value.retryable
    assert emulator.patches == [] and not exists(cluster, "deployments", "api-green")
