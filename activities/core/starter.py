"""Starting a release run: compile the flow and start ReleaseWorkflow, the same way everywhere.

The API, the CLI's demo, schedules and webhooks all start runs through `start_release`,
so every run gets the same id scheme, memo, search attributes and summary.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from shipflow.activities.core.client import COMMIT_KEY, FLOW_KEY, STAGE_KEY
from shipflow.activities.core.settings import Settings
from shipflow.workflows.plan import CompileOptions, Plan, compile
from shipflow.workflows.release import ReleaseInput, ReleaseWorkflow
from shipflow.workflows.spec import FlowSpec
from shipflow.workflows.status import (
    RunState,
    RunStatus,
    initial_steps,
    memo_entries,
    status_from_memo,
)


def new_run_id(flow: str, commit: str | None = None) -> str:
    """`<flow>-<commit>` for git-triggered runs (one run per commit), else a random suffix."""
    if commit:
        return f"{flow}-{commit[:12]}"
    return f"{flow}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def compile_options(settings: Settings) -> CompileOptions:
    return CompileOptions(
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        worker_lost_retries=settings.worker_lost_retries,
    )


def plan_for(
    flow: FlowSpec,
    settings: Settings,
    args: Mapping[str, Any] | None = None,
    *,
    context: Mapping[str, Mapping[str, str]] | None = None,
    flow_version: int = 1,
    placeholders: Collection[str] = (),
) -> Plan:
    """Raises FlowError (with paths) for bad args or references."""
    return compile(
        flow,
        args,
        context=context,
        flow_version=flow_version,
        options=compile_options(settings),
        placeholders=placeholders,
    )


async def start_release(
    client: Client,
    settings: Settings,
    plan: Plan,
    *,
    run_id: str | None = None,
    reason: str | None = None,
    triggered_by: str | None = None,
    trigger: str = "api",
    commit: str | None = None,
    task_queue: str | None = None,
    record_start: bool = False,
    skip: dict[str, dict[str, Any]] | None = None,
) -> WorkflowHandle[ReleaseWorkflow, Any]:
    """Start (or, for the same id, join) a release run."""
    run_id = run_id or new_run_id(plan.flow, commit)
    look = RunLook.of(settings, plan, run_id, reason, triggered_by, trigger, commit=commit)
    return await client.start_workflow(
        ReleaseWorkflow.run,
        ReleaseInput(
            run_id=run_id,
            plan=plan,
            reason=reason,
            triggered_by=triggered_by,
            trigger=trigger,
            record_start=record_start,
            skip=skip or {},
        ),
        id=run_id,
        task_queue=task_queue or settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        memo=look.memo,
        search_attributes=look.search_attributes,
        static_summary=look.summary,
        static_details=look.details,
    )


@dataclass
class RunLook:
    """What makes a run readable before it has done anything: its memo (the initial
    status), search attributes, and the summary and details the Web UI shows. Runs
    started here and runs started by schedules look the same."""

    memo: dict[str, Any]
    search_attributes: TypedSearchAttributes
    summary: str
    details: str

    @classmethod
    def of(
        cls,
        settings: Settings,
        plan: Plan,
        run_id: str,
        reason: str | None,
        triggered_by: str | None,
        trigger: str,
        *,
        commit: str | None = None,
    ) -> RunLook:
        initial = RunStatus.starting(
            plan, run_id, reason=reason, triggered_by=triggered_by, steps=initial_steps(plan)
        )
        pairs = [
            SearchAttributePair(FLOW_KEY, plan.flow),
            SearchAttributePair(STAGE_KEY, plan.stage),
        ]
        if commit:
            pairs.append(SearchAttributePair(COMMIT_KEY, commit))
        args_text = ", ".join(f"{k}={v}" for k, v in sorted(plan.args.items()))
        what = "scheduled release" if trigger == "schedule" else "release"
        return cls(
            memo=memo_entries(initial),
            search_attributes=TypedSearchAttributes(pairs if settings.search_attributes else []),
            summary=f"{what} {plan.flow} → {plan.stage}" + (f" ({args_text})" if args_text else ""),
            details=_details(plan, reason, triggered_by, trigger),
        )


def _details(plan: Plan, reason: str | None, triggered_by: str | None, trigger: str) -> str:
    lines = [
        f"**flow** {plan.flow} v{plan.flow_version} · **stage** {plan.stage}",
        f"**trigger** {trigger}",
    ]
    if triggered_by:
        lines.append(f"**by** {triggered_by}")
    if reason:
        lines.append(f"**reason** {reason}")
    lines.append("**steps** " + ", ".join(a.id for a in plan.actions()))
    return "\n\n".join(lines)


def ui_link(settings: Settings, run_id: str) -> str:
    """Deep link into the Temporal Web UI for one run."""
    base = settings.ui_url.rstrip("/")
    return f"{base}/namespaces/{settings.temporal_namespace}/workflows/{run_id}"


async def read_status(client: Client, run_id: str) -> RunStatus:
    """A run's status from its memo: readable with no worker running.

    Raises:
        temporalio.service.RPCError: NOT_FOUND for an unknown run.
    """
    handle = client.get_workflow_handle(run_id)
    description = await handle.describe()
    status = status_from_memo(await description.memo())
    if status is None:
        raise LookupError(f"run {run_id} has no shipflow status")
    # A run whose workflow was terminated from outside never wrote its final memo.
    if (
        not status.state.is_final
        and description.status is not None
        and description.status.name
        in (
            "TERMINATED",
            "TIMED_OUT",
        )
    ):
        status.state = RunState.FAILED
        status.error = f"workflow {description.status.name.lower()} outside shipflow"
    return status
