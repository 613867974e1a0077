"""Engine creation, shared by the API and by the record activities on the worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, create_engine

from shipflow.activities.core import steplogs, tables  # noqa: F401  (registers the tables)


def make_engine(url: str) -> Engine:
    """Create an engine and the tables. SQLite gets a directory and WAL for concurrency."""
    connect_args: dict[str, object] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    if url.startswith("sqlite"):
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=30000")

    _create_tables(engine)
    return engine


def _create_tables(engine: Engine) -> None:
    """Create missing tables. The worker and the API may start together on a new database:
    when both try, one loses the race with "already exists"; trying again then finds them."""
    for attempt in range(5):
        try:
            SQLModel.metadata.create_all(engine)
            return
        except DBAPIError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def sessions(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session
