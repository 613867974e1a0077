"""`/flows`: apply (create, update, version), list, read, and every way a flow is refused."""

from __future__ import annotations

import asyncio
import time
import uuid

from sqlmodel import Session, select
from temporalio.client import Client
from temporalio.service import RPCError

from shipflow.activities.core.db import make_engine
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import Flow, FlowVersion
from shipflow.workflows.spec import load_flow_text
from tests.api.conftest import api_client
from tests.helpers import wait_until

FLOW = """
apiVersion: shipflow/v1
name: {name}
stage: staging
args:
  image: {{default: "demo:1"}}
  ticket: {{description: "change ticket, given by each run"}}
triggers:
  - git: {{repo: org/web, branches: [main]}}
steps:
  - migrate: {{id: migrate, command: [echo, "${{args.image}}", "${{args.ticket}}"]}}
  - parallel:
      - wait: {{id: soak, duration: 100ms}}
      - migrate: {{id: warm, command: [echo, "${{steps.migrate.exit_code}}"]}}
  - approve: {{id: go-live}}
"""


def flow(name: str, **replace: str) -> str:
    text = FLOW.format(name=name)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_create_update_version_list_get(db_settings: Settings) -> None:
    web, api_svc = unique("web"), unique("api-svc")
    async with api_client(db_settings) as http:
        created = await http.post(
            "/flows", content=flow(web), headers={"Content-Type": "application/yaml"}
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["name"] == web
        assert body["stage"] == "staging"
        assert body["version"] == 1
        assert body["steps"] == ["migrate", "soak", "warm", "go-live"]
        assert body["triggers"] == [
            {"git": {"repo": "org/web", "branches": ["main"], "paths": [], "args": {}}}
        ]
        assert body["args"]["image"]["default"] == "demo:1"
        assert body["args"]["ticket"] == {
            "default": None,
            "description": "change ticket, given by each run",
            "type": "string",
            "pattern": None,
            "enum": None,
            "max_length": None,
        }
        assert body["created_at"] and body["updated_at"]

        # The same source again: nothing changes, 200.
        same = await http.post("/flows", content=flow(web), headers={"Content-Type": "text/yaml"})
        assert same.status_code == 200
        assert same.json()["version"] == 1

        # A changed source: version 2, same creation time, new stage.
        changed = flow(web, **{"stage: staging": "stage: production"})
        updated = await http.post("/flows", content=changed, headers={"Content-Type": "text/plain"})
        assert updated.status_code == 200, updated.text
        assert updated.json()["version"] == 2
        assert updated.json()["stage"] == "production"
        assert updated.json()["created_at"] == body["created_at"]

        # JSON bodies are flows too.
        as_json = {
            "apiVersion": "shipflow/v1",
            "name": api_svc,
            "stage": "dev",
            "steps": [{"wait": {"id": "pause", "duration": "1s"}}],
        }
        from_json = await http.post("/flows", json=as_json)
        assert from_json.status_code == 201, from_json.text
        assert from_json.json()["steps"] == ["pause"]

        listed = await http.get("/flows")
        assert listed.status_code == 200
        assert [f["name"] for f in listed.json()] == sorted([api_svc, web])
        assert "source" not in listed.json()[0]

        detail = await http.get(f"/flows/{web}")
        assert detail.status_code == 200
        assert detail.json()["source"] == changed
        assert detail.json()["spec"]["apiVersion"] == "shipflow/v1"
        assert detail.json()["spec"]["stage"] == "production"
        assert detail.json()["version"] == 2

    engine = make_engine(db_settings.sqlalchemy_url())
    try:
        with Session(engine) as session:
            versions = session.exec(
                select(FlowVersion).where(FlowVersion.flow == web).order_by(FlowVersion.version)  # type: ignore[arg-type]
            ).all()
        assert [(v.version, v.source) for v in versions] == [(1, flow(web)), (2, changed)]
    finally:
        engine.dispose()


async def test_invalid_yaml_is_422_with_line(settings: Settings) -> None:
    async with api_client(settings) as http:
        response = await http.post(
            "/flows",
            content="apiVersion: shipflow/v1\nname: x\nsteps: [\n  - {wait: {id: a",
            headers={"Content-Type": "application/yaml"},
        )
        assert response.status_code == 422
        (problem,) = response.json()["detail"]
        assert problem["loc"].startswith("line ")
        assert "column" in problem["loc"]
        assert problem["msg"].startswith("invalid YAML")

        bad_json = await http.post(
            "/flows", content='{"name": "x",', headers={"Content-Type": "application/json"}
        )
        assert bad_json.status_code == 422
        assert bad_json.json()["detail"][0]["loc"] == "line 1, column 14"

        not_a_mapping = await http.post("/flows", content="- just\n- a list\n")
        assert not_a_mapping.status_code == 422
        assert "mapping" in not_a_mapping.json()["detail"][0]["msg"]


async def test_invalid_flow_is_422_with_paths(settings: Settings) -> None:
    text = """
apiVersion: shipflow/v1
name: web
stage: dev
steps:
  - wait: {id: a, duration: 1s}
  - parallel:
      - migrate: {id: m}
      - deploy: {id: d, service: api, imag: x}
  - wait: {id: b, duration: soon}
"""
    async with api_client(settings) as http:
        response = await http.post("/flows", content=text, headers={"Content-Type": "text/yaml"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    # Each problem also says where it is written (the body was YAML): line and column.
    assert {
        "loc": "steps[1].parallel[0].migrate.command",
        "msg": "field required",
        "line": 8,
        "column": 9,
    } in detail
    assert {
        "loc": "steps[1].parallel[1].deploy.image",
        "msg": "field required",
        "line": 9,
        "column": 9,
    } in detail
    assert {
        "loc": "steps[1].parallel[1].deploy.imag",
        "msg": "unknown field",
        "line": 9,
        "column": 39,
        "suggestion": "image",
    } in detail
    assert any(
        p["loc"] == "steps[2].wait.duration" and "invalid duration" in p["msg"] for p in detail
    )


async def test_reference_errors_are_caught_at_apply(settings: Settings) -> None:
    text = flow(
        "refs",
        **{"${steps.migrate.exit_code}": "${steps.nope.output}", "${args.image}": "${args.colour}"},
    )
    async with api_client(settings) as http:
        response = await http.post("/flows", content=text, headers={"Content-Type": "text/yaml"})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        locs = {p["loc"]: p["msg"] for p in detail}
        assert "undeclared argument" in locs["steps[0].migrate.command[1]"]
        assert "no step with id 'nope'" in locs["steps[1].parallel[1].migrate.command[1]"]
        # The required argument `ticket` has no default: that alone is no problem.
        assert not any(loc.startswith("args.") for loc in locs)

        trigger_arg = flow("trig", **{"branches: [main]": "branches: [main], args: {colour: red}"})
        bad_trigger = await http.post(
            "/flows", content=trigger_arg, headers={"Content-Type": "text/yaml"}
        )
        assert bad_trigger.status_code == 422
        assert bad_trigger.json()["detail"][0]["loc"] == "triggers[0].git.args.colour"

        # Nothing was stored.
        assert (await http.get("/flows")).json() == []


async def test_git_references_accepted_only_with_git_trigger(settings: Settings) -> None:
    base = """
apiVersion: shipflow/v1
name: gitty
stage: dev
{triggers}
steps:
  - migrate: {{id: m, command: [echo, "${{git.sha}}"]}}
"""
    async with api_client(settings) as http:
        without = await http.post("/flows", content=base.format(triggers=""))
        assert without.status_code == 422
        assert "git trigger" in without.json()["detail"][0]["msg"]
        with_git = await http.post(
            "/flows", content=base.format(triggers="triggers: [{git: {repo: org/app}}]")
        )
        assert with_git.status_code == 201, with_git.text


async def test_a_git_value_or_step_output_in_a_url_host_is_422_naming_the_field(
    settings: Settings,
) -> None:
    """No pattern can be declared for `${git.X}` (any pusher chooses a branch name) or a
    step's output: in a URL's host they would choose where the request goes, so apply
    refuses them; in the path or query they are accepted (percent-encoded per run)."""
    name = unique("preview")
    text = f"""
apiVersion: shipflow/v1
name: {name}
stage: dev
triggers: [{{git: {{repo: org/app}}}}]
steps:
  - migrate: {{id: m, command: ["true"]}}
  - notify: {{id: n, webhook: "https://${{git.branch}}.preview.example/hook?t=${{git.branch}}",
             message: hi}}
  - check: {{id: c, http: {{url: "http://${{steps.m.output}}/healthz"}}}}
"""
    async with api_client(settings) as http:
        refused = await http.post("/flows", content=text)
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert [p["loc"] for p in detail] == ["steps[1].notify.webhook", "steps[2].check.http.url"]
        assert detail[0]["msg"].startswith("${git.branch} lands in the scheme or host of the URL")
        assert detail[1]["msg"].startswith("${steps.m.output} lands in the scheme or host")
        assert all("no `pattern` can be declared" in p["msg"] for p in detail)
        # Nothing was stored.
        assert (await http.get(f"/flows/{name}")).status_code == 404

        in_the_path = text.replace("${git.branch}.preview", "hooks").replace(
            "http://${steps.m.output}/healthz", "http://127.0.0.1:9/healthz?v=${steps.m.output}"
        )
        created = await http.post("/flows", content=in_the_path)
        assert created.status_code == 201, created.text


async def test_unknown_flow_404_and_media_type_415(settings: Settings) -> None:
    async with api_client(settings) as http:
        missing = await http.get("/flows/nope")
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no flow named 'nope'"}
        start = await http.post("/flows/nope/runs", json={"args": {}})
        assert start.status_code == 404
        wrong = await http.post("/flows", content=b"x", headers={"Content-Type": "image/png"})
        assert wrong.status_code == 415
        assert "application/yaml" in wrong.json()["detail"]


CRON = """
apiVersion: shipflow/v1
name: {name}
stage: dev
args: {{ticket: {{description: required}}}}
triggers:
{triggers}
steps:
  - migrate: {{id: m, command: [echo, "${{args.ticket}}"]}}
"""


async def test_apply_syncs_cron_schedules(temporal_client: Client, settings: Settings) -> None:
    """POST /flows validates cron triggers and makes Temporal Schedules match them."""
    name = unique("nightly")
    schedule = temporal_client.get_schedule_handle(f"shipflow-{name}-nightly")
    async with api_client(settings) as http:
        invalid = await http.post(
            "/flows",
            content=CRON.format(
                name=name,
                triggers='  - {cron: "61 3 * * *", id: nightly, timezone: Mars/Olympus}',
            ),
        )
        assert invalid.status_code == 422
        locs = {p["loc"] for p in invalid.json()["detail"]}
        assert {"triggers[0].cron", "triggers[0].timezone", "triggers[0].args.ticket"} <= locs

        good = CRON.format(
            name=name, triggers='  - {cron: "0 3 * * *", id: nightly, args: {ticket: T-9}}'
        )
        created = await http.post("/flows", content=good)
        assert created.status_code == 201, created.text
        described = await schedule.describe()
        spec = described.schedule.spec
        assert spec.cron_expressions or spec.calendars  # the server may normalise the cron
        assert described.schedule.action.workflow == "ReleaseWorkflow"  # type: ignore[attr-defined]

        without = await http.post("/flows", content=CRON.format(name=name, triggers="  []"))
        assert without.status_code == 200, without.text
        assert without.json()["version"] == 2

        async def deleted() -> bool:
            try:
                await schedule.describe()
            except RPCError:
                return True
            return False

        await wait_until(deleted, timeout=10)


# ---------------------------------------------------------------- issue #9: the flow contract


async def test_literal_password_refused_at_apply_env_reference_accepted(
    settings: Settings,
) -> None:
    base = """
apiVersion: shipflow/v1
name: {name}
stage: dev
steps:
  - backup: {{id: b, database: "{database}", to: "s3://bucket/p/"}}
  - notify: {{id: n, webhook: "{webhook}", message: hi}}
"""
    name = unique("secrets")
    async with api_client(settings) as http:
        literal = base.format(
            name=name,
            database="postgresql://app:Hunter2pw@db.internal:5432/app",
            webhook="https://hooks.example/x?token=tok-9f8e7d",
        )
        refused = await http.post("/flows", content=literal)
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert [p["loc"] for p in detail] == ["steps[0].backup.database", "steps[1].notify.webhook"]
        assert all("written literally" in p["msg"] and "${env.X}" in p["msg"] for p in detail)
        assert "Hunter2pw" not in refused.text and "tok-9f8e7d" not in refused.text
        assert (await http.get(f"/flows/{name}")).status_code == 404

        by_reference = base.format(
            name=name,
            database="postgresql://app:${env.APP_DB_PASSWORD}@db.internal:5432/app",
            webhook="https://hooks.example/x?token=${env.HOOK_TOKEN}",
        )
        created = await http.post("/flows", content=by_reference)
        assert created.status_code == 201, created.text
        shown = await http.get(f"/flows/{name}")
        assert shown.status_code == 200
        assert "${env.APP_DB_PASSWORD}" in shown.text and "Hunter2pw" not in shown.text


async def test_deep_nesting_and_too_many_steps_are_422_naming_the_limit(
    settings: Settings,
) -> None:
    head = "apiVersion: shipflow/v1\nname: {name}\nstage: dev\nsteps:\n"
    deep = (
        head.format(name=unique("deep"))
        + "".join("  " * (i + 1) + "- sequence:\n" for i in range(100))
        + "  " * 101
        + "- wait: {id: w, duration: 1s}\n"
    )
    huge = head.format(name=unique("huge")) + "".join(
        f"  - wait: {{id: w{i}, duration: 1s}}\n" for i in range(10_000)
    )
    async with api_client(settings) as http:
        too_deep = await http.post("/flows", content=deep)
        assert too_deep.status_code == 422, too_deep.text
        (problem,) = too_deep.json()["detail"]
        assert problem["loc"].startswith("steps[0].sequence[0].sequence")
        assert "limit: nesting depth" in problem["msg"]

        started = time.monotonic()
        too_many = await http.post("/flows", content=huge)
        took = time.monotonic() - started
        assert too_many.status_code == 422, too_many.text
        assert too_many.json()["detail"] == [
            {
                "loc": "steps",
                "msg": "10000 steps: a flow has at most 1500 steps, parallel and sequence "
                "included (limit: number of steps)",
                "line": 4,
                "column": 1,
            }
        ]
        assert took < 10, f"refusing 10,000 steps took {took:.1f}s"

        deep_json = await http.post(
            "/flows",
            content='{"steps": ' + "[" * 100_000 + "]" * 100_000 + "}",
            headers={"Content-Type": "application/json"},
        )
        assert deep_json.status_code == 422, deep_json.text
        assert (await http.get("/flows")).json() == []


async def test_applying_a_large_flow_does_not_block_other_requests(settings: Settings) -> None:
    """The parse and the checks run off the event loop: the loop keeps ticking, /healthz answers.

    Parsing this body takes about a second; done on the event loop, one tick of the loop
    would wait that long.
    """
    huge = "apiVersion: shipflow/v1\nname: big\nstage: dev\nsteps:\n" + "".join(
        f"  - migrate: {{id: m{i}, command: [echo, '{'x' * 20}']}}\n" for i in range(12_000)
    )
    async with api_client(settings) as http:
        started = time.monotonic()
        applying = asyncio.create_task(http.post("/flows", content=huge))
        gaps: list[float] = []
        healthy: list[int] = []
        while not applying.done():
            before = time.monotonic()
            await asyncio.sleep(0.01)  # one tick of the loop, measured; not a wait
            gaps.append(time.monotonic() - before)
            if len(healthy) < 3 and not applying.done():
                healthy.append((await http.get("/healthz")).status_code)
        took = time.monotonic() - started
        refused = await applying
        assert refused.status_code == 422, refused.text
        assert "limit: number of steps" in refused.text
        # Answered while the apply was still running (on the loop, it would have gone first).
        assert healthy == [200, 200, 200], (healthy, took)
        # No tick waited for the whole parse (a shared CI machine may still pause a little).
        assert max(gaps) < 0.6 * took, f"the loop stalled {max(gaps):.2f}s of {took:.2f}s"


async def test_bad_durations_are_422_not_500(settings: Settings) -> None:
    async with api_client(settings) as http:
        for duration in ("99999999999h", ".inf", "9" * 400):
            text = f"""
apiVersion: shipflow/v1
name: {unique("dur")}
stage: dev
steps:
  - wait: {{id: w, duration: {duration}}}
  - approve: {{id: a, timeout: {duration}}}
"""
            response = await http.post("/flows", content=text)
            assert response.status_code == 422, (duration, response.text)
            locs = [p["loc"] for p in response.json()["detail"]]
            assert locs == ["steps[0].wait.duration", "steps[1].approve.timeout"], locs


async def test_arg_constraints_are_checked_and_shown(settings: Settings) -> None:
    name = unique("typed")
    text = f"""
apiVersion: shipflow/v1
name: {name}
stage: dev
args:
  replicas: {{type: integer, default: 2}}
  sink: {{default: "127.0.0.1:9"}}
steps:
  - check: {{id: c, http: {{url: "http://${{args.sink}}/check"}}}}
"""
    async with api_client(settings) as http:
        host = await http.post("/flows", content=text)
        assert host.status_code == 422, host.text
        (problem,) = host.json()["detail"]
        assert problem["loc"] == "args.sink"
        assert "host of the URL at steps[0].check.http.url" in problem["msg"]

        bad_default = await http.post("/flows", content=text.replace("default: 2", "default: two"))
        assert bad_default.status_code == 422
        assert bad_default.json()["detail"][0]["loc"] == "args.replicas"

        allowed = text.replace(
            'sink: {default: "127.0.0.1:9"}',
            'sink: {default: "127.0.0.1:9", pattern: "127\\\\.0\\\\.0\\\\.1:[0-9]+"}',
        )
        created = await http.post("/flows", content=allowed)
        assert created.status_code == 201, created.text
        args = created.json()["args"]
        assert args["replicas"]["type"] == "integer"
        assert args["sink"]["pattern"] == "127\\.0\\.0\\.1:[0-9]+"


async def test_a_secret_stored_before_the_check_is_masked_for_viewers(settings: Settings) -> None:
    """A flow applied before literal secrets were refused: GET shows it, masked."""
    name = unique("legacy")
    source = f"""
apiVersion: shipflow/v1
name: {name}
stage: dev
steps:
  - backup: {{id: b, database: "postgresql://app:Legacy-Pw-1@db/app", to: "s3://bucket/p/"}}
  - notify: {{id: n, webhook: "https://hooks.example/x?token=legacy-tok&channel=ops", message: hi}}
"""
    spec = load_flow_text(source).model_dump(mode="json", by_alias=True)
    engine = make_engine(settings.sqlalchemy_url())
    try:
        with Session(engine) as session:
            session.add(Flow(name=name, stage="dev", version=1, source=source, spec=spec))
            session.commit()
    finally:
        engine.dispose()
    async with api_client(settings) as http:
        shown = await http.get(f"/flows/{name}")
        assert shown.status_code == 200, shown.text
        assert "Legacy-Pw-1" not in shown.text and "legacy-tok" not in shown.text
        body = shown.json()
        assert "postgresql://app:***@db/app" in body["source"]
        assert "token=***&channel=ops" in body["source"]
        assert body["spec"]["steps"][0]["backup"]["database"] == "postgresql://app:***@db/app"
