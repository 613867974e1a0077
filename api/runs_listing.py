"""Reading the runs index for `GET /runs`: filters, cursor paging, and the one fallback.

Runs write their own state into the index as it changes (see
`shipflow.activities.records`), so a page of runs is one indexed query: newest first,
ordered by `(created_at, run_id)`, and the cursor is the last row's key, opaque to callers.
Page N+1 starts strictly after page N's last row, so rows added meanwhile (newer) never
shift a page and no row is shown twice.

The fallback: rows of runs started by a worker that did not yet record live states have
`recorded_at` unset and may show a state that has long changed. Listing refreshes at most
`LEGACY_REFRESH_LIMIT` such rows per request from Temporal, each at most once per
`LEGACY_RECHECK_S` in this process, so those rows still end while a list never costs one
Temporal call per row.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, tuple_
from sqlmodel import Session, col, select

from shipflow.activities.core.tables import Run
from shipflow.workflows.status import RunState, RunStatus

#: At most this many legacy rows are refreshed from Temporal per list request.
LEGACY_REFRESH_LIMIT = 5
#: A legacy row refreshed here is not asked about again for this long (per process).
LEGACY_RECHECK_S = 30.0
_LIVE = [s.value for s in RunState if not s.is_final and s is not RunState.PENDING]


class BadCursor(ValueError):
    """The cursor is not one this API handed out."""


@dataclass(frozen=True)
class RunFilter:
    """What `GET /runs` narrows the list to (None: any)."""

    flow: str | None = None
    stage: str | None = None
    state: str | None = None
    trigger: str | None = None
    triggered_by: str | None = None


def encode_cursor(row: Run) -> str:
    """The opaque position after `row`."""
    key = json.dumps([row.created_at.isoformat(), row.run_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises:
    BadCursor: not a cursor `encode_cursor` made.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, run_id = json.loads(raw)
        if not isinstance(created, str) or not isinstance(run_id, str):
            raise TypeError
        return datetime.fromisoformat(created), run_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadCursor(
            "not a cursor from this API: pass the X-Next-Cursor of the previous page as it is"
        ) from None


def select_page(
    engine: Engine, where: RunFilter, limit: int, after: tuple[datetime, str] | None
) -> tuple[list[Run], bool]:
    """Up to `limit` rows newest first, starting after `after`; and whether more follow."""
    statement = select(Run)
    for column, value in (
        (Run.flow, where.flow),
        (Run.stage, where.stage),
        (Run.state, where.state),
        (Run.trigger, where.trigger),
        (Run.triggered_by, where.triggered_by),
    ):
        if value is not None:
            statement = statement.where(col(column) == value)
    if after is not None:
        statement = statement.where(tuple_(col(Run.created_at), col(Run.run_id)) < tuple_(*after))
    statement = statement.order_by(col(Run.created_at).desc(), col(Run.run_id).desc())
    with Session(engine) as session:
        rows = list(session.exec(statement.limit(limit + 1)).all())
    return rows[:limit], len(rows) > limit


class LegacyRows:
    """Which rows of a page the fallback refreshes (bounded per request and per row)."""

    def __init__(self) -> None:
        self._checked: dict[str, float] = {}

    def pick(self, rows: list[Run]) -> list[Run]:
        now = time.monotonic()
        if len(self._checked) > 10_000:
            self._checked = {k: t for k, t in self._checked.items() if now - t < LEGACY_RECHECK_S}
        out: list[Run] = []
        for row in rows:
            if len(out) == LEGACY_REFRESH_LIMIT:
                break
            if row.recorded_at is not None or row.state not in _LIVE:
                continue
            if now - self._checked.get(row.run_id, -LEGACY_RECHECK_S) < LEGACY_RECHECK_S:
                continue
            self._checked[row.run_id] = now
            out.append(row)
        return out


def save_refreshed(engine: Engine, updates: list[RunStatus]) -> None:
    """Write states read from Temporal into the index: a final state into any live row (it
    is the last word, and the run's own final record may still be in flight), a live state
    only into a row no run records into (the run's own record is newer than our read)."""
    with Session(engine) as session:
        for found in updates:
            run = session.get(Run, found.run_id)
            if run is None or RunState(run.state).is_final:
                continue
            if run.recorded_at is not None and not found.state.is_final:
                continue
            run.state, run.error = found.state, found.error
            if found.state.is_final:
                run.ended_at = found.ended_at
            session.add(run)
        session.commit()
