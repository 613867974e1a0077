"""`GET /runs` reads the runs index alone: filters, cursor paging, the states runs record
themselves, the bounded fallback for rows no run recorded into, and the schema upgrade
that brings an older database up to the index."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import create_engine, inspect, text
from sqlmodel import Session
from temporalio.client import Client

from shipflow.activities.core.db import make_engine
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import Run
from shipflow.activities.records import RecordActivities
from shipflow.api.runs_listing import LEGACY_REFRESH_LIMIT
from shipflow.workflows.io.records import RunRecordInput
from shipflow.workflows.status import RunState
from tests.api.conftest import api_client
from tests.api.test_runs import GATED, apply, start, step_waiting, unique
from tests.helpers import new_worker, wait_until


def _rows(engine_url: str, flow: str, count: int) -> list[Run]:
    """`count` rows of `flow`, one second apart, with a spread of triggers and callers; some
    share a creation time so that paging must break ties by run id."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(count):
        rows.append(
            Run(
                run_id=f"{flow}-{i:04d}",
                flow=flow,
                stage="qa" if i % 2 else "prod",
                state=RunState.SUCCEEDED if i % 3 else RunState.RUNNING,
                trigger=("api", "schedule", "github")[i % 3],
                triggered_by=f"user{i % 4}",
                created_at=base + timedelta(seconds=i // 3),
                recorded_at=base,
            )
        )
    engine = make_engine(engine_url)
    with Session(engine, expire_on_commit=False) as session:
        session.add_all(rows)
        session.commit()
    engine.dispose()
    return rows


async def _walk(http: httpx.AsyncClient, params: dict[str, Any]) -> tuple[list[str], int]:
    """Every page of a listing by its cursors: the run ids in order and the number of pages."""
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        response = await http.get("/runs", params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        pages += 1
        seen += [r["run_id"] for r in response.json()]
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            assert "link" not in response.headers
            return seen, pages
        link = response.headers["link"]
        assert link.startswith("<http://shipflow.test/runs?") and link.endswith('>; rel="next"')
        assert f"cursor={cursor}" in link
        assert pages < 100, "the cursor does not advance"


async def test_filters_and_cursor_paging(db_settings: Settings) -> None:
    flow = unique("paged")
    rows = _rows(db_settings.sqlalchemy_url(), flow, 61)
    newest_first = [r.run_id for r in sorted(rows, key=lambda r: (r.created_at, r.run_id), reverse=True)]
    async with api_client(db_settings) as http:
        seen, pages = await _walk(http, {"flow": flow, "limit": 7})
        assert seen == newest_first
        assert pages == 9

        first = await http.get("/runs", params={"flow": flow})
        assert len(first.json()) == 50  # the default limit
        assert "x-next-cursor" in first.headers

        for name, value, keep in (
            ("trigger", "github", lambda r: r.trigger == "github"),
            ("triggered_by", "user1", lambda r: r.triggered_by == "user1"),
            ("stage", "qa", lambda r: r.stage == "qa"),
            ("status", "running", lambda r: r.state == "running"),
        ):
            wanted = [i for i in newest_first if keep(next(r for r in rows if r.run_id == i))]
            got, _ = await _walk(http, {"flow": flow, name: value, "limit": 4})
            assert got == wanted, name
        both, _ = await _walk(http, {"flow": flow, "trigger": "api", "stage": "prod", "limit": 3})
        assert both == [
            r.run_id
            for r in sorted(rows, key=lambda r: (r.created_at, r.run_id), reverse=True)
            if r.trigger == "api" and r.stage == "prod"
        ]
        assert (await http.get("/runs", params={"flow": flow, "trigger": "cron"})).json() == []

        # A page's cursor still works when newer runs arrive: no row twice, none skipped.
        page = await http.get("/runs", params={"flow": flow, "limit": 10})
        _rows(db_settings.sqlalchemy_url(), flow + "-late", 5)
        rest, _ = await _walk(
            http, {"flow": flow, "limit": 10, "cursor": page.headers["x-next-cursor"]}
        )
        assert [r["run_id"] for r in page.json()] + rest == newest_first

        for bad in ("nope", "", "!!!", "W10", "WyJ4IiwgMV0", "eyJhIjogMX0"):
            response = await http.get("/runs", params={"cursor": bad})
            assert response.status_code == 422, (bad, response.text)
            [problem] = response.json()["detail"]
            assert problem["loc"] == "cursor"
            assert "X-Next-Cursor" in problem["msg"]
        for bad_limit in (0, 501, "x"):
            response = await http.get("/runs", params={"limit": bad_limit})
            assert response.status_code == 422
            assert response.json()["detail"][0]["loc"] == "limit"


async def test_runs_record_their_states_and_listing_reads_only_the_index(
    temporal_client: Client, settings: Settings
) -> None:
    """queued/running/waiting/final reach the index from the run itself; listing never asks
    Temporal about a row the run keeps up to date."""
    name = unique("gated")
    engine = make_engine(settings.sqlalchemy_url())

    def listed(run_id: str) -> str:
        with Session(engine) as session:
            row = session.get(Run, run_id)
            assert row is not None
            return str(row.state)

    async with api_client(settings) as http, new_worker(temporal_client, settings):
        await apply(http, GATED.format(name=name))
        run_id = await start(http, name)
        # Only the run writes its row here: no API read of the run comes first.
        await wait_until(lambda: listed(run_id) == "waiting", timeout=20, interval=0.05)
        assert (await http.post(f"/runs/{run_id}/approve", json={"step": "go-live"})).status_code == 200
        await step_waiting(http, run_id, "second")
        await wait_until(lambda: listed(run_id) == "waiting", timeout=10, interval=0.05)
        [row] = (await http.get("/runs", params={"flow": name, "status": "waiting"})).json()
        assert row["run_id"] == run_id

        # The index is what listing shows: a recorded row is not second-guessed per request.
        with Session(engine) as session:
            stored = session.get(Run, run_id)
            assert stored is not None and stored.recorded_at is not None
            stored.error = "from the index"
            session.add(stored)
            session.commit()
        [row] = (await http.get("/runs", params={"flow": name})).json()
        assert row["error"] == "from the index"

        assert (await http.post(f"/runs/{run_id}/approve", json={"step": "second"})).status_code == 200
        await wait_until(lambda: listed(run_id) == "succeeded", timeout=20, interval=0.05)
        [row] = (await http.get("/runs", params={"flow": name})).json()
        assert (row["state"], row["error"]) == ("succeeded", None)
        assert row["ended_at"] is not None
    engine.dispose()


async def test_rows_no_run_recorded_into_still_end(
    temporal_client: Client, settings: Settings
) -> None:
    """The bounded fallback: a live row without `recorded_at` (a run started before runs
    recorded their states, or whose records were lost) is refreshed from Temporal, a few
    rows per request."""
    name = unique("legacy")
    flow = f"apiVersion: shipflow/v1\nname: {name}\nstage: dev\nsteps: [{{migrate: {{id: m, command: [\"true\"]}}}}]\n"
    engine = make_engine(settings.sqlalchemy_url())
    async with api_client(settings) as http, new_worker(temporal_client, settings):
        await apply(http, flow)
        runs = [await start(http, name) for _ in range(LEGACY_REFRESH_LIMIT + 2)]

        def recorded_final() -> bool:
            with Session(engine) as session:
                rows = [session.get(Run, run_id) for run_id in runs]
                return all(row is not None and row.state == "succeeded" for row in rows)

        # Wait on the index, which only the runs write here: an API read of a run would see
        # it succeed (from Temporal) while its own final record is still in flight, and that
        # record would then land after the rows were made to look old below.
        await wait_until(recorded_final, timeout=40, interval=0.1)
        # Make their rows look like an older worker's: live, never recorded by the run.
        with Session(engine) as session:
            for run_id in runs:
                row = session.get(Run, run_id)
                assert row is not None
                row.state, row.recorded_at, row.ended_at = RunState.RUNNING, None, None
                session.add(row)
            session.commit()

        first = (await http.get("/runs", params={"flow": name})).json()
        ended = [r for r in first if r["state"] == "succeeded"]
        assert len(ended) == LEGACY_REFRESH_LIMIT  # bounded per request

        async def all_ended() -> bool:
            rows = (await http.get("/runs", params={"flow": name})).json()
            return all(r["state"] == "succeeded" and r["ended_at"] for r in rows)

        await wait_until(all_ended, timeout=40, interval=0.5)
    engine.dispose()


def test_a_final_record_is_never_undone_by_a_late_live_one(settings: Settings) -> None:
    engine = make_engine(settings.sqlalchemy_url())
    records = RecordActivities(engine)
    run_id = f"late-{uuid.uuid4().hex[:6]}"
    summary = {"run_id": run_id, "flow": "f", "stage": "s", "trigger": "api"}
    records.record_run(RunRecordInput(**summary, state=RunState.RUNNING))
    records.record_run(RunRecordInput(**summary, state=RunState.SUCCEEDED, ended_at=datetime.now(UTC)))
    records.record_run(RunRecordInput(**summary, state=RunState.WAITING))
    with Session(engine) as session:
        row = session.get(Run, run_id)
        assert row is not None
        assert (row.state, row.trigger) == ("succeeded", "api")
        assert row.ended_at is not None and row.recorded_at is not None
    engine.dispose()


def test_an_older_database_gets_the_new_column_and_indexes(db_settings: Settings) -> None:
    url = db_settings.sqlalchemy_url()
    db_settings.data_dir.mkdir(parents=True, exist_ok=True)
    raw = create_engine(url)
    with raw.begin() as connection:
        connection.execute(text('DROP TABLE IF EXISTS "run"'))
        connection.execute(
            text(
                'CREATE TABLE "run" (run_id VARCHAR(200) PRIMARY KEY, flow VARCHAR(63) NOT NULL,'
                " stage VARCHAR(63) NOT NULL, flow_version INTEGER NOT NULL,"
                " state VARCHAR(32) NOT NULL, reason VARCHAR, triggered_by VARCHAR,"
                " trigger VARCHAR NOT NULL, args JSON NOT NULL, error TEXT,"
                " created_at TIMESTAMP NOT NULL, ended_at TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO run VALUES ('old-1', 'f', 's', 1, 'running', NULL, NULL, 'api',"
                " '{}', NULL, '2026-01-01 00:00:00', NULL)"
            )
        )
    raw.dispose()
    engine = make_engine(url)
    make_engine(url).dispose()  # a second process starting on it changes nothing
    inspector = inspect(engine)
    assert "recorded_at" in {c["name"] for c in inspector.get_columns("run")}
    assert {"ix_run_page", "ix_run_flow_page"} <= {i["name"] for i in inspector.get_indexes("run")}
    with Session(engine) as session:
        row = session.get(Run, "old-1")
        assert row is not None and row.state == "running" and row.recorded_at is None
    engine.dispose()
