"""The release console in a real browser, on a real stack: what a person sees and does.

Each test drives real releases (commands, a rollout on the local runtime, a check, an
approval) and looks only at the page: the graph's nodes change state live, logs stream
into an open step, the approval is given from the page, a run starts from the args form,
a failed run's compensations appear as their own nodes, and the stage view rolls back to
a past run after showing the dry-run plan. Screenshots land in test-output/console/.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.browser.cdp import Page
from tests.browser.conftest import Stack, login, shot
from tests.helpers import free_port, wait_until_sync
from tests.local.support import demo_service

SECRET = "s3cr3t-console-value"

FLOW = """
apiVersion: shipflow/v1
name: {name}
stage: {stage}
target:
  kind: local
  services:
    web: {service}
args:
  version: {{default: v1, pattern: "v[0-9]+", description: "the build to release"}}
  outcome: {{enum: [pass, fail], default: pass}}
steps:
  - migrate:
      id: migrate
      command: [sh, -c, "echo migrating to ${{args.version}} key=$API_KEY; while [ ! -f {gates}/${{args.version}} ]; do sleep 0.05; done; echo schema ${{args.version}} ready"]
      env: {{API_KEY: "${{env.CONSOLE_SECRET}}"}}
      undo: {{command: [sh, -c, "echo undoing the migration"]}}
  - parallel:
      - deploy: {{id: web, service: web, image: "${{args.version}}"}}
      - sequence:
          - wait: {{id: soak, duration: 300ms}}
          - check: {{id: api-up, http: {{url: "{api}/healthz"}}, period: 100ms, success_threshold: 2}}
  - approve: {{id: go-live, timeout: 1h}}
  - migrate: {{id: verify, retries: 1, command: [sh, -c, "echo verifying ${{args.version}}; test ${{args.outcome}} = pass"]}}
"""


@pytest.fixture(scope="module")
def flow(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One flow on its own stage, its web service on a free front port."""
    os.environ["CONSOLE_SECRET"] = SECRET  # read by the worker, in this process
    gates = tmp_path_factory.mktemp("gates")
    name = f"web-{uuid.uuid4().hex[:6]}"
    stage = f"prod-{uuid.uuid4().hex[:4]}"
    service = json.dumps(demo_service(free_port(), period="0.1s"))
    stack.apply(FLOW.format(name=name, stage=stage, service=service, gates=gates, api=stack.url))
    yield {"name": name, "stage": stage, "gates": gates}
    os.environ.pop("CONSOLE_SECRET", None)


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    return wait_until_sync(check, timeout=timeout, interval=0.1, what=what)


def step_state(stack: Stack, run_id: str, step: str) -> str:
    return str(next(s["state"] for s in stack.run(run_id)["steps"] if s["id"] == step))


def release(stack: Stack, flow: dict[str, Any], version: str, outcome: str = "pass") -> str:
    """A run started and approved over the API (gate open), waited until it ends."""
    (flow["gates"] / version).touch()
    run_id = stack.start_run(flow["name"], {"version": version, "outcome": outcome})
    until(lambda: step_state(stack, run_id, "go-live") == "waiting", f"{run_id} waits")
    with stack.http("operator") as http:
        assert http.post(f"/runs/{run_id}/approve", json={"step": "go-live"}).status_code == 200
    until(lambda: stack.run(run_id)["state"] not in ("pending", "running", "waiting", "queued"), f"{run_id} ends")
    return run_id


LOG_LINES = "[...document.querySelectorAll('#log .line')].map(l => l.textContent)"


def run_reads(run_id: str) -> str:
    """How many times the page fetched `GET /runs/{id}` itself (polling would add one a second)."""
    return (
        "performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname === "
        f"{json.dumps('/runs/' + run_id)}).length"
    )


def node_state(step: str) -> str:
    return f"document.querySelector('#node-{step} .st').innerText"


def test_login_is_required_and_a_viewer_sees_why_actions_are_off(page: Page, stack: Stack, flow: dict[str, Any]) -> None:
    page.goto(stack.url + "/")
    page.evaluate("localStorage.clear()")
    page.goto(stack.url + "/")
    page.wait("document.querySelector('#login-token')")
    assert flow["stage"] not in page.text()  # no data without a token
    page.fill("#login-token", "not-a-token")
    page.click("#login button[type=submit]")
    page.wait("document.querySelector('#login-error').innerText.includes('not accepted')")
    assert page.evaluate("localStorage.getItem('shipflow-token')") is None

    login(page, stack, "viewer")
    page.wait(f"document.querySelector('.stage[data-stage=\"{flow['stage']}\"]')")
    start = page.evaluate(f"document.querySelector('[data-start=\"{flow['name']}\"]').disabled")
    assert start is True
    assert "needs the operator role; you are viewer" in page.text(f".stage[data-stage=\"{flow['stage']}\"]")
    shot(page, "viewer-stage-view")


def test_run_from_the_form_streams_logs_is_approved_on_the_page_and_succeeds(
    page: Page, stack: Stack, flow: dict[str, Any]
) -> None:
    login(page, stack, "operator")
    card = f".stage[data-stage=\"{flow['stage']}\"]"
    page.click(f"{card} [data-start=\"{flow['name']}\"]")
    page.wait("document.querySelector('#arg-version').value === 'v1'")  # the default
    assert page.evaluate("document.querySelector('#arg-outcome').tagName") == "SELECT"
    page.fill("#arg-version", "1.0")
    page.wait("document.querySelector('#arg-version-error').innerText.includes('does not match the pattern')")
    page.click(".start-form button[type=submit]")
    page.wait("document.querySelector('.form-error').innerText.includes('Fix the fields')")
    assert page.evaluate("location.pathname") == "/"  # nothing was sent
    shot(page, "start-form-validation")
    page.fill("#arg-version", "v7")
    page.fill("#run-reason", "from the browser <img src=x onerror=window.pwned=1>")
    page.click(".start-form button[type=submit]")
    run_id = page.wait("location.pathname.startsWith('/runs/') && decodeURIComponent(location.pathname.slice(6))")
    assert stack.run(run_id)["args"]["version"] == "v7"

    page.wait("document.querySelector('#run-id')")
    assert "reason: from the browser <img src=x onerror=window.pwned=1>" in page.text("#run-head")
    assert page.evaluate("window.pwned === undefined && !document.querySelector('#run-head img')")

    # The graph: sequence left to right, the parallel group's lanes, a nested sequence box.
    page.wait("document.querySelectorAll('.node').length === 6")
    assert page.evaluate("document.querySelectorAll('.box.parallel .lane').length") == 2
    assert page.evaluate("!!document.querySelector('.box.parallel .box.sequence #node-soak')")
    page.wait(f"{node_state('migrate')} === 'running'")
    page.click("#node-migrate")
    page.wait("document.querySelector('#log').innerText.includes('migrating to v7')")
    assert "key=***" in page.text("#log")  # the resolved secret is masked in the log
    assert page.evaluate("document.querySelector('#log-state').textContent") == "(streaming)"
    assert "schema v7 ready" not in page.evaluate(LOG_LINES)
    shot(page, "logs-streaming")
    (flow["gates"] / "v7").touch()  # the command goes on: its next line streams in
    page.wait(f"{LOG_LINES}.includes('schema v7 ready')", timeout=20)
    page.wait("document.querySelector('#log-state').textContent === '(ended)'", timeout=20)

    page.wait(f"{node_state('web')} === 'succeeded'", timeout=60)
    page.wait(f"{node_state('go-live')} === 'waiting'", timeout=60)
    page.click("#node-go-live")
    page.wait("document.querySelector('#approval')")
    approval = page.text("#approval")
    assert "Who may decide: any operator or admin" in approval and "Deadline" in approval
    page.fill("#approve-comment", "looks good")
    shot(page, "approval-waiting")
    page.click("#approval [data-act=approve]")
    page.wait("document.querySelector('.title .state').innerText === 'succeeded'", timeout=60)
    for step in ("migrate", "web", "soak", "api-up", "go-live", "verify"):
        assert page.evaluate(node_state(step)) == "succeeded", step
    # Every change above came through the one event stream: the page read the run itself
    # only when it opened and after the approval (polling would read it once a second), so
    # the states it showed before the approval came from the stream's events.
    assert page.evaluate("document.documentElement.dataset.updates") == "stream"
    assert int(page.evaluate("document.documentElement.dataset.statusEvents")) >= 2
    assert page.evaluate(run_reads(run_id)) <= 3
    page.wait("document.querySelector('#detail-info').innerText.includes('looks good')")
    assert "operator-bot" in page.text("#detail-info")

    page.click("#node-web")
    page.wait("document.querySelector('.output').innerText.includes('previous_image')")
    assert "v7" in page.text(".output")
    page.wait("document.querySelector('#log').innerText.includes('rolled out')")
    page.click("#node-migrate")
    inputs = page.text(".inputs")
    assert "${env.CONSOLE_SECRET}" in inputs  # the reference, never the value
    assert SECRET not in page.evaluate("document.documentElement.outerHTML")
    shot(page, "run-succeeded-1280")
    page.resize(800, 900)
    page.wait("document.documentElement.scrollWidth <= 800")
    shot(page, "run-succeeded-800")
    page.resize(1280, 900)


def test_failure_compensates_and_shows_undo_nodes(page: Page, stack: Stack, flow: dict[str, Any]) -> None:
    (flow["gates"] / "v8").touch()
    run_id = stack.start_run(flow["name"], {"version": "v8", "outcome": "fail"})
    login(page, stack, "viewer", f"/runs/{run_id}")
    page.wait("document.querySelector('#run-id')")
    page.wait("document.querySelector('[data-act=cancel]')")
    assert page.evaluate("document.querySelector('[data-act=cancel]').disabled") is True
    assert "needs the operator role" in page.text("#run-head")
    until(lambda: step_state(stack, run_id, "go-live") == "waiting", "the approval")
    with stack.http("operator") as http:
        assert http.post(f"/runs/{run_id}/approve", json={"step": "go-live"}).status_code == 200
    page.wait(f"{node_state('verify')} === 'failed'", timeout=60)
    page.wait("document.querySelector('.title .state').innerText === 'rolled back'", timeout=60)
    page.wait("document.querySelector('#undo-migrate') && document.querySelector('#undo-web')")
    assert "compensation after verify failed" in page.text("#comp").lower()
    order = page.evaluate("[...document.querySelectorAll('#comp .node')].map(n => n.id)")
    assert order == ["undo-web", "undo-migrate"]  # newest first
    assert page.evaluate(node_state("migrate")) == "compensated"
    page.click("#node-verify")
    page.wait("document.querySelector('.step-error')")
    page.wait("document.querySelector('#log').innerText.includes('verifying v8')")
    # Both attempts, each with its error and times, each linked to its activity's event.
    page.wait("document.querySelectorAll('table.attempts tbody tr a').length === 2")
    rows = page.evaluate(
        "[...document.querySelectorAll('table.attempts tbody tr')].map(r => ({n: r.dataset.attempt,"
        " state: r.querySelector('.state').innerText, error: r.querySelector('.attempt-error').innerText,"
        " link: r.querySelector('a').href}))"
    )
    assert [r["n"] for r in rows] == ["1", "2"]
    for row in rows:
        assert row["state"] == "failed" and "exit" in row["error"].lower(), row
        assert "/history/events/" in row["link"] and row["link"].startswith(stack.settings.ui_url.rstrip("/"))
    assert rows[0]["link"] != rows[1]["link"]
    step_link = page.evaluate("document.querySelector('#step-ui-link').href")
    assert step_link == rows[1]["link"]  # the step's link: its last attempt's event
    page.click("#undo-migrate")
    page.wait("document.querySelector('#log').innerText.includes('undoing the migration')")
    page.wait("document.querySelector('.undo-events a')")  # the compensation's own event
    assert "/history/events/" in page.evaluate("document.querySelector('.undo-events a').href")
    shot(page, "failure-compensated")

    # An operator retries it from the page: a new run, shown at once.
    login(page, stack, "operator", f"/runs/{run_id}")
    page.click("[data-act=retry]")
    retried = page.wait(
        f"location.pathname.startsWith('/runs/') && decodeURIComponent(location.pathname.slice(6)) !== {json.dumps(run_id)}"
        " && decodeURIComponent(location.pathname.slice(6))"
    )
    page.wait("document.querySelector('#run-id')")
    assert page.text("#run-id") == retried
    assert stack.run(retried)["trigger"] == "retry"
    until(lambda: stack.run(retried)["state"] in ("failed", "rolled_back"), "the retried run ends")


def test_a_page_whose_stream_keeps_failing_falls_back_to_polling_and_still_follows_the_run(
    page: Page, stack: Stack, flow: dict[str, Any]
) -> None:
    """The run page's fallback: the browser cannot reach the event stream (here, blocked as a
    proxy that drops server-sent events would); after its reconnects the page says so and
    reads the run every second instead, and still shows the run to its end."""
    (flow["gates"] / "v31").touch()
    run_id = stack.start_run(flow["name"], {"version": "v31"})
    page.send("Network.enable")
    page.send("Network.setBlockedURLs", {"urls": ["*/events"]})
    login(page, stack, "viewer", f"/runs/{run_id}")
    page.wait("document.querySelector('#run-id')")
    page.wait("document.documentElement.dataset.updates === 'polling'", timeout=30)
    assert "refreshing every 1s instead" in page.text("#flash")
    assert page.evaluate("document.documentElement.dataset.statusEvents") is None  # none came
    until(lambda: step_state(stack, run_id, "go-live") == "waiting", "the approval")
    page.wait(f"{node_state('go-live')} === 'waiting'", timeout=30)
    with stack.http("operator") as http:
        assert http.post(f"/runs/{run_id}/approve", json={"step": "go-live"}).status_code == 200
    page.wait("document.querySelector('.title .state').innerText === 'succeeded'", timeout=60)
    assert page.evaluate(node_state("verify")) == "succeeded"
    assert page.evaluate(run_reads(run_id)) >= 3  # the page read the run itself, repeatedly


def test_rollback_from_the_stage_view_after_its_dry_run(page: Page, stack: Stack, flow: dict[str, Any]) -> None:
    first = release(stack, flow, "v20")
    second = release(stack, flow, "v21")
    assert stack.run(first)["state"] == stack.run(second)["state"] == "succeeded"
    login(page, stack, "operator")
    card = f".stage[data-stage=\"{flow['stage']}\"]"
    page.wait(f"document.querySelector('{card} tr[data-service=web] .image').innerText === 'v21'")
    page.click(f"{card} [data-rollback=\"{first}\"]")
    page.wait("document.querySelector('#rollback-preview')")
    preview = page.text("#rollback-preview")
    assert "Dry run" in preview and "roll web back to v20" in preview and "(runs v21 now)" in preview
    assert stack.run(second)["state"] == "succeeded"  # a preview changes nothing
    shot(page, "rollback-preview")
    page.click("[data-confirm-rollback]")
    rollback = page.wait("location.pathname.startsWith('/runs/') && decodeURIComponent(location.pathname.slice(6))")
    assert rollback != first
    page.wait("document.querySelector('.title .state').innerText === 'succeeded'", timeout=60)
    page.goto(stack.url + "/")
    page.wait(f"document.querySelector('{card} tr[data-service=web] .image').innerText === 'v20'")
    shot(page, "stage-view-after-rollback-1280")
    page.resize(800, 900)
    page.wait("document.documentElement.scrollWidth <= 800")
    shot(page, "stage-view-800")
    page.resize(1280, 900)


def test_runs_list_filters(page: Page, stack: Stack, flow: dict[str, Any]) -> None:
    with stack.http("viewer") as http:
        done = http.get("/runs", params={"flow": flow["name"], "status": "succeeded"}).json()
    if not done:  # this test alone: the others have not released anything yet
        release(stack, flow, "v40")
    login(page, stack, "viewer", f"/runs?flow={flow['name']}&status=succeeded")
    page.wait("document.querySelectorAll('#runs tbody tr a').length > 0")
    states = page.evaluate("[...document.querySelectorAll('#runs tbody .state')].map(e => e.innerText)")
    assert set(states) == {"succeeded"}
    assert page.evaluate("document.querySelector('[name=flow]').value") == flow["name"]
    hover = page.evaluate("document.querySelector('#runs time').title")
    assert hover.endswith("Z") and "T" in hover  # ISO on hover, the user's zone shown
    shot(page, "runs-list")


def test_flows_page_shows_source_and_pauses_a_schedule(page: Page, stack: Stack) -> None:
    name = f"nightly-{uuid.uuid4().hex[:6]}"
    stack.apply(
        f"apiVersion: shipflow/v1\nname: {name}\nstage: nightly\n"
        "triggers:\n  - cron: '0 3 * * 1-5'\n"
        "steps:\n  - wait: {id: pause, duration: 1s}\n"
    )
    login(page, stack, "admin", "/flows")
    card = f".flow[data-flow=\"{name}\"]"
    page.wait(f"document.querySelector('{card} tr[data-schedule]')")
    row = page.text(f"{card} tr[data-schedule]")
    assert "0 3 * * 1-5" in row and "active" in row
    assert "steps:" in page.evaluate(f"document.querySelector('{card} .source').textContent")
    page.click(f"{card} [data-sched=pause]")
    page.wait(f"document.querySelector('{card} tr[data-schedule]').innerText.includes('paused')")
    shot(page, "flows-page")

    # A second version: its diff against the first, as `shipflow flow diff` shows it.
    stack.apply(
        f"apiVersion: shipflow/v1\nname: {name}\nstage: nightly\n"
        "triggers:\n  - cron: '0 4 * * 1-5'\n"
        "steps:\n  - wait: {id: pause, duration: 2s}\n  - wait: {id: settle, duration: 1s}\n"
    )
    page.goto(stack.url + "/flows")
    page.wait(f"document.querySelector('{card} .diff .changes')")
    changes = page.evaluate(f"[...document.querySelectorAll('{card} .diff li')].map(l => l.innerText)")
    assert "+ step settle" in "\n".join(changes), changes
    assert any(c.startswith("~ step pause") and "duration" in c for c in changes), changes
    assert any(c.startswith("~ schedule") and "0 4 * * 1-5" in c for c in changes), changes
    assert "v1 → v2" in page.text(f"{card} .diff")
    page.evaluate(f"document.querySelector('{card} .versions').scrollIntoView()")
    shot(page, "flows-versions-diff")
    page.evaluate(f"document.querySelector('{card} .diff-form [name=from]').value = '2'")
    page.click(f"{card} .diff-form button[type=submit]")
    page.wait(f"document.querySelector('{card} .diff').innerText.includes('No changes')")
    with stack.http("viewer") as http:
        assert [v["version"] for v in http.get(f"/flows/{name}/versions").json()] == [2, 1]
        bad = http.get(f"/flows/{name}/diff", params={"from": 9})
        assert bad.status_code == 404 and "no version 9" in bad.text
        assert http.get(f"/flows/{name}/diff", params={"from": "x"}).status_code == 422
    with stack.http("viewer") as http:
        (schedule,) = http.get(f"/flows/{name}/schedules").json()
        assert schedule["paused"] is True


CANARY_FLOW = """
apiVersion: shipflow/v1
name: {name}
stage: {stage}
target:
  kind: local
  services:
    shop: {service}
args:
  version: {{default: v1}}
steps:
  - deploy:
      id: web
      service: shop
      image: "${{args.version}}"
      strategy: {{canary: {{steps: [{{set_weight: 25}}, {{pause: {{}}}}]}}}}
"""


def test_a_waiting_canary_shows_its_weight_and_is_promoted_from_the_page(page: Page, stack: Stack) -> None:
    name, stage = f"canary-{uuid.uuid4().hex[:6]}", f"cn-{uuid.uuid4().hex[:4]}"
    service = json.dumps(demo_service(free_port(), period="0.1s"))
    # Its own service: the runtime is shared, and a canary of the other flows' `web` would
    # start at once, with nothing to wait for.
    stack.apply(CANARY_FLOW.format(name=name, stage=stage, service=service))
    first = stack.start_run(name, {"version": "v1"})  # a first deploy has nothing to compare: rolling
    until(lambda: stack.run(first)["state"] in ("succeeded", "failed", "rolled_back"), "the first deploy")
    assert stack.run(first)["state"] == "succeeded", json.dumps(stack.run(first), indent=1)
    run_id = stack.start_run(name, {"version": "v2"})
    login(page, stack, "viewer", f"/runs/{run_id}")
    page.wait("document.querySelector('.canary [data-act=promote]')", timeout=60)
    canary = page.text(".canary")
    assert "current weight: 25%" in canary and "waiting for promotion" in canary
    assert page.evaluate("document.querySelector('.canary [data-act=promote]').disabled") is True
    login(page, stack, "operator", f"/runs/{run_id}")
    page.wait("document.querySelector('.canary [data-act=promote]:not([disabled])')", timeout=60)
    shot(page, "canary-waiting")
    page.click(".canary [data-act=promote]")
    page.wait("document.querySelector('#flash').innerText.includes('Promoted shop (step web)')")
    page.wait("document.querySelector('.title .state').innerText === 'succeeded'", timeout=60)
    page.wait("!document.querySelector('.canary')")
    assert page.evaluate(node_state("web")) == "succeeded"
