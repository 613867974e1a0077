"""`shipflow logs RUN [STEP] [--follow]`: a run's step logs in the terminal.

The same lines the console shows (stored by the activities, redacted and bounded): one
step's log, or every step's in run order, each line prefixed by its step. `--follow`
streams one step over server-sent events until the step is over, or polls every step of
the run until the run has ended.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from shipflow.infra.cli.client import ApiClient

#: How often `logs RUN --follow` looks for new lines of every step.
POLL_S = 0.5


def _print(line: dict[str, Any], prefix: str = "") -> None:
    sys.stdout.write(f"{prefix}{line['text']}\n")


def _note(page_or_event: dict[str, Any], step: str) -> None:
    note = page_or_event.get("note")
    if note:
        sys.stderr.write(f"[{step}] note: {note}\n")


def show_step(client: ApiClient, run_id: str, step: str, *, follow: bool) -> None:
    """Print one step's log; with `follow`, keep printing until the step is over."""
    if follow:
        for event, data in client.stream_step_logs(run_id, step):
            if event == "line":
                _print(data)
            elif event == "cut":
                _note(data, step)
            sys.stdout.flush()
        return
    after = 0
    while True:
        page = client.step_logs(run_id, step, after)
        if after == 0:
            _note(page, step)
        for line in page["lines"]:
            _print(line)
        if page["next"] == after:
            return
        after = page["next"]


def show_run(client: ApiClient, run_id: str, *, follow: bool) -> None:
    """Print every step's log in run order, each line as `[step] text`."""
    seen: dict[str, int] = {}
    final = False
    while True:
        run = client.run_json(run_id)
        final = run["state"] in ("succeeded", "failed", "cancelled", "rolled_back", "rollback_failed")
        for step in run["steps"]:
            sid = step["id"]
            after = seen.get(sid, 0)
            while True:
                page = client.step_logs(run_id, sid, after)
                if sid not in seen:
                    _note(page, sid)
                seen[sid] = page["next"]
                for line in page["lines"]:
                    _print(line, f"[{sid}] ")
                if page["next"] == after or not page["lines"]:
                    break
                after = page["next"]
        sys.stdout.flush()
        if not follow or final:
            return
        time.sleep(POLL_S)
