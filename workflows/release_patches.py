"""`ReleaseWorkflow`'s patches (`workflow.patched`), and the bundle that stands for them in
runs started from now on.

Every change to the order of the interpreter's commands is guarded by a patch, so that runs
in flight when a worker is upgraded replay as their histories say. A patch costs every new
run a marker event, and an upsert of Temporal's `TemporalChangeVersion` search attribute,
the first time the run asks it. By issue 12 a run of ten notify steps recorded three of each
(6 of its 76 events), a run with local steps or a lost worker more. So a run started from
the bundle on records one marker, `BUNDLE`, which answers for every patch in `BUNDLED`:
`Patches.patched(id)` is true for them without a marker of their own.

Runs that started before the bundle have no bundle marker in their histories, so for them
the bundle reads false (Temporal answers a patch absent from a replayed history with false)
and each patch is asked on its own, exactly as before. A patch added later is not in
`BUNDLED` (runs started on the bundle did not have it): ask it with `Patches.patched` all
the same; it records its own marker. To fold later patches in, add a new bundle listing
them with these; never add to `BUNDLED`.
"""

from __future__ import annotations

from temporalio import workflow

#: Short calls (`step_kinds.Local`) run as local activities. Runs that started before it
#: keep scheduling regular activities, as their histories say.
LOCAL_SHORT_CALLS = "local-short-calls"
#: The run records its live state changes in the runs index (`_index_states`).
INDEX_RUN_STATES = "index-run-states"
#: An activity failed by its worker's shutdown is resumed like a lost worker.
WORKER_SHUTDOWN_IS_LOST = "worker-shutdown-is-lost"
#: Each attempt of a step is recorded (`StepStatus.attempt_log`) and its activity is named
#: `<step>:<activity>:<attempt>` so the API can find it in the history.
STEP_ATTEMPT_LOG = "step-attempt-log"
#: A cancel in the back-off after an attempt that kept its work for the next one (a
#: Kubernetes canary, `StateKept`) aborts that work (`deploy.abort_kept`).
ABORT_KEPT_ON_CANCEL = "abort-kept-on-cancel"
#: The memo is upserted at most once per `MEMO_FLUSH_INTERVAL_S` (plus the final flush), no
#: longer once per workflow task.
MEMO_DEBOUNCE = "memo-debounce"
#: A pending memo change rides on the next workflow task once the interval is up; the flush
#: timer is only the backstop for a run that has no other task coming (release_memo.py).
MEMO_PIGGYBACK = "memo-piggyback"

#: A command argument that a step output makes begin with '-' fails the step (or its undo)
#: instead of running (`step_outputs.option_like_outputs`). Asked only when that happens,
#: so a run that never meets it records no marker for it.
REFUSE_OPTION_OUTPUTS = "refuse-option-outputs"

#: The one marker a run started from here on records for all of `BUNDLED`.
BUNDLE = "release-patches-2026-12"
BUNDLED = frozenset(
    {
        LOCAL_SHORT_CALLS,
        INDEX_RUN_STATES,
        WORKER_SHUTDOWN_IS_LOST,
        STEP_ATTEMPT_LOG,
        ABORT_KEPT_ON_CANCEL,
        MEMO_DEBOUNCE,
        MEMO_PIGGYBACK,
    }
)


class Patches:
    """One run's answers to `patched(id)`, with the bundle (see the module)."""

    def __init__(self) -> None:
        #: Whether the run has the bundle: asked once, the first time a bundled patch is.
        self._bundle: bool | None = None

    def patched(self, patch_id: str) -> bool:
        """`workflow.patched(patch_id)`, true without a marker of its own for a bundled
        patch in a run that has the bundle."""
        if patch_id in BUNDLED:
            if self._bundle is None:
                self._bundle = workflow.patched(BUNDLE)
            if self._bundle:
                return True
        return workflow.patched(patch_id)
