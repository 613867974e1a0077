"""Backup test fixtures: one moto S3 server per session, a bucket per test, PostgreSQL helpers.

The moto server accepts 64 KiB multipart parts (`S3_UPLOAD_PART_MIN_SIZE`), so tests
exercise multi-part uploads with dumps of a few hundred KiB instead of tens of MiB.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from temporalio.testing import ActivityEnvironment

from shipflow.activities.backup.activity import BackupActivities
from shipflow.activities.core.settings import Settings
from shipflow.activities.s3 import (
    S3Client,
    S3Factory,
    ensure_bucket,
    make_s3_client,
    start_local_s3,
)
from tests.helpers import free_port

for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ.setdefault(_name, _value)

TEST_PART_SIZE = 64 * 1024



@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_local_s3(
        free_port(),
        tmp_path_factory.mktemp("moto"),
        env={"S3_UPLOAD_PART_MIN_SIZE": str(TEST_PART_SIZE)},
    )
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3(s3_endpoint: str) -> S3Client:
    return make_s3_client(s3_endpoint)


@pytest.fixture
def bucket(s3: S3Client) -> str:
    name = f"bk-{uuid.uuid4().hex[:12]}"
    ensure_bucket(s3, name)
    return name


@pytest.fixture
def bk_settings(tmp_path: Path, s3_endpoint: str) -> Settings:
    return Settings(data_dir=tmp_path / "shipflow", s3_endpoint=s3_endpoint)


@pytest.fixture
def backups(bk_settings: Settings) -> BackupActivities:
    return BackupActivities(S3Factory(bk_settings), bk_settings, part_size=TEST_PART_SIZE)


@dataclasses.dataclass
class Run:
    result: Any
    beats: list[dict[str, Any]]


def run_activity(
    fn: Callable[..., Any], arg: Any, *, heartbeat_details: list[Any] | None = None
) -> Run:
    """Run a sync activity in the SDK's ActivityEnvironment, collecting its heartbeats."""
    env = ActivityEnvironment()
    beats: list[dict[str, Any]] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    if heartbeat_details is not None:
        env.info = dataclasses.replace(env.info, heartbeat_details=heartbeat_details, attempt=2)
    return Run(env.run(fn, arg), beats)


def run_failing(fn: Callable[..., Any], arg: Any, **kwargs: Any) -> tuple[BaseException, list[Any]]:
    """Like run_activity, for an activity that must raise: returns the error and the heartbeats."""
    env = ActivityEnvironment()
    beats: list[dict[str, Any]] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    if "on_heartbeat" in kwargs:
        hook = kwargs.pop("on_heartbeat")

        def record(*details: Any) -> None:
            beats.append(details[0])
            hook(details[0])

        env.on_heartbeat = record
    with pytest.raises(BaseException) as info:
        env.run(fn, arg)
    return info.value, beats


# ---------------------------------------------------------------- PostgreSQL helpers


def psql(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[call-overload]


def pg_schema(url: str) -> str:
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", f"--dbname={url}"],
        capture_output=True,
        text=True,
        check=True,
    )
    # \restrict/\unrestrict carry a random key per dump (psql meta-command injection guard).
    return "\n".join(
        line for line in out.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def pg_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's and materialized view's rows (ordered by their text form) in every user
    schema, every sequence's position and every large object's content."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    user = "n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"
    with psycopg.connect(url) as conn:
        relations = list(
            conn.execute(  # type: ignore[call-overload]
                "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
                f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {user} "
                "AND c.relkind IN ('r', 'm', 'S') ORDER BY 1, 2"
            )
        )
        for schema, name, kind in relations:
            ident = f'"{schema}"."{name}"'
            if kind == "S":
                out[f"seq:{schema}.{name}"] = list(
                    conn.execute(f"SELECT last_value, is_called FROM {ident}")  # type: ignore[call-overload]
                )
            else:
                out[f"{schema}.{name}"] = list(
                    conn.execute(f"SELECT * FROM {ident} t ORDER BY t::text")  # type: ignore[call-overload]
                )
        out["large objects"] = list(
            conn.execute("SELECT oid, lo_get(oid) FROM pg_largeobject_metadata ORDER BY 1")
        )
    return out


@dataclasses.dataclass
class ScramPg:
    port: int
    password: str

    def url(self, password: str) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/postgres"


@pytest.fixture(scope="session")
def scram_pg() -> Iterator[ScramPg]:
    """A private PostgreSQL that checks passwords (the shared one trusts every local client)."""
    bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    bin_path = Path(bindir.stdout.strip())
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="shipflow-scram-"))
    password = f"pw-{uuid.uuid4().hex[:12]}"
    (root / "pw").write_text(password)
    if as_postgres:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    data = root / "data"
    port = free_port()
    subprocess.run(
        [*as_postgres, str(bin_path / "initdb"), "-D", str(data), "-U", "postgres",
         "--auth=scram-sha-256", f"--pwfile={root / 'pw'}", "--no-sync", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*as_postgres, str(bin_path / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"),
         "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield ScramPg(port, password)
    finally:
        subprocess.run(
            [*as_postgres, str(bin_path / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def db_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")
