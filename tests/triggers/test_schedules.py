"""Cron triggers as Temporal Schedules: validation, sync (create/update/delete), the routes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr
from temporalio.client import (
    Client,
    ScheduleBackfill,
    ScheduleOverlapPolicy,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode

from shipflow.activities.core.settings import Settings
from shipflow.api.auth import hash_token
from shipflow.api.schedules import (
    built_from,
    flow_schedule_ids,
    sync_schedules,
    validate_cron,
    validate_triggers,
)
from shipflow.workflows.spec import FlowError, load_flow_text
from tests.helpers import new_worker, wait_until
from tests.triggers.conftest import api, apply, unique


def flow(name: str, *triggers: str, extra_args: str = "") -> str:
    lines = "\n".join(f"  - {t}" for t in triggers) or "  []"
    return f"""
apiVersion: shipflow/v1
name: {name}
stage: nightly
args:
  image: {{default: "app:1"}}{extra_args}
triggers:
{lines}
steps:
  - wait: {{id: soak, duration: 100ms}}
"""


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "expr", ["0 3 * * 1-5", "*/15 * * * *", "@daily", "@hourly", "0 0 1 JAN *"]
)
def test_valid_cron(expr: str) -> None:
    validate_cron(expr, "Europe/Berlin")


@pytest.mark.parametrize(
    ("expr", "tz", "message"),
    [
        ("0 3 * *", "UTC", "5 fields"),
        ("0 3 * * * *", "UTC", "5 fields"),
        ("61 3 * * *", "UTC", "invalid cron"),
        ("0 3 * * mon-xyz", "UTC", "invalid cron"),
        ("@every-day", "UTC", "5 fields"),
        ("0 3 * * *", "Mars/Olympus", "timezone"),
        ("0 3 * * *", "", "timezone"),
        ("0 3 * * *", "../etc/passwd", "timezone"),
    ],
)
def test_invalid_cron(expr: str, tz: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_cron(expr, tz)


def test_validate_triggers_names_the_paths() -> None:
    spec = load_flow_text(
        flow(
            "v",
            "git: {repo: org/app}",
            'cron: "99 * * * *"',
            'cron: "0 3 * * *"\n    timezone: Nowhere/Land',
            'cron: "0 4 * * *"\n    id: "2"',
            'cron: "0 5 * * *"',
            extra_args="\n  region: {description: no default}",
        )
    )
    problems = dict(validate_triggers(spec))
    assert "invalid cron" in problems["triggers[1].cron"]
    assert "timezone" in problems["triggers[2].timezone"]
    assert "triggers[3].cron" not in problems
    assert "triggers[2]" in problems["triggers[3].id"]  # id "2" collides with index 2
    assert "required" in problems["triggers[4].args.region"]
    assert not any(p.startswith("triggers[0]") for p in problems)
    ok = load_flow_text(flow("ok", 'cron: "0 3 * * *"\n    args: {image: "app:2"}'))
    assert validate_triggers(ok) == []


async def test_invalid_trigger_changes_nothing(settings: Settings, temporal_client: Client) -> None:
    name = unique("bad")
    spec = load_flow_text(flow(name, 'cron: "0 3 * * *"', 'cron: "not a cron at all"'))
    with pytest.raises(FlowError) as caught:
        await sync_schedules(temporal_client, settings, name, spec, 1)
    assert [p for p, _ in caught.value.problems] == ["triggers[1].cron"]
    with pytest.raises(RPCError) as missing:
        await temporal_client.get_schedule_handle(f"shipflow-{name}-0").describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND


# ------------------------------------------------------------------ sync and routes


async def test_sync_creates_updates_and_deletes(
    settings: Settings, temporal_client: Client
) -> None:
    """`sync_schedules` on its own (no API): what it reports is what Temporal has."""
    name = unique("sync")
    both = load_flow_text(flow(name, 'cron: "0 3 * * *"', 'cron: "0 4 * * *"\n    id: late'))
    ids = [f"shipflow-{name}-0", f"shipflow-{name}-late"]
    created = await sync_schedules(temporal_client, settings, name, both, 1)
    assert (created.created, created.updated, created.deleted) == (ids, [], [])
    again = await sync_schedules(temporal_client, settings, name, both, 1)
    assert (again.created, again.updated, again.unchanged) == ([], [], ids)
    # A new flow version changes the plan of every schedule (the version is in the plan).
    bumped = await sync_schedules(temporal_client, settings, name, both, 2)
    assert bumped.updated == ids
    # Trigger 0 gone: `late` stays (its id does not depend on its position).
    only_late = load_flow_text(flow(name, 'cron: "0 4 * * *"\n    id: late'))
    await wait_until(lambda: flow_schedule_ids(temporal_client, name), timeout=10)
    removed = await sync_schedules(temporal_client, settings, name, only_late, 2)
    assert (removed.deleted, removed.unchanged) == ([ids[0]], [ids[1]])
    assert await flow_schedule_ids(temporal_client, name) in ([ids[1]], ids)  # list lags
    with pytest.raises(RPCError):
        await temporal_client.get_schedule_handle(ids[0]).describe()
    # `known_ids` covers a schedule the (eventually consistent) list does not show yet.
    none = load_flow_text(flow(name))
    gone = await sync_schedules(temporal_client, settings, name, none, 3, known_ids=[ids[1]])
    assert gone.deleted == [ids[1]]


async def test_schedules_follow_the_applied_flow(
    settings: Settings, temporal_client: Client
) -> None:
    name = unique("cron")
    first = flow(
        name,
        'cron: "0 3 * * 1-5"\n    timezone: Europe/Berlin\n    args: {image: "app:nightly"}',
        'cron: "@daily"\n    id: cleanup',
    )
    ids = [f"shipflow-{name}-0", f"shipflow-{name}-cleanup"]
    async with api(settings) as http:
        await apply(http, first)  # POST /flows syncs the schedules
        listed = (await http.get(f"/flows/{name}/schedules")).json()
        assert [(s["id"], s["cron"], s["timezone"], s["paused"], s["exists"]) for s in listed] == [
            (ids[0], "0 3 * * 1-5", "Europe/Berlin", False, True),
            (ids[1], "@daily", "UTC", False, True),
        ]
        upcoming = [datetime.fromisoformat(t) for t in listed[0]["next_action_times"]]
        assert upcoming and all(t > datetime.now(UTC) for t in upcoming)
        for when in upcoming:  # 03:00 on weekdays, Berlin time, whatever the DST offset
            local = when.astimezone(ZoneInfo("Europe/Berlin"))
            assert (local.hour, local.minute) == (3, 0) and local.isoweekday() <= 5

        # The action starts ReleaseWorkflow with the trigger's args on our task queue.
        handle = temporal_client.get_schedule_handle(ids[0])
        described = await handle.describe()
        action = described.schedule.action
        assert action.workflow == "ReleaseWorkflow"  # type: ignore[attr-defined]
        assert action.task_queue == settings.task_queue  # type: ignore[attr-defined]
        assert action.id == f"{name}-sched"  # type: ignore[attr-defined]
        # The args are stored encrypted: decode them with the client's converter.
        (payload,) = await temporal_client.data_converter.decode([action.args[0]])  # type: ignore[attr-defined]
        assert payload["plan"]["args"] == {"image": "app:nightly"}
        assert payload["record_start"] is True and payload["trigger"] == "schedule"
        # What apply made is what a direct sync wants: nothing to change.
        again = await sync_schedules(temporal_client, settings, name, load_flow_text(first), 1)
        assert again.unchanged == ids

        paused = await http.post(f"/flows/{name}/schedules/0/pause", json={"note": "freeze"})
        assert paused.status_code == 200, paused.text
        assert paused.json()["paused"] is True and paused.json()["note"] == "freeze"

        # New cron for trigger 0, trigger `cleanup` removed: updated, deleted, still paused.
        second = flow(name, 'cron: "30 4 * * *"\n    timezone: Europe/Berlin')
        await apply(http, second)
        described = await handle.describe()
        assert (await built_from(temporal_client, described))["cron"] == "30 4 * * *"
        assert described.schedule.state.paused is True
        (payload,) = await temporal_client.data_converter.decode(
            [described.schedule.action.args[0]]  # type: ignore[attr-defined]
        )
        assert payload["plan"]["args"] == {"image": "app:1"}
        assert payload["plan"]["flow_version"] == 2
        upcoming = list(described.info.next_action_times)
        local = upcoming[0].astimezone(ZoneInfo("Europe/Berlin"))
        assert (local.hour, local.minute) == (4, 30)
        with pytest.raises(RPCError):
            await temporal_client.get_schedule_handle(ids[1]).describe()

        unpaused = await http.post(f"/flows/{name}/schedules/{ids[0]}/unpause")
        assert unpaused.status_code == 200 and unpaused.json()["paused"] is False
        listed = (await http.get(f"/flows/{name}/schedules")).json()
        assert [(s["id"], s["cron"], s["paused"]) for s in listed] == [
            (ids[0], "30 4 * * *", False)
        ]

        # Unknown flow, unknown schedule: 404 with a message that says what exists.
        assert (await http.get("/flows/no-such-flow/schedules")).status_code == 404
        unknown = await http.post(f"/flows/{name}/schedules/cleanup/pause")
        assert unknown.status_code == 404 and ids[0] in unknown.json()["detail"]
        assert (await http.post("/flows/no-such-flow/schedules/0/trigger")).status_code == 404

        # The last cron trigger removed: its schedule goes too.
        await apply(http, flow(name))
        with pytest.raises(RPCError):
            await handle.describe()
        assert (await http.get(f"/flows/{name}/schedules")).json() == []


async def test_flow_names_that_share_a_prefix_keep_their_schedules(
    settings: Settings, temporal_client: Client
) -> None:
    short = unique("pre")
    long = f"{short}-x"
    await sync_schedules(
        temporal_client, settings, long, load_flow_text(flow(long, 'cron: "0 1 * * *"')), 1
    )
    await wait_until(lambda: flow_schedule_ids(temporal_client, long), timeout=10)
    # `shipflow-<short>-` is a prefix of `shipflow-<short>-x-0`, which is not <short>'s.
    result = await sync_schedules(temporal_client, settings, short, load_flow_text(flow(short)), 1)
    assert result.deleted == []
    await temporal_client.get_schedule_handle(f"shipflow-{long}-0").describe()


async def test_trigger_starts_a_listed_run(settings: Settings, temporal_client: Client) -> None:
    name = unique("fire")
    text = flow(name, 'cron: "0 3 1 1 *"\n    id: yearly\n    args: {image: "app:cron"}')
    async with api(settings) as http, new_worker(temporal_client, settings):
        await apply(http, text)
        assert (await http.post(f"/flows/{name}/schedules/daily/trigger")).status_code == 404

        fired = await http.post(f"/flows/{name}/schedules/yearly/trigger")
        assert fired.status_code == 202, fired.text
        run_id = fired.json()["run_id"]
        assert run_id.startswith(f"{name}-sched")
        assert fired.json()["status_url"].endswith(f"/runs/{run_id}")

        handle = temporal_client.get_workflow_handle(run_id)
        await handle.result()
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED

        async def listed() -> list[dict] | None:  # type: ignore[type-arg]
            rows = (await http.get("/runs", params={"flow": name})).json()
            return rows if rows and all(r["state"] == "succeeded" for r in rows) else None

        rows = await wait_until(listed, timeout=15)
        assert [(r["run_id"], r["trigger"], r["args"]) for r in rows] == [
            (run_id, "schedule", {"image": "app:cron"})
        ]
        detail = (await http.get(f"/runs/{run_id}")).json()
        assert detail["run_id"] == run_id and detail["state"] == "succeeded"

        schedules = (await http.get(f"/flows/{name}/schedules")).json()
        assert [a["run_id"] for a in schedules[0]["recent_actions"]] == [run_id]


async def test_a_cron_fire_records_its_run(settings: Settings, temporal_client: Client) -> None:
    """A fire of the cron itself (a backfill over last New Year, 03:00 Berlin time): the run
    records itself in the runs index (`record_start`), with no API call involved."""
    name = unique("tick")
    text = flow(name, 'cron: "0 3 1 1 *"\n    timezone: Europe/Berlin')
    berlin = ZoneInfo("Europe/Berlin")
    async with api(settings) as http, new_worker(temporal_client, settings):
        await apply(http, text)
        handle = temporal_client.get_schedule_handle(f"shipflow-{name}-0")
        await handle.backfill(
            ScheduleBackfill(
                start_at=datetime(2026, 1, 1, 2, 59, tzinfo=berlin),
                end_at=datetime(2026, 1, 1, 3, 1, tzinfo=berlin),
                overlap=ScheduleOverlapPolicy.ALLOW_ALL,
            )
        )

        async def fired() -> str | None:
            recent = (await handle.describe()).info.recent_actions
            return recent[0].action.workflow_id if recent else None  # type: ignore[attr-defined]

        run_id = await wait_until(fired, timeout=15)
        assert run_id == f"{name}-sched-2026-01-01T02:00:00Z"  # 03:00 in Berlin is 02:00 UTC
        await temporal_client.get_workflow_handle(run_id).result()

        async def listed() -> list[dict] | None:  # type: ignore[type-arg]
            rows = (await http.get("/runs", params={"flow": name})).json()
            return rows if rows and all(r["state"] == "succeeded" for r in rows) else None

        rows = await wait_until(listed, timeout=15)
        assert [(r["run_id"], r["trigger"]) for r in rows] == [(run_id, "schedule")]
        detail = (await http.get(f"/runs/{run_id}")).json()
        assert (detail["run_id"], detail["state"]) == (run_id, "succeeded")


async def test_schedule_changes_need_admin(settings: Settings, temporal_client: Client) -> None:
    tokens = [
        {"name": "ops", "role": "operator", "sha256": hash_token("tok-op")},
        {"name": "boss", "role": "admin", "sha256": hash_token("tok-admin")},
    ]
    settings = settings.model_copy(update={"tokens": SecretStr(json.dumps(tokens))})
    name = unique("auth")
    text = flow(name, 'cron: "0 3 * * *"')
    async with api(settings) as http:
        admin = {"Authorization": "Bearer tok-admin"}
        response = await http.post(
            "/flows", content=text, headers={"content-type": "application/yaml", **admin}
        )
        assert response.status_code == 201
        operator = {"Authorization": "Bearer tok-op"}
        assert (await http.get(f"/flows/{name}/schedules")).status_code == 401
        assert (await http.get(f"/flows/{name}/schedules", headers=operator)).status_code == 200
        for verb in ("pause", "unpause", "trigger"):
            denied = await http.post(f"/flows/{name}/schedules/0/{verb}", headers=operator)
            assert denied.status_code == 403
        paused = await http.post(f"/flows/{name}/schedules/0/pause", headers=admin)
        assert paused.json()["paused"] is True and "boss" in paused.json()["note"]
