"""The database tables: what Temporal does not hold.

Flow definitions and their versions, an index of runs (Temporal stays the source of
truth for a run's state; the index makes listing by flow, stage and status cheap),
and the release record of each stage: which image each service got from which run,
which is what promotion and rollback read. Importable without FastAPI.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from shipflow.workflows.status import RunState, RunSummary


def utcnow() -> datetime:
    return datetime.now(UTC)


class FlowBase(SQLModel):
    name: str = Field(primary_key=True, max_length=63)
    stage: str = Field(index=True, max_length=63)
    version: int = 1


class Flow(FlowBase, table=True):
    """The current version of each applied flow."""

    source: str = Field(sa_column=Column(Text, nullable=False))
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class FlowVersion(SQLModel, table=True):
    """Every version ever applied: a run names the version it ran."""

    __table_args__ = (UniqueConstraint("flow", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    flow: str = Field(index=True, max_length=63)
    version: int
    source: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, RunSummary, table=True):
    """Index of runs: a run's summary (`RunSummary`, the columns it shares with every other
    view of a run) plus how it was started and when.

    Each run writes its own row as its state changes (queued, running, waiting, final; see
    `shipflow.activities.records`), so listing and filtering read this table alone.
    `recorded_at` says when the run itself last wrote its state: None for a row only the API
    wrote (a run not yet started, or started by a version that did not record its states).
    """

    __table_args__ = (
        # Listing is newest first, with (created_at, run_id) as the paging key; each filter
        # that narrows a lot gets its own ordered index so a page is one index range scan.
        Index("ix_run_page", "created_at", "run_id"),
        Index("ix_run_flow_page", "flow", "created_at", "run_id"),
        Index("ix_run_stage_page", "stage", "created_at", "run_id"),
        Index("ix_run_state_page", "state", "created_at", "run_id"),
    )

    run_id: str = Field(primary_key=True, max_length=200)
    flow: str = Field(index=True, max_length=63)
    stage: str = Field(index=True, max_length=63)
    # Stored as text (not a database enum), as it always was; read back as a plain string.
    state: RunState = Field(
        default=RunState.PENDING, index=True, sa_type=String(32)  # type: ignore[call-overload]
    )
    args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    trigger: str = "api"
    created_at: datetime = Field(default_factory=utcnow, index=True)
    recorded_at: datetime | None = None


class ReleaseRecord(SQLModel, table=True):
    """One service of one stage got one image from one run (deploy, promote, undo)."""

    id: int | None = Field(default=None, primary_key=True)
    stage: str = Field(index=True, max_length=63)
    service: str = Field(index=True, max_length=63)
    image: str
    previous_image: str | None = None
    run_id: str = Field(index=True, max_length=200)
    flow: str = Field(max_length=63)
    step_id: str = Field(max_length=63)
    kind: str = Field(default="deploy", max_length=16)
    #: The version of each secret/config group the service got ({name: version}); None: a
    #: record from before groups (or a target that takes none).
    groups: dict[str, int] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class WebhookDelivery(SQLModel, table=True):
    """A git webhook delivery seen, so a redelivery never starts a second run."""

    delivery_id: str = Field(primary_key=True, max_length=200)
    provider: str = Field(max_length=16)
    runs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    received_at: datetime = Field(default_factory=utcnow)
