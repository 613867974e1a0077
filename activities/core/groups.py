"""Secret and config groups: validated changes, immutable versions, audit, sealed values.

`GroupStore` is the one way to the group tables, shared by the API (which manages groups)
and the worker (which reads a version's values at the moment a service or a migration
gets them). Each change writes a whole new version; a run names the versions it used and
a rollback asks for exactly those again. Secret values are sealed with the groups key
(`group_crypto`) before they reach the database and opened only on the worker (to inject
them) or by an audited admin reveal. The audit trail names keys, never values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from shipflow.activities.core import group_crypto
from shipflow.activities.core.codec import KeyRing
from shipflow.activities.core.group_tables import ConfigGroup, GroupAudit, GroupVersion
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import utcnow

GroupKind = Literal["secret", "config"]
KINDS: tuple[str, ...] = ("secret", "config")
#: What an environment variable name may be (POSIX shells' rule).
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
#: Group names, tags, stage and service names: the flow's name rule.
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_VALUE_BYTES = 32 * 1024
MAX_KEYS = 500
MAX_LIST = 50


class GroupError(Exception):
    """Base of the store's errors; messages never hold a value."""


class GroupInvalid(GroupError):
    """Bad input: `problems` are (field path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


class GroupNotFound(GroupError):
    pass


class GroupKeyMissing(GroupError):
    """The groups key is missing or wrong (wraps `group_crypto.GroupKeyError`)."""


@dataclass
class GroupView:
    """A version of a group as any role may see it: values only for config groups."""

    name: str
    kind: str
    version: int
    tags: list[str]
    stages: list[str]
    services: list[str]
    keys: list[str]
    values: dict[str, str] | None
    deleted: bool
    created_by: str
    created_at: datetime


@dataclass
class GroupChange:
    """One requested change; None fields keep what the current version has."""

    kind: str | None = None
    set_values: dict[str, str] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    tags: list[str] | None = None
    stages: list[str] | None = None
    services: list[str] | None = None
    #: Replace every key with `set_values` (an import of a whole file).
    replace: bool = False


def check_name(name: str, where: str = "name") -> list[tuple[str, str]]:
    if not NAME.match(name):
        return [(where, f"{name!r} is not a valid name: lowercase letters, digits and '-', 1-63")]
    return []


def validate_change(name: str, change: GroupChange) -> list[tuple[str, str]]:
    """Every problem of a change, each with the field it is in (nothing is written if any)."""
    problems = check_name(name)
    if change.kind is not None and change.kind not in KINDS:
        problems.append(("kind", f"{change.kind!r} is not a kind: use secret or config"))
    for key, value in change.set_values.items():
        if not ENV_NAME.match(key):
            problems.append(
                (
                    f"values.{key}",
                    "not a valid environment variable name: letters, digits and "
                    "'_', not starting with a digit, at most 255",
                )
            )
        if not isinstance(value, str):
            problems.append((f"values.{key}", "a value is text"))
        elif len(value.encode()) > MAX_VALUE_BYTES:
            problems.append(
                (
                    f"values.{key}",
                    f"the value is {len(value.encode())} bytes; at most {MAX_VALUE_BYTES} allowed",
                )
            )
    if len(change.set_values) > MAX_KEYS:
        problems.append(("values", f"{len(change.set_values)} keys; at most {MAX_KEYS}"))
    for key in change.unset:
        if not ENV_NAME.match(key):
            problems.append((f"unset.{key}", "not a valid environment variable name"))
    for what in ("tags", "stages", "services"):
        items = getattr(change, what)
        if items is None:
            continue
        if len(items) > MAX_LIST:
            problems.append((what, f"at most {MAX_LIST} entries"))
        for i, item in enumerate(items):
            if not isinstance(item, str) or not NAME.match(item):
                problems.append(
                    (
                        f"{what}[{i}]",
                        f"{item!r} is not a valid name: lowercase letters, digits and '-', 1-63",
                    )
                )
    return problems


class GroupStore:
    """The groups in the database, with the key file named by `settings`."""

    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings

    # ------------------------------------------------------------ reading

    def _ring(self) -> KeyRing:
        try:
            return group_crypto.load_ring(self.settings)
        except group_crypto.GroupKeyError as e:
            raise GroupKeyMissing(str(e)) from None

    @staticmethod
    def _view(row: GroupVersion) -> GroupView:
        return GroupView(
            name=row.group_name,
            kind=row.kind,
            version=row.version,
            tags=list(row.tags),
            stages=list(row.stages),
            services=list(row.services),
            keys=sorted(row.data),
            values=dict(row.data) if row.kind == "config" else None,
            deleted=row.deleted,
            created_by=row.created_by,
            created_at=row.created_at,
        )

    def _row(self, session: Session, name: str, version: int | None) -> GroupVersion:
        if version is None:
            head = session.get(ConfigGroup, name)
            if head is None:
                raise GroupNotFound(f"no group {name!r}")
            version = head.version
        row = session.exec(
            select(GroupVersion).where(
                GroupVersion.group_name == name, GroupVersion.version == version
            )
        ).first()
        if row is None:
            raise GroupNotFound(f"group {name!r} has no version {version}")
        return row

    def get(self, name: str, version: int | None = None) -> GroupView:
        with Session(self.engine) as session:
            return self._view(self._row(session, name, version))

    def all(self, *, include_deleted: bool = False) -> list[GroupView]:
        """The newest version of every group (by name)."""
        with Session(self.engine) as session:
            query = (
                select(GroupVersion)
                .join(
                    ConfigGroup,
                    (col(ConfigGroup.name) == col(GroupVersion.group_name))
                    & (col(ConfigGroup.version) == col(GroupVersion.version)),
                )
                .order_by(col(GroupVersion.group_name))
            )
            if not include_deleted:
                query = query.where(col(ConfigGroup.deleted).is_(False))
            return [self._view(row) for row in session.exec(query).all()]

    def versions(self, name: str) -> list[GroupView]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(GroupVersion)
                .where(GroupVersion.group_name == name)
                .order_by(col(GroupVersion.version))
            ).all()
        if not rows:
            raise GroupNotFound(f"no group {name!r}")
        return [self._view(r) for r in rows]

    def audit(self, name: str | None = None, limit: int = 200) -> list[GroupAudit]:
        with Session(self.engine) as session:
            query = select(GroupAudit).order_by(col(GroupAudit.id).desc()).limit(limit)
            if name is not None:
                query = query.where(GroupAudit.group_name == name)
            return list(session.exec(query).all())

    def values(self, name: str, version: int) -> dict[str, str]:
        """A version's values in clear: for the worker injecting them, nobody else.

        Raises:
            GroupNotFound: no such group or version.
            GroupKeyMissing: a secret group and no (or the wrong) key.
        """
        with Session(self.engine) as session:
            row = self._row(session, name, version)
        if row.kind == "config" or not row.data:
            return dict(row.data)
        ring = self._ring()
        try:
            return {k: group_crypto.open_value(ring, name, k, v) for k, v in row.data.items()}
        except group_crypto.GroupKeyError as e:
            raise GroupKeyMissing(str(e)) from None

    def reveal(self, name: str, key: str, *, actor: str, version: int | None = None) -> str:
        """One secret value for an admin who asked for it explicitly; audited.

        Raises:
            GroupNotFound: no such group, version or key.
        """
        with Session(self.engine) as session:
            row = self._row(session, name, version)
        if key not in row.data:
            raise GroupNotFound(f"group {name!r} version {row.version} has no key {key!r}")
        value = self.values(name, row.version)[key]
        self._audit(name, row.version, "reveal", [key], actor)
        return value

    # ------------------------------------------------------------ writing

    def change(self, name: str, change: GroupChange, *, actor: str) -> GroupView:
        """Write the next version of `name` (creating the group at version 1).

        Raises:
            GroupInvalid: bad input, or a kind that differs from the group's.
            GroupKeyMissing: secret values and no key to seal them.
        """
        problems = validate_change(name, change)
        if problems:
            raise GroupInvalid(problems)
        for attempt in range(5):
            try:
                return self._change_once(name, change, actor)
            except IntegrityError:  # another writer took the same version number: again
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _change_once(self, name: str, change: GroupChange, actor: str) -> GroupView:
        with Session(self.engine) as session:
            head = session.get(ConfigGroup, name)
            current = self._row(session, name, head.version) if head is not None else None
            if current is not None and current.deleted:
                current = None  # a deleted group starts again from nothing (its history stays)
            kind = change.kind or (current.kind if current is not None else None)
            if kind is None:
                raise GroupInvalid([("kind", "a new group needs a kind: secret or config")])
            if current is not None and change.kind is not None and change.kind != current.kind:
                raise GroupInvalid(
                    [
                        (
                            "kind",
                            f"group {name!r} is a {current.kind} group; it cannot become "
                            f"{change.kind} (delete it first)",
                        )
                    ]
                )
            missing = [k for k in change.unset if current is None or k not in current.data]
            if missing:
                raise GroupInvalid(
                    [(f"unset.{k}", f"group {name!r} has no key {k!r}") for k in missing]
                )
            data: dict[str, str] = {} if change.replace or current is None else dict(current.data)
            if change.set_values and kind == "secret":
                ring = self._ring()
                sealed = {
                    k: group_crypto.seal(ring, name, k, v) for k, v in change.set_values.items()
                }
                data.update(sealed)
            else:
                data.update(change.set_values)
            for key in change.unset:
                data.pop(key, None)
            if len(data) > MAX_KEYS:
                raise GroupInvalid(
                    [("values", f"the group would hold {len(data)} keys; at most {MAX_KEYS}")]
                )
            version = (head.version + 1) if head is not None else 1
            row = GroupVersion(
                group_name=name,
                version=version,
                kind=kind,
                tags=change.tags if change.tags is not None else (current.tags if current else []),
                stages=(
                    change.stages
                    if change.stages is not None
                    else (current.stages if current else [])
                ),
                services=(
                    change.services
                    if change.services is not None
                    else (current.services if current else [])
                ),
                data=data,
                created_by=actor,
            )
            if head is None:
                head = ConfigGroup(name=name, kind=kind, version=version)
            head.kind, head.version, head.deleted, head.updated_at = kind, version, False, utcnow()
            action = (
                "create"
                if current is None
                else ("unset" if change.unset and not change.set_values else "set")
            )
            session.add(row)
            session.add(head)
            session.add(
                GroupAudit(
                    group_name=name,
                    version=version,
                    action=action,
                    keys=sorted({*change.set_values, *change.unset}),
                    actor=actor,
                )
            )
            session.commit()
            session.refresh(row)
            return self._view(row)

    def delete(self, name: str, *, actor: str) -> GroupView:
        """A last, empty version marked deleted: runs that used older versions keep them."""
        with Session(self.engine) as session:
            head = session.get(ConfigGroup, name)
            if head is None or head.deleted:
                raise GroupNotFound(f"no group {name!r}")
            version = head.version + 1
            row = GroupVersion(
                group_name=name, version=version, kind=head.kind, deleted=True, created_by=actor
            )
            head.version, head.deleted, head.updated_at = version, True, utcnow()
            session.add(row)
            session.add(head)
            session.add(GroupAudit(group_name=name, version=version, action="delete", actor=actor))
            session.commit()
            session.refresh(row)
            return self._view(row)

    def reencrypt(self, *, actor: str) -> int:
        """Seal every stored secret value again with the current (first) key: after a new
        key was put first in the key file, the old one can then be removed. Returns how
        many values were sealed again. The versions' contents do not change."""
        ring = self._ring()
        count = 0
        with Session(self.engine) as session:
            rows = session.exec(select(GroupVersion).where(GroupVersion.kind == "secret")).all()
            for row in rows:
                if not row.data:
                    continue
                data: dict[str, str] = {}
                for key, sealed in row.data.items():
                    if group_crypto.key_id_of(sealed) == ring.current_id:
                        data[key] = sealed
                        continue
                    try:
                        clear = group_crypto.open_value(ring, row.group_name, key, sealed)
                    except group_crypto.GroupKeyError as e:
                        raise GroupKeyMissing(str(e)) from None
                    data[key] = group_crypto.seal(ring, row.group_name, key, clear)
                    count += 1
                row.data = data
                session.add(row)
            session.add(GroupAudit(group_name="*", action="reencrypt", actor=actor))
            session.commit()
        return count

    def record_uses(self, uses: Iterable[tuple[str, int, Iterable[str]]], actor: str) -> None:
        """Audit that the worker read these (group, version, keys) to inject them (`inject`),
        in one transaction."""
        rows = [
            GroupAudit(
                group_name=name, version=version, action="inject", keys=sorted(keys), actor=actor
            )
            for name, version, keys in uses
        ]
        if rows:
            with Session(self.engine) as session:
                session.add_all(rows)
                session.commit()

    def _audit(
        self, name: str, version: int | None, action: str, keys: Iterable[str], actor: str
    ) -> None:
        with Session(self.engine) as session:
            session.add(
                GroupAudit(
                    group_name=name, version=version, action=action, keys=sorted(keys), actor=actor
                )
            )
            session.commit()
