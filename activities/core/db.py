"""Engine creation, shared by the API and by the record activities on the worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, create_engine

from shipflow.activities.core import group_tables, steplogs, tables  # noqa: F401  (registers the tables)


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
            _add_missing(engine)
            return
        except DBAPIError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def _add_missing(engine: Engine) -> None:
    """Bring a database made by an older version up to the tables: add the nullable columns
    and the indexes it lacks. Only additive changes are made this way (create_all creates
    new tables but never touches existing ones); anything else needs a real migration."""
    inspector = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        have = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in have]
        for column in missing:
            if not column.nullable:
                raise RuntimeError(
                    f"table {table.name} lacks the required column {column.name}: migrate it"
                )
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as connection:
                connection.execute(
                    text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}')
                )
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(engine, checkfirst=True)


def sessions(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session
