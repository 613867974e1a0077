"""The step-kind dispatch table: which activity each kind of step (and of undo) runs.

`ReleaseWorkflow` interprets the plan's tree; what a single action does is data, here:
for each step kind, the activity calls it makes (activity name, a builder of its input
from the step's resolved params, the result type, whether it is long running), and for
each undo kind, the one call its compensation makes. Adding a kind means adding a row,
not a branch in the interpreter.

Builders are pure functions of a `StepRequest`: no workflow API, no I/O, so they are
deterministic in the sandbox and testable alone. The activity names and input shapes are
exactly those recorded histories expect (`tests/workflows/test_replay.py`).

`wait` and `approve` run no activity (a timer, an update): `WORKFLOW_KINDS` names them and
the interpreter handles them itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from shipflow.workflows.durations import parse_duration
from shipflow.workflows.io import backup as backup_io
from shipflow.workflows.io import checks as check_io
from shipflow.workflows.io import deploy as deploy_io
from shipflow.workflows.io import jobs as job_io
from shipflow.workflows.io import notify as notify_io
from shipflow.workflows.io.common import StepContext
from shipflow.workflows.plan import ActionPlan, Plan, UndoPlan, resolve_step_outputs
from shipflow.workflows.spec import CheckSpec, Probes, Strategy
from shipflow.workflows.templates import literal

#: Kinds the workflow runs itself (a durable timer, an approval update): no activity.
WORKFLOW_KINDS = frozenset({"wait", "approve"})


@dataclass(frozen=True)
class StepRequest:
    """What a builder may read: the action, its params resolved, and the run around it."""

    plan: Plan
    action: ActionPlan
    #: The action's params with `${steps.X.Y}` resolved from earlier outputs.
    params: dict[str, Any]
    context: StepContext
    run_state: str
    #: Outputs of this step's earlier calls, by activity name (promote: the promotion).
    earlier: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    #: Outputs of every finished step so far (undo reads the backup it restores).
    outputs: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    #: The undo being run, for undo builders.
    undo: UndoPlan | None = None
    #: The output of the step being undone, for undo builders.
    step_output: Mapping[str, Any] = field(default_factory=dict)


Builder = Callable[[StepRequest], BaseModel]


#: A step whose timeout is at most this runs its short calls as local activities.
SHORT_STEP_S = 30.0


@dataclass(frozen=True)
class Local:
    """When a call runs as a local activity: in the worker that runs the workflow task.

    A local activity needs no activity task from the server (no schedule, poll and
    completion round trips), so a short step costs a fraction of a regular one. What it
    gives up, and why only short calls qualify: it cannot heartbeat (the worker's
    workflow task is its liveness: a lost worker's task times out and the next worker
    runs the call again, which is not an attempt), and while it runs the workflow task
    stays open, so a cancel request, an approval or a sibling's result waits for it (up
    to the workflow task's heartbeat, ~8 s).
    """

    #: Steps with a longer timeout (or none) run the call as a regular activity.
    up_to_step_timeout_s: float | None = SHORT_STEP_S
    #: The time one attempt may take, when the activity bounds it tighter than the step
    #: (notify: one webhook call); Temporal's timeout is this plus `LOCAL_MARGIN_S`.
    attempt_s: float | None = None

    def applies(self, action: ActionPlan) -> bool:
        if self.up_to_step_timeout_s is None:
            return True
        return action.timeout_s is not None and action.timeout_s <= self.up_to_step_timeout_s

    def timeout_s(self, action: ActionPlan) -> float:
        limits = [t for t in (action.timeout_s, self.attempt_s) if t is not None]
        return (min(limits) if limits else SHORT_STEP_S) + LOCAL_MARGIN_S


#: Headroom for a local call beyond the time its activity allows itself.
LOCAL_MARGIN_S = 5.0


@dataclass(frozen=True)
class ActivityCall:
    """One activity a step runs under the step's retry policy and timeout."""

    activity: str
    build: Builder
    result_type: type[BaseModel]
    #: Long activities heartbeat (a lost worker is noticed within the plan's heartbeat
    #: timeout and resumed, not counted as an attempt) and get a cleanup margin on top of
    #: the step's timeout, which they enforce themselves.
    long_running: bool = True
    #: Whether (and when) the call runs as a local activity; None: always regular.
    local: Local | None = None

    def runs_local(self, action: ActionPlan) -> bool:
        return self.local is not None and self.local.applies(action)


@dataclass(frozen=True)
class StepKind:
    """What one kind of action does: its calls in order, then how its output is shaped."""

    calls: tuple[ActivityCall, ...]
    #: (the last call's output, the request) -> the step's output.
    finish: Callable[[dict[str, Any], StepRequest], dict[str, Any]] | None = None


@dataclass(frozen=True)
class UndoKind:
    """What one kind of compensation does."""

    call: ActivityCall
    #: When it returns an output, there is nothing to undo and no activity runs.
    nothing_to_do: Callable[[StepRequest], dict[str, Any] | None] | None = None


# ---------------------------------------------------------------------- builders


def plain(value: Any) -> Any:
    """The plain text of a field no activity resolves `${env.X}` in (see `shipflow.workflows.templates`).

    Fields the worker does resolve (commands, env, URLs, headers, database, backup `to`) stay encoded:
    `resolve_env` undoes the escapes itself, after it has filled in the author's references.
    """
    return literal(value) if isinstance(value, str) else value


def plain_check(params: dict[str, Any]) -> dict[str, Any]:
    """A check's params with its plain-text fields decoded (its URL and headers stay encoded)."""
    out = dict(params)
    if isinstance(out.get("http"), dict) and out["http"].get("contains") is not None:
        out["http"] = {**out["http"], "contains": literal(out["http"]["contains"])}
    if isinstance(out.get("tcp"), dict) and isinstance(out["tcp"].get("host"), str):
        out["tcp"] = {**out["tcp"], "host": literal(out["tcp"]["host"])}
    return out


def rollout_input(
    req: StepRequest, params: Mapping[str, Any], image: str | None, *, purpose: str
) -> deploy_io.RolloutInput:
    deadline = params.get("progress_deadline")
    return deploy_io.RolloutInput(
        context=req.context,
        target=params.get("target") or req.plan.target,
        service=plain(params["service"]),
        image=image or "",
        container=plain(params.get("container")),
        probes=Probes.model_validate(params["probes"]) if params.get("probes") else None,
        progress_deadline_s=parse_duration(deadline).total_seconds() if deadline else None,
        strategy=Strategy.model_validate(params["strategy"]) if params.get("strategy") else None,
        purpose=purpose,
        flow_tags=list(req.plan.tags),
        env_order=list(req.plan.env_order),
        groups=params.get("groups"),
        max_attempts=req.action.retry.max_attempts,
    )


def _migrate(req: StepRequest) -> BaseModel:
    p = req.params
    return job_io.JobInput(
        context=req.context,
        target=req.plan.target,
        command=p["command"],
        image=plain(p.get("image")),
        env=p.get("env") or {},
        cwd=plain(p.get("cwd")),
        service_account=plain(p.get("service_account")),
        timeout_s=req.action.timeout_s,
        retries=req.action.retry.max_attempts - 1,
        env_from=list(p.get("env_from") or []),
        tags=[*req.plan.tags, *(p.get("tags") or [])],
        env_order=list(req.plan.env_order),
    )


def _check(req: StepRequest) -> BaseModel:
    return check_io.CheckInput(
        context=req.context,
        check=CheckSpec.model_validate({**plain_check(req.params), "id": req.action.id}),
        timeout_s=req.action.timeout_s,
    )


def _notify(req: StepRequest) -> BaseModel:
    p = req.params
    return notify_io.NotifyInput(
        context=req.context,
        webhook=p["webhook"],
        message=plain(p["message"]),
        headers=p.get("headers") or {},
        run_state=req.run_state,
        timeout_s=req.action.timeout_s,
    )


def _backup(req: StepRequest) -> BaseModel:
    p = req.params
    return backup_io.BackupInput(
        context=req.context,
        database=p["database"],
        to=p["to"],  # resolved (and unescaped) on the worker
        endpoint=p.get("endpoint"),
        keep=p.get("keep"),
        sse=p.get("sse"),
        storage_class=p.get("storage_class"),
    )


def _promotion(req: StepRequest) -> BaseModel:
    return deploy_io.PromotionInput(
        from_stage=plain(req.params["from"]), service=plain(req.params["service"])
    )


def _deploy(req: StepRequest) -> BaseModel:
    return rollout_input(req, req.params, plain(req.params.get("image")), purpose="deploy")


def _promote(req: StepRequest) -> BaseModel:
    image = req.earlier[deploy_io.RESOLVE_PROMOTION]["image"]
    return rollout_input(req, req.params, image, purpose="promote")


def _promoted(output: dict[str, Any], req: StepRequest) -> dict[str, Any]:
    output["from_stage"] = req.params["from"]
    return output


def _restore(req: StepRequest) -> BaseModel:
    # Only generated plans (rollback with restore_data) have this kind.
    p = req.params
    return backup_io.RestoreInput(
        context=req.context,
        database=p["database"],
        url=p["url"],
        endpoint=p.get("endpoint"),
        size=p.get("size"),
        sha256=p.get("sha256"),
        owners=p.get("owners", "keep"),
    )


ROLLOUT = ActivityCall(deploy_io.ROLLOUT, _deploy, deploy_io.RolloutOutput)

#: Step kind -> the activities it runs.
#:
#: Local (see `Local`) where a call is short by construction: `notify` (one webhook call,
#: at most `notify_io.REQUEST_TIMEOUT_S` per attempt) and `check` when the step's timeout
#: is at most `SHORT_STEP_S`, and the promotion lookup (one database read) always. Everything that runs a command, moves data or rolls
#: out stays a regular, heartbeating activity: it may take minutes, must be resumable
#: from its heartbeat, and must not hold the workflow task.
STEP_KINDS: dict[str, StepKind] = {
    "migrate": StepKind((ActivityCall(job_io.RUN_JOB, _migrate, job_io.JobOutput),)),
    "check": StepKind(
        (ActivityCall(check_io.PROBE, _check, check_io.CheckOutput, local=Local()),)
    ),
    "notify": StepKind(
        (
            ActivityCall(
                notify_io.SEND,
                _notify,
                notify_io.NotifyOutput,
                local=Local(attempt_s=notify_io.REQUEST_TIMEOUT_S),
            ),
        )
    ),
    "backup": StepKind((ActivityCall(backup_io.CREATE, _backup, backup_io.BackupOutput),)),
    "deploy": StepKind((ROLLOUT,)),
    "promote": StepKind(
        (
            ActivityCall(
                deploy_io.RESOLVE_PROMOTION,
                _promotion,
                deploy_io.PromotionOutput,
                local=Local(up_to_step_timeout_s=None, attempt_s=SHORT_STEP_S),
            ),
            ActivityCall(deploy_io.ROLLOUT, _promote, deploy_io.RolloutOutput),
        ),
        finish=_promoted,
    ),
    "restore": StepKind((ActivityCall(backup_io.RESTORE, _restore, backup_io.RestoreOutput),)),
}


# ---------------------------------------------------------------------- undo


def _no_previous_image(req: StepRequest) -> dict[str, Any] | None:
    if req.step_output.get("previous_image"):
        return None
    return {"note": "the service had no earlier image; left on the new one"}


def _undo_rollout(req: StepRequest) -> BaseModel:
    previous = req.step_output.get("previous_image")
    pinned = req.step_output.get("previous_groups")
    params = {**req.params, "groups": pinned} if pinned is not None else req.params
    return rollout_input(req, params, previous, purpose="undo")


def _undo_command(req: StepRequest) -> BaseModel:
    undo = req.undo
    assert undo is not None
    return job_io.JobInput(
        context=req.context,
        target=req.plan.target,
        command=resolve_step_outputs(undo.command, dict(req.outputs)),
        image=plain(undo.image or req.action.params.get("image")),
        env=undo.env,
        cwd=plain(undo.cwd),
        timeout_s=req.action.timeout_s,
        purpose="undo",
        **_undo_groups(req),
    )


def _undo_groups(req: StepRequest) -> dict[str, Any]:
    """A migrate step's undo command gets the group versions the step itself got (or, if
    it recorded none, the groups the step selects); other undo commands get none."""
    if req.action.kind != "migrate":
        return {}
    return {
        "env_from": list(req.action.params.get("env_from") or []),
        "tags": [*req.plan.tags, *(req.action.params.get("tags") or [])],
        "env_order": list(req.plan.env_order),
        "groups": req.step_output.get("groups"),
    }


def _undo_restore(req: StepRequest) -> BaseModel:
    undo = req.undo
    assert undo is not None and undo.backup_step is not None
    backup = req.plan.action(undo.backup_step)
    made = req.outputs.get(undo.backup_step) or {}
    return backup_io.RestoreInput(
        context=req.context,
        database=backup.params["database"],
        url=made.get("url", ""),
        endpoint=backup.params.get("endpoint"),
        size=made.get("size"),
        sha256=made.get("sha256"),
        owners=undo.owners,
    )


#: Undo kind -> the one activity its compensation runs (always long running).
UNDO_KINDS: dict[str, UndoKind] = {
    "previous_image": UndoKind(
        ActivityCall(deploy_io.ROLLOUT, _undo_rollout, deploy_io.RolloutOutput),
        nothing_to_do=_no_previous_image,
    ),
    "command": UndoKind(ActivityCall(job_io.RUN_JOB, _undo_command, job_io.JobOutput)),
    "restore": UndoKind(ActivityCall(backup_io.RESTORE, _undo_restore, backup_io.RestoreOutput)),
}
