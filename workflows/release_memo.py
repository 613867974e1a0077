"""Flushing `ReleaseWorkflow`'s status into its memo: readable with no worker up, and only
what changed is upserted.

Why debounced: each upsert is a command the SDK encodes and the server writes into the
history (43 of a 50-step run's 139 KiB were memo upserts when every workflow task
upserted), and that per-task work was most of the interpreter's overhead over a
hand-written workflow (docs/benchmarks.md). The memo is for readers without a worker
(`GET /runs/{id}`, `shipflow status`, the console), who poll; they need it prompt, not
per task. So, from patch `memo-debounce` on, the memo lags the run by at most
`MEMO_FLUSH_INTERVAL_S` (workflow time):

- a change is upserted at once when the last upsert (the starter's memo, to begin with)
  was at least that long ago, and so is the run going `waiting` (an approval), with every
  step change pending: what an operator acts on is in the memo when its workflow task
  completes, even if the worker stops right after;
- otherwise it stays pending until the first workflow task from the interval's end on
  (patch `memo-piggyback`): a step that ends then carries the upsert in its own task. A
  timer (started only while something is pending, so a run blocked on an approval or a long
  step adds nothing to its history) is the backstop: it flushes `MEMO_BACKSTOP_S` after the
  last upsert when no task came (a long step's progress, a retry's error show within about
  1.5 s while a worker runs), and is cancelled, costing no task, when one did. Before the
  piggyback the timer fired at the interval's end, a workflow task of its own for every
  upsert while steps ran: in runs whose steps take 0.3-1 s that was a timer and a task a
  second, about as many as the debounce saved (docs/benchmarks.md, issue 12);
- the end of the run flushes at once: the final state in the memo is always exact.

The `status` query is never behind: it reads the workflow's state itself. Runs that started
before a patch keep their behaviour, as their histories say: per workflow task before
`memo-debounce`, the timer at the interval before `memo-piggyback`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from temporalio import workflow

from shipflow.workflows.release_base import ReleaseBase
from shipflow.workflows.release_patches import MEMO_DEBOUNCE, MEMO_PIGGYBACK

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.status import (
        MEMO_KEY,
        STEP_MEMO_PREFIX,
        RunState,
        run_memo_entry,
        step_memo_entry,
    )

#: How often, at most, the memo is upserted while the run goes on (seconds of workflow time):
#: a pending change is upserted by the first workflow task this long after the last upsert.
MEMO_FLUSH_INTERVAL_S = 1.0
#: When no workflow task comes (a long step runs), the flush timer upserts a pending change
#: this long after the last upsert: the most the memo lags the run's state (patch
#: `memo-piggyback`; before it the timer fired at `MEMO_FLUSH_INTERVAL_S`).
MEMO_BACKSTOP_S = 1.5
#: The flush timer's summary, as the Temporal UI shows it in the run's history.
FLUSH_TIMER_SUMMARY = "memo flush"


class MemoFlushing(ReleaseBase):
    """The memo flusher task (`run` starts it, `_finish` lets it end)."""

    async def _flush_memo(self) -> None:
        """Upsert what changed: debounced (see the module), or once per workflow task for
        runs that started before the patch."""
        debounced = self._patches.patched(MEMO_DEBOUNCE)
        piggyback = debounced and self._patches.patched(MEMO_PIGGYBACK)
        # The starter wrote the whole memo when it started the run: a run shorter than the
        # interval upserts once, at its end (per task, a 50-step parallel run upserted every
        # step's entry twice more: running, then its outcome).
        last_upsert = workflow.time()
        while True:
            await workflow.wait_condition(lambda: self._dirty or self._done)
            due_at = last_upsert + MEMO_FLUSH_INTERVAL_S
            if debounced and not self._flush_at_once() and workflow.time() < due_at:
                # Piggyback: the first workflow task from `due_at` on carries the upsert (the
                # timer is cancelled then, which costs no task) and the timer is only the
                # backstop. Before that patch the timer fired at `due_at`.
                ready = self._due_or_at_once(due_at) if piggyback else self._flush_at_once
                wait_until = last_upsert + MEMO_BACKSTOP_S if piggyback else due_at
                with contextlib.suppress(TimeoutError):  # due: flush what is pending
                    await workflow.wait_condition(
                        ready,
                        timeout=wait_until - workflow.time(),
                        timeout_summary=FLUSH_TIMER_SUMMARY,
                    )
            if self._dirty and self._upsert_changes():
                last_upsert = workflow.time()
            if self._done and not self._dirty:
                return

    def _due_or_at_once(self, due_at: float) -> Callable[[], bool]:
        """A workflow task at or after `due_at` has come, or the memo must be flushed now."""
        return lambda: self._flush_at_once() or workflow.time() >= due_at

    def _flush_at_once(self) -> bool:
        """The run has ended, or it has gone `waiting` and the memo does not say so yet."""
        return self._done or (
            self._status.state == RunState.WAITING
            and self._flushed[MEMO_KEY].get("state") != RunState.WAITING.value
        )

    def _upsert_changes(self) -> bool:
        """Upsert the memo entries that differ from what it holds; whether there were any."""
        self._dirty = False
        changed: dict[str, Any] = {}
        run = run_memo_entry(self._status)
        if self._flushed.get(MEMO_KEY) != run:
            changed[MEMO_KEY] = run
        if self._dirty_steps:
            # Plan order (not the set's), so the upsert reads as before.
            for step in self._status.steps:
                if step.id in self._dirty_steps:
                    key = STEP_MEMO_PREFIX + step.id
                    entry = step_memo_entry(step)
                    if self._flushed.get(key) != entry:
                        changed[key] = entry
            self._dirty_steps.clear()
        if not changed:
            return False
        workflow.upsert_memo(changed)
        self._flushed.update(changed)
        return True
