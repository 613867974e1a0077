"""Flushing `ReleaseWorkflow`'s status into its memo: readable with no worker up, upserted
at most once per workflow task and only for what changed."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from shipflow.workflows.release_base import ReleaseBase

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.status import (
        MEMO_KEY,
        STEP_MEMO_PREFIX,
        run_memo_entry,
        step_memo_entry,
    )


class MemoFlushing(ReleaseBase):
    """The memo flusher task (`run` starts it, `_finish` lets it end)."""

    async def _flush_memo(self) -> None:
        """Upsert the memo at most once per workflow task, however many steps changed."""
        while True:
            await workflow.wait_condition(lambda: self._dirty or self._done)
            if self._dirty:
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
                if changed:
                    workflow.upsert_memo(changed)
                    self._flushed.update(changed)
            if self._done and not self._dirty:
                return
