"""The tables of secret and config groups: the group, its immutable versions, its audit trail.

A group (`kind` secret or config) is a set of keys a flow's services and migrate steps
take as environment variables. Every change writes a new `GroupVersion` whole (tags,
restriction and every key), never an update in place, so a run can name exactly which
version of each group it used and a rollback can put that version back. A secret
version's values are ciphertext (`shipflow.activities.core.group_crypto`); a config
version's are clear text (they are not sensitive, and viewers may read them).

`GroupAudit` records who did what to which keys when: never a value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from shipflow.activities.core.tables import utcnow


class ConfigGroup(SQLModel, table=True):
    """One group and its newest version (`deleted`: its newest version removed it)."""

    __tablename__ = "config_group"

    name: str = Field(primary_key=True, max_length=63)
    kind: str = Field(max_length=8)
    version: int = 1
    deleted: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class GroupVersion(SQLModel, table=True):
    """One version of a group: everything a run that used it needs to use it again."""

    __tablename__ = "config_group_version"
    __table_args__ = (UniqueConstraint("group_name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    group_name: str = Field(index=True, max_length=63)
    version: int
    kind: str = Field(max_length=8)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    stages: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    services: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: key -> value (config) or key -> sealed value (secret, see `group_crypto.seal`).
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    deleted: bool = False
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class GroupAudit(SQLModel, table=True):
    """Who changed (or revealed) which keys of which group, and which run's step the worker
    injected them into, when. Never a value."""

    __tablename__ = "config_group_audit"

    id: int | None = Field(default=None, primary_key=True)
    group_name: str = Field(index=True, max_length=63)
    version: int | None = None
    action: str = Field(max_length=16)  # create | set | unset | delete | reveal | reencrypt | inject
    keys: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    actor: str = Field(default="", max_length=200)
    at: datetime = Field(default_factory=utcnow, index=True)
