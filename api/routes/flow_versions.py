"""`/flows/{name}/versions` and `/flows/{name}/diff`: every applied version of a flow and
what changed between two of them.

The diff is the one `shipflow flow diff` prints (`shipflow.workflows.flowdiff`: steps matched
by id, so a moved step shows as moved; triggers; the Temporal Schedules they become; the
flow's settings), here between two stored versions rather than a file and the applied one.
Sources are shown with literal secrets redacted, as `GET /flows/{name}` does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from shipflow.activities.core.tables import Flow, FlowVersion
from shipflow.api.deps import SessionDep, Viewer
from shipflow.api.errors import error_responses
from shipflow.workflows.flowdiff import diff_flows
from shipflow.workflows.spec import FlowError, FlowSpec, load_flow_text, redact_literal_secrets

router = APIRouter(
    prefix="/flows", tags=["flows"], responses=error_responses(400, 401, 403, 404, 422)
)


class FlowVersionPublic(BaseModel):
    flow: str
    version: int
    created_at: datetime
    current: bool = Field(description="the version new runs use")


class FlowVersionDetail(FlowVersionPublic):
    source: str


class FlowChange(BaseModel):
    change: str = Field(description="`+` added, `-` removed, `~` changed")
    what: str = Field(description="step | trigger | schedule | flow")
    name: str
    detail: str = ""


class FlowVersionDiff(BaseModel):
    flow: str
    from_version: int
    to_version: int
    changes: list[FlowChange]
    note: str | None = Field(None, description="when a version no longer parses")


def _versions(session: Session, name: str) -> tuple[Flow, list[FlowVersion]]:
    flow = session.get(Flow, name)
    if flow is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no flow named {name!r}")
    rows = session.exec(
        select(FlowVersion)
        .where(FlowVersion.flow == name)
        .order_by(col(FlowVersion.version).desc())
    ).all()
    return flow, list(rows)


def _one(session: Session, name: str, version: int, field: str) -> FlowVersion:
    row = session.exec(
        select(FlowVersion).where(FlowVersion.flow == name, FlowVersion.version == version)
    ).first()
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            [{"loc": field, "msg": f"flow {name!r} has no version {version}"}],
        )
    return row


@router.get("/{name}/versions", response_model=list[FlowVersionPublic])
def list_versions(name: str, _caller: Viewer, session: SessionDep) -> list[FlowVersionPublic]:
    """Every applied version of the flow, newest first."""
    flow, rows = _versions(session, name)
    return [
        FlowVersionPublic(
            flow=name, version=r.version, created_at=r.created_at, current=r.version == flow.version
        )
        for r in rows
    ]


@router.get("/{name}/versions/{version}", response_model=FlowVersionDetail)
def get_version(name: str, version: int, _caller: Viewer, session: SessionDep) -> FlowVersionDetail:
    """One version's source as it was applied (literal secrets redacted)."""
    flow, _ = _versions(session, name)
    row = _one(session, name, version, "version")
    return FlowVersionDetail(
        flow=name,
        version=row.version,
        created_at=row.created_at,
        current=row.version == flow.version,
        source=redact_literal_secrets(row.source),
    )


def _spec(source: str) -> FlowSpec | None:
    """The version's flow, read from its source with literal secrets already masked (the
    diff prints changed values)."""
    try:
        return load_flow_text(redact_literal_secrets(source))
    except FlowError:
        return None


@router.get("/{name}/diff", response_model=FlowVersionDiff)
def diff_versions(
    name: str,
    _caller: Viewer,
    session: SessionDep,
    from_version: Annotated[int, Query(alias="from", ge=1, description="the older version")],
    to_version: Annotated[
        int | None, Query(alias="to", ge=1, description="default: the current version")
    ] = None,
) -> FlowVersionDiff:
    """What changed from version `from` to version `to` (as `shipflow flow diff` shows it)."""
    flow, _ = _versions(session, name)
    target = to_version if to_version is not None else flow.version
    old = _one(session, name, from_version, "from")
    new = _one(session, name, target, "to")
    old_spec, new_spec = _spec(old.source), _spec(new.source)
    if new_spec is None:
        return FlowVersionDiff(
            flow=name,
            from_version=from_version,
            to_version=target,
            changes=[],
            note=f"version {target} no longer parses under this shipflow's flow schema",
        )
    diff = diff_flows(old_spec, new_spec, from_version)
    note = None
    if old_spec is None:
        note = f"version {from_version} no longer parses: everything shows as new"
    return FlowVersionDiff(
        flow=name,
        from_version=from_version,
        to_version=target,
        changes=[FlowChange.model_validate(c.as_json()) for c in diff.changes],
        note=note,
    )
