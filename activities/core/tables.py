"""The database tables: what Temporal does not hold.

Flow definitions and their versions, an index of runs (Temporal stays the source of
truth for a run's state; the index makes listing by flow, stage and status cheap),
and the release record of each stage: which image each service got from which run,
which is what promotion and rollback read. Importable without FastAPI.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


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


class Run(SQLModel, table=True):
    """Index of runs. The state is refreshed from Temporal; Temporal is the truth."""

    run_id: str = Field(primary_key=True, max_length=200)
    flow: str = Field(index=True, max_length=63)
    stage: str = Field(index=True, max_length=63)
    flow_version: int = 1
    state: str = Field(index=True, max_length=32, default="pending")
    reason: str | None = None
    triggered_by: str | None = None
    trigger: str = "api"
    args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, index=True)
    ended_at: datetime | None = None


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
    created_at: datetime = Field(default_factory=utcnow, index=True)


class WebhookDelivery(SQLModel, table=True):
    """A git webhook delivery seen, so a redelivery never starts a second run."""

    delivery_id: str = Field(primary_key=True, max_length=200)
    provider: str = Field(max_length=16)
    runs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    received_at: datetime = Field(default_factory=utcnow)
