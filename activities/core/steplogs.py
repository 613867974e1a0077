"""Step logs: the lines a step prints (command output, rollout progress, probe results,
backup progress), kept in the shipflow database and bounded per step.

Why the database: the worker writes and the API reads, and in production they run on
different hosts; the database is the one store both already reach (a file under the data
dir is only readable when they share a disk). Heartbeat details are not a log store:
Temporal keeps only the last one. Lines are written by the activities themselves, so a log
is as durable as the step, and every line goes through `shipflow.workflows.redaction`
before it is stored.

Bounds: the newest `MAX_LINES` lines and at most `MAX_BYTES` bytes per step are kept; older
lines are dropped and counted, so readers can say that the log was cut and by how much.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Engine, Index, Integer, Text, delete, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from shipflow.activities.core.tables import utcnow
from shipflow.workflows.redaction import redact

#: Lines kept per step (the newest).
MAX_LINES = 10_000
#: Bytes of text kept per step (the newest lines).
MAX_BYTES = 5 * 1024 * 1024
#: One line longer than this is cut (a binary blob printed by a command is not a log).
MAX_LINE_CHARS = 4096


class StepLogLine(SQLModel, table=True):
    """One line of a step's log; `seq` counts from 1 per (run, step), never reused."""

    __tablename__ = "step_log_line"
    __table_args__ = (Index("ix_step_log_line_step_seq", "run_id", "step_id", "seq", unique=True),)

    # SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere 64 bits.
    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    run_id: str = Field(max_length=200)
    step_id: str = Field(max_length=63)
    seq: int
    at: datetime = Field(default_factory=utcnow)
    text: str = Field(sa_column=Column(Text, nullable=False))


class StepLog(SQLModel, table=True):
    """Per step: how many lines were ever written, how many bytes are kept, how many dropped."""

    __tablename__ = "step_log"

    run_id: str = Field(primary_key=True, max_length=200)
    step_id: str = Field(primary_key=True, max_length=63)
    written: int = 0
    kept_bytes: int = 0
    dropped: int = 0
    updated_at: datetime = Field(default_factory=utcnow)


def clean_lines(text: str, secrets: Iterable[str] = ()) -> list[str]:
    """`text` as redacted log lines: split on newlines (a trailing one adds no line), carriage
    returns and NULs removed, each line cut at `MAX_LINE_CHARS`."""
    secrets = list(secrets)
    out: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.replace("\r", "").replace("\x00", "")
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + f" … (line cut at {MAX_LINE_CHARS} characters)"
        out.append(redact(line, secrets))
    if out and out[-1] == "" and text.endswith("\n"):
        out.pop()
    return out


def append_lines(engine: Engine, run_id: str, step_id: str, lines: list[str]) -> int:
    """Store `lines` (already redacted) after the step's last line; returns the last seq.

    Trims the step's log to its bounds in the same transaction. The step's `StepLog` row is
    locked while the lines are numbered, so two writers of one step (an attempt and its
    compensation) never take the same numbers.
    """
    if not lines:
        return 0
    for attempt in range(5):
        try:
            return _append(engine, run_id, step_id, lines)
        except IntegrityError:  # another writer created the StepLog row first
            if attempt == 4:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _append(engine: Engine, run_id: str, step_id: str, lines: list[str]) -> int:
    with Session(engine) as session:
        head = session.exec(
            select(StepLog)
            .where(StepLog.run_id == run_id, StepLog.step_id == step_id)
            .with_for_update()
        ).first()
        if head is None:
            head = StepLog(run_id=run_id, step_id=step_id)
        now = utcnow()
        for line in lines:
            head.written += 1
            head.kept_bytes += len(line.encode())
            session.add(
                StepLogLine(run_id=run_id, step_id=step_id, seq=head.written, at=now, text=line)
            )
        head.updated_at = now
        session.add(head)
        session.flush()
        _trim(session, head)
        session.commit()
        return head.written


def _trim(session: Session, head: StepLog) -> None:
    """Drop the oldest lines beyond `MAX_LINES` or `MAX_BYTES`."""
    where = (col(StepLogLine.run_id) == head.run_id, col(StepLogLine.step_id) == head.step_id)
    kept = head.written - head.dropped
    cut_below = 0  # lines with seq <= cut_below go
    if kept > MAX_LINES:
        cut_below = head.written - MAX_LINES
    if head.kept_bytes > MAX_BYTES:
        excess = head.kept_bytes - MAX_BYTES
        rows = session.exec(
            select(StepLogLine.seq, func.length(StepLogLine.text))
            .where(*where, col(StepLogLine.seq) > cut_below)
            .order_by(col(StepLogLine.seq))
        )
        freed = 0
        for seq, length in rows:
            if freed >= excess:
                break
            freed += int(length or 0)
            cut_below = seq
    if cut_below <= head.dropped:
        return
    gone = session.exec(
        select(func.count(), func.coalesce(func.sum(func.length(StepLogLine.text)), 0)).where(
            *where, col(StepLogLine.seq) <= cut_below
        )
    ).one()
    session.execute(delete(StepLogLine).where(*where, col(StepLogLine.seq) <= cut_below))
    head.dropped = cut_below
    head.kept_bytes = max(0, head.kept_bytes - int(gone[1]))
    session.add(head)


def read_lines(
    engine: Engine, run_id: str, step_id: str, *, after: int = 0, limit: int = 1000
) -> dict[str, Any]:
    """Lines with `seq > after`, oldest first, at most `limit`; plus the step's bounds.

    Returns `{"lines": [{"seq", "at", "text"}], "next": <last seq returned or after>,
    "written": n, "dropped": n}`.
    """
    with Session(engine) as session:
        head = session.get(StepLog, (run_id, step_id))
        rows = session.exec(
            select(StepLogLine)
            .where(
                StepLogLine.run_id == run_id,
                StepLogLine.step_id == step_id,
                col(StepLogLine.seq) > after,
            )
            .order_by(col(StepLogLine.seq))
            .limit(limit)
        ).all()
    lines = [{"seq": r.seq, "at": r.at, "text": r.text} for r in rows]
    return {
        "lines": lines,
        "next": lines[-1]["seq"] if lines else after,
        "written": head.written if head else 0,
        "dropped": head.dropped if head else 0,
    }


def logged_steps(engine: Engine, run_id: str) -> dict[str, int]:
    """`{step_id: lines written}` for every step of the run that has a log."""
    with Session(engine) as session:
        rows = session.exec(select(StepLog).where(StepLog.run_id == run_id)).all()
    return {r.step_id: r.written for r in rows}


class StepLogWriter:
    """Writes one step's lines from an activity, redacted with the step's secret values.

    Writes are best effort: a database hiccup loses log lines, never the step (the log
    is there to read, the step's result is what the run needs).
    """

    def __init__(
        self, engine: Engine | None, run_id: str, step_id: str, secrets: Iterable[str] = ()
    ):
        self._engine = engine
        self.run_id = run_id
        self.step_id = step_id
        self._secrets = list(secrets)
        self._last: str | None = None

    def write(self, text: str) -> None:
        """Add `text` (one or more lines)."""
        if self._engine is None or not text:
            return
        lines = clean_lines(text, self._secrets)
        try:
            append_lines(self._engine, self.run_id, self.step_id, lines)
        except Exception:  # best effort: see the class docstring
            logging.getLogger("shipflow.steplogs").warning(
                "could not store %d log line(s) of %s/%s", len(lines), self.run_id, self.step_id,
                exc_info=True,
            )

    def changed(self, text: str) -> None:
        """Add `text` unless it repeats the line written last (progress polled in a loop)."""
        if text != self._last:
            self._last = text
            self.write(text)
