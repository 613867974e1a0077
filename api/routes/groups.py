"""`/groups`: secret and config groups, their versions and audit trail.

Roles: viewers and operators read every group's name, kind, tags, restriction and keys,
and the values of config groups; a secret value never appears in any answer but the
admin's explicit `POST /groups/{name}/reveal`, which is itself audited. Admins write.
Every write makes a new immutable version (see `shipflow.activities.core.groups`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from shipflow.activities.core.groups import (
    GroupChange,
    GroupError,
    GroupInvalid,
    GroupKeyMissing,
    GroupKind,
    GroupNotFound,
    GroupStore,
    GroupView,
)
from shipflow.api.deps import Admin, EngineDep, Operator, SettingsDep, Viewer
from shipflow.api.errors import error_responses

router = APIRouter(
    prefix="/groups", tags=["groups"], responses=error_responses(400, 401, 403, 404, 409, 413, 422)
)


class GroupPublic(BaseModel):
    """A group version as every role sees it: `values` only for config groups."""

    name: str
    kind: str
    version: int
    tags: list[str]
    stages: list[str] = Field(description="restriction: only these stages (empty: any)")
    services: list[str] = Field(description="restriction: only these services (empty: any)")
    keys: list[str]
    values: dict[str, str] | None = Field(description="config groups only; never a secret")
    deleted: bool = False
    created_by: str
    created_at: datetime


class GroupWrite(BaseModel):
    """`PUT /groups/{name}`: the next version. Omitted fields keep the current version's."""

    model_config = ConfigDict(extra="forbid")

    kind: GroupKind | None = Field(None, description="required for a new group")
    values: dict[str, str] = Field({}, description="keys to set (environment variable names)")
    unset: list[str] = Field([], description="keys to remove")
    tags: list[str] | None = None
    stages: list[str] | None = None
    services: list[str] | None = None
    replace: bool = Field(False, description="the new version holds only `values`")


class RevealRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    version: int | None = None


class Revealed(BaseModel):
    group: str
    version: int
    key: str
    value: str


class AuditEntry(BaseModel):
    group: str
    version: int | None
    action: str
    keys: list[str]
    actor: str
    at: datetime


class Resealed(BaseModel):
    resealed: int


def _public(view: GroupView) -> GroupPublic:
    return GroupPublic(**view.__dict__)


def _http(e: GroupError) -> HTTPException:
    if isinstance(e, GroupInvalid):
        return HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": loc, "msg": msg} for loc, msg in e.problems],
        )
    if isinstance(e, GroupNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(e))
    if isinstance(e, GroupKeyMissing):
        return HTTPException(status.HTTP_409_CONFLICT, str(e))
    return HTTPException(status.HTTP_409_CONFLICT, str(e))


async def _call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except GroupError as e:
        raise _http(e) from None


@router.get("", response_model=list[GroupPublic])
async def list_groups(
    _caller: Viewer, engine: EngineDep, settings: SettingsDep
) -> list[GroupPublic]:
    """Every group's newest version (deleted groups left out)."""
    views = await _call(GroupStore(engine, settings).all)
    return [_public(v) for v in views]


@router.get("/{name}", response_model=GroupPublic)
async def get_group(
    name: str,
    _caller: Viewer,
    engine: EngineDep,
    settings: SettingsDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> GroupPublic:
    """The newest version of a group, or `?version=N`."""
    return _public(await _call(GroupStore(engine, settings).get, name, version))


@router.get("/{name}/versions", response_model=list[GroupPublic])
async def group_versions(
    name: str, _caller: Viewer, engine: EngineDep, settings: SettingsDep
) -> list[GroupPublic]:
    """Every version, oldest first."""
    return [_public(v) for v in await _call(GroupStore(engine, settings).versions, name)]


@router.get("/{name}/audit", response_model=list[AuditEntry])
async def group_audit(
    name: str, _caller: Operator, engine: EngineDep, settings: SettingsDep
) -> list[AuditEntry]:
    """Who changed or revealed which keys, newest first. Never a value."""
    rows = await _call(GroupStore(engine, settings).audit, name)
    return [
        AuditEntry(
            group=r.group_name,
            version=r.version,
            action=r.action,
            keys=r.keys,
            actor=r.actor,
            at=r.at,
        )
        for r in rows
    ]


@router.put(
    "/{name}",
    response_model=GroupPublic,
    responses={201: {"model": GroupPublic, "description": "The group was created (version 1)"}},
)
async def put_group(
    name: str,
    body: GroupWrite,
    response: Response,
    caller: Admin,
    engine: EngineDep,
    settings: SettingsDep,
) -> GroupPublic:
    """Write the next version (201 when the group is new)."""
    change = GroupChange(
        kind=body.kind,
        set_values=body.values,
        unset=body.unset,
        tags=body.tags,
        stages=body.stages,
        services=body.services,
        replace=body.replace,
    )
    view = await _call(GroupStore(engine, settings).change, name, change, actor=caller.name)
    if view.version == 1:
        response.status_code = status.HTTP_201_CREATED
    return _public(view)


@router.delete("/{name}", response_model=GroupPublic)
async def delete_group(
    name: str, caller: Admin, engine: EngineDep, settings: SettingsDep
) -> GroupPublic:
    """A last, empty version: runs that used older versions can still be rolled back to."""
    return _public(await _call(GroupStore(engine, settings).delete, name, actor=caller.name))


@router.post("/{name}/reveal", response_model=Revealed)
async def reveal(
    name: str, body: RevealRequest, caller: Admin, engine: EngineDep, settings: SettingsDep
) -> Revealed:
    """One secret (or config) value, for an admin who asks for it by key; audited."""
    store = GroupStore(engine, settings)
    value = await _call(store.reveal, name, body.key, actor=caller.name, version=body.version)
    version = body.version or (await _call(store.get, name)).version
    return Revealed(group=name, version=version, key=body.key, value=value)


@router.post("/reseal", response_model=Resealed)
async def reseal(caller: Admin, engine: EngineDep, settings: SettingsDep) -> Resealed:
    """Seal every stored secret value again with the key now first in the key file."""
    count = await _call(GroupStore(engine, settings).reencrypt, actor=caller.name)
    return Resealed(resealed=count)
