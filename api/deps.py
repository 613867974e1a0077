"""FastAPI dependencies: the clients built once by the app's lifespan, and the caller.

Handlers declare what they need with the `Annotated` aliases below (`SettingsDep`,
`EngineDep`, `TemporalDep`, `Viewer`, `Operator`, `Admin`), so a route's required role
is visible in its signature and the role table test can check every route.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.api.auth import Authenticator, AuthError, Caller, Role


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_caller(request: Request) -> Caller:
    """Authenticate the request.

    Raises:
        HTTPException: 401 with `WWW-Authenticate: Bearer` when the token is missing or
            unknown. The detail never repeats the token.
    """
    authenticator: Authenticator = request.app.state.auth
    try:
        return authenticator.authenticate(request.headers.get("authorization"))
    except AuthError as e:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(e), headers={"WWW-Authenticate": "Bearer"}
        ) from None


def require(role: Role) -> Callable[[Caller], Caller]:
    """A dependency that lets callers with at least `role` through, else 403."""

    def check(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
        if not caller.role.allows(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this needs the {role.value} role; {caller.name!r} is a {caller.role.value}",
            )
        return caller

    return check


Viewer = Annotated[Caller, Depends(require(Role.VIEWER))]
Operator = Annotated[Caller, Depends(require(Role.OPERATOR))]
Admin = Annotated[Caller, Depends(require(Role.ADMIN))]


def metrics_access(request: Request) -> None:
    """`/metrics` is open unless `metrics_role` names a role; then it needs that role."""
    settings: Settings = request.app.state.settings
    if settings.metrics_role == "open":
        return
    require(Role(settings.metrics_role))(get_caller(request))


MetricsAccess = Annotated[None, Depends(metrics_access)]
