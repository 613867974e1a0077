"""Real servers, started once per test session: a Temporal dev server and PostgreSQL.

Each test gets its own task queue, run ids and scratch database, so tests never see
each other's state.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from shipflow.activities.core.client import (
    COMMIT_KEY,
    FLOW_KEY,
    STAGE_KEY,
    dev_server_args,
    make_data_converter,
)
from shipflow.activities.core.codec import parse_keys
from shipflow.activities.core.settings import Settings
from tests.helpers import temporal_binary

PG_ADMIN_URL = os.environ.get("SHIPFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

#: The session's payload key: every client, test settings and worker subprocess encrypts
#: with it, as in production. Set in the environment so `python -m shipflow.worker.main` children
#: (crash tests) get it too; a developer's own SHIPFLOW_PAYLOAD_KEYS must not leak in.
TEST_PAYLOAD_KEYS = "test-1:" + base64.b64encode(b"shipflow-test-payload-key-32byte").decode()
os.environ["SHIPFLOW_PAYLOAD_KEYS"] = TEST_PAYLOAD_KEYS
for _name in ("SHIPFLOW_PAYLOAD_KEY_FILE", "SHIPFLOW_CODEC_LOOPBACK_OPEN"):
    os.environ.pop(_name, None)



@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=make_data_converter(parse_keys(TEST_PAYLOAD_KEYS, source="tests")),
        search_attributes=[FLOW_KEY, STAGE_KEY, COMMIT_KEY],
        dev_server_extra_args=dev_server_args(),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
def temporal_address(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


@pytest.fixture
def settings(tmp_path: Path, temporal_address: str) -> Settings:
    """Settings for one test: its own data dir and SQLite database, short heartbeats."""
    return Settings(
        temporal_address=temporal_address,
        data_dir=tmp_path / "shipflow",
        task_queue=f"tq-{uuid.uuid4().hex[:10]}",
        heartbeat_timeout_s=3.0,
        sticky_timeout_s=2.0,
        payload_keys=SecretStr(TEST_PAYLOAD_KEYS),
        open_dev_instance=True,  # most tests drive an API with no tokens on purpose
        # The suite's workers run the workflows in Temporal's sandbox, so that a
        # non-deterministic call on any path a test reaches fails here; production runs
        # them outside it (shipflow.workflows.sandbox says why; tests/workflows/
        # test_workflow_runner.py runs the production default).
        workflow_sandbox=True,
    )


def _pg_admin():  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        reason = f"PostgreSQL not reachable at {PG_ADMIN_URL.split('@')[-1]}: {e}".strip()
        if os.environ.get("SHIPFLOW_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test; dropped afterwards."""
    name = f"sf_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
