"""Cron triggers as Temporal Schedules: `sync_schedules` makes Temporal match a flow.

Each `- cron:` trigger of a flow is one Temporal Schedule, `shipflow-<flow>-<id or
index>`, whose action starts `ReleaseWorkflow` with a Plan compiled from the flow (at
the version applied) and the trigger's args. Temporal, not shipflow, owns the clock:
a schedule fires while the API is down, catches up briefly after a server outage, and
shows its next and recent runs in the Temporal UI.

What a schedule was built from (cron, timezone, trigger, a fingerprint of the whole
action) is kept in the action's memo under `SCHEDULE_MEMO_KEY`, so a re-apply updates
only the schedules that changed, and pausing a schedule survives a re-apply. The
schedule's own memo names the flow, so `shipflow-web-` never claims `shipflow-web-prod-0`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import RunLook, plan_for
from shipflow.workflows.crons import (
    cron_triggers,
    trigger_problems,
    validate_cron,
    validate_timezone,
)
from shipflow.workflows.plan import Plan
from shipflow.workflows.release import ReleaseInput, ReleaseWorkflow
from shipflow.workflows.spec import CronTrigger, FlowError, FlowSpec

__all__ = ["cron_triggers", "validate_cron", "validate_timezone"]

PREFIX = "shipflow-"
#: Key of the schedule's own memo that names its flow.
FLOW_MEMO_KEY = "shipflow_flow"
#: Key of the action's (so each started workflow's) memo: what the schedule was built from.
SCHEDULE_MEMO_KEY = "shipflow_schedule"
#: A release missed while Temporal was down is still started if it is at most this late;
#: an older one is skipped rather than deployed at a surprising hour.
CATCHUP_WINDOW = timedelta(minutes=10)
#: Every fire starts a run: the flow's `concurrency` is enforced by the stage lock inside
#: the run (as for API and webhook runs), so a queued or refused scheduled run shows up
#: in the runs index like any other, rather than being skipped silently by the schedule.
OVERLAP = ScheduleOverlapPolicy.ALLOW_ALL
#: Bump when the way a schedule is built changes, so the next sync rewrites them all.
BUILD = 1


# ------------------------------------------------------------------ validation


def schedule_id(flow: str, index: int, trigger: CronTrigger) -> str:
    return f"{PREFIX}{flow}-{trigger.id or index}"


def schedule_ids(spec: FlowSpec) -> list[str]:
    """The schedule ids a flow's cron triggers map to (e.g. to pass as `known_ids`)."""
    return [schedule_id(spec.name, i, t) for i, t in cron_triggers(spec)]


def validate_triggers(spec: FlowSpec) -> list[tuple[str, str]]:
    """Every problem of the flow's cron triggers (see `shipflow.workflows.crons`)."""
    return trigger_problems(spec)


# ------------------------------------------------------------------ building


def _fingerprint(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class DesiredSchedule:
    id: str
    index: int
    trigger: CronTrigger
    schedule: Schedule
    fingerprint: str


def _action(
    settings: Settings, sid: str, plan: Plan, trigger: CronTrigger, fingerprint: str
) -> ScheduleActionStartWorkflow:
    run_prefix = f"{plan.flow}-sched"  # Temporal appends the fire time to the workflow id
    reason = f"cron {trigger.cron} ({trigger.timezone})"
    look = RunLook.of(settings, plan, run_prefix, reason, f"schedule {sid}", "schedule")
    return ScheduleActionStartWorkflow(
        ReleaseWorkflow.run,
        ReleaseInput(
            run_id=run_prefix,
            plan=plan,
            reason=reason,
            triggered_by=f"schedule {sid}",
            trigger="schedule",
            record_start=True,
        ),
        id=run_prefix,
        task_queue=settings.task_queue,
        memo={
            **look.memo,
            SCHEDULE_MEMO_KEY: {
                "cron": trigger.cron,
                "timezone": trigger.timezone,
                "trigger": trigger.id,
                "fingerprint": fingerprint,
                "flow_version": plan.flow_version,
            },
        },
        typed_search_attributes=look.search_attributes,
        static_summary=look.summary,
        static_details=look.details,
    )


def desired_schedules(
    settings: Settings, flow_name: str, spec: FlowSpec, version: int
) -> list[DesiredSchedule]:
    """The schedules the flow's cron triggers ask for.

    Raises:
        FlowError: a trigger is invalid (bad cron or zone, or args that do not compile).
    """
    problems = validate_triggers(spec)
    out: list[DesiredSchedule] = []
    for index, trigger in cron_triggers(spec):
        try:
            plan = plan_for(spec, settings, trigger.args, flow_version=version)
        except FlowError as e:
            problems += [(p, f"with the args of triggers[{index}]: {m}") for p, m in e.problems]
            continue
        sid = schedule_id(flow_name, index, trigger)
        fingerprint = _fingerprint(
            BUILD,
            trigger.model_dump(mode="json"),
            plan.model_dump(mode="json"),
            settings.task_queue,
            settings.search_attributes,
        )
        schedule = Schedule(
            action=_action(settings, sid, plan, trigger, fingerprint),
            spec=ScheduleSpec(
                cron_expressions=[trigger.cron.strip()], time_zone_name=trigger.timezone
            ),
            policy=SchedulePolicy(
                overlap=OVERLAP,
                catchup_window=CATCHUP_WINDOW,
            ),
            state=ScheduleState(note=f"from flow {flow_name} v{version}"),
        )
        out.append(DesiredSchedule(sid, index, trigger, schedule, fingerprint))
    if problems:
        raise FlowError(problems)
    return out


# ------------------------------------------------------------------ reading back


async def built_from(client: Client, description: ScheduleDescription) -> dict[str, Any]:
    """What shipflow recorded in a schedule's action memo (cron, timezone, fingerprint)."""
    action = description.schedule.action
    memo = getattr(action, "memo", None) or {}
    raw = memo.get(SCHEDULE_MEMO_KEY)
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    value = (await client.data_converter.decode([raw]))[0]  # the memo may be encrypted
    return value if isinstance(value, dict) else {}


async def flow_schedule_ids(client: Client, flow_name: str) -> list[str]:
    """Ids of the schedules Temporal lists for this flow (listing is eventually consistent)."""
    prefix = f"{PREFIX}{flow_name}-"
    try:
        entries = [
            x async for x in await client.list_schedules(f'ScheduleId STARTS_WITH "{prefix}"')
        ]
    except RPCError as e:  # a server too old to filter schedules: list them all
        if e.status != RPCStatusCode.INVALID_ARGUMENT:
            raise
        entries = [x async for x in await client.list_schedules()]
    out: list[str] = []
    for entry in entries:
        if not entry.id.startswith(prefix):
            continue
        # `shipflow-web-` is also the prefix of flow `web-prod`'s schedules: ask the owner.
        owner = await entry.memo_value(FLOW_MEMO_KEY, default=None)
        if owner == flow_name:
            out.append(entry.id)
    return sorted(out)


# ------------------------------------------------------------------ sync


@dataclass
class SyncResult:
    """Which schedules a sync created, updated, left alone and deleted (by id)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


async def _update(client: Client, want: DesiredSchedule) -> bool:
    """Replace the schedule if what it was built from changed; keep its paused state."""
    changed = False

    async def updater(current: ScheduleUpdateInput) -> ScheduleUpdate | None:
        nonlocal changed
        recorded = await built_from(client, current.description)
        if recorded.get("fingerprint") == want.fingerprint:
            changed = False
            return None
        changed = True
        state = current.description.schedule.state
        want.schedule.state = ScheduleState(
            note=state.note if state.paused else want.schedule.state.note,
            paused=state.paused,
        )
        return ScheduleUpdate(schedule=want.schedule)

    await client.get_schedule_handle(want.id).update(updater)
    return changed


async def sync_schedules(
    client: Client,
    settings: Settings,
    flow_name: str,
    spec: FlowSpec,
    version: int,
    *,
    known_ids: Iterable[str] = (),
) -> SyncResult:
    """Make the flow's Temporal Schedules match its cron triggers.

    Creates the missing schedules, updates those whose cron, timezone, args or plan
    changed (a paused schedule stays paused), and deletes the flow's schedules whose
    trigger is gone.

    Args:
        client: Temporal client (pydantic data converter).
        settings: task queue and compile options the scheduled runs use.
        flow_name: the flow (same as `spec.name`).
        spec: the flow as applied.
        version: the flow version the scheduled runs execute.
        known_ids: schedule ids to consider for deletion besides those Temporal lists
            (listing is eventually consistent; e.g. the ids of the previous version).

    Raises:
        FlowError: a cron trigger is invalid; nothing is changed then.
        temporalio.service.RPCError: Temporal refused a change.
    """
    wanted = desired_schedules(settings, flow_name, spec, version)
    result = SyncResult()
    for want in wanted:
        try:
            await client.create_schedule(want.id, want.schedule, memo={FLOW_MEMO_KEY: flow_name})
            result.created.append(want.id)
        except ScheduleAlreadyRunningError:
            if await _update(client, want):
                result.updated.append(want.id)
            else:
                result.unchanged.append(want.id)
    keep = {w.id for w in wanted}
    existing = set(await flow_schedule_ids(client, flow_name)) | set(known_ids)
    for sid in sorted(existing - keep):
        if not sid.startswith(f"{PREFIX}{flow_name}-"):
            continue
        try:
            await client.get_schedule_handle(sid).delete()
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
            continue  # already gone: that is the goal
        result.deleted.append(sid)
    return result
