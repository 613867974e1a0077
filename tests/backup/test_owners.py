"""Issue #10.3: a restore brings owners, grants and the `public` schema's owner back.

The schema has objects owned by two application roles (created here, unique names,
dropped afterwards), grants, comments, a partitioned table, a materialized view,
sequences part-way through, an extension, an enum and a domain. After a rollback (the
"migration" changes owners, grants, data and sequences) and after a restore into a new,
empty database, `pg_dump --schema-only` with owners and ACLs, and every table's row
checksum, are identical to the original's.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from shipflow.activities.backup.activity import BackupActivities
from shipflow.activities.core.settings import Settings
from shipflow.workflows.io.backup import BackupInput, BackupOutput, RestoreInput
from shipflow.workflows.plan import compile
from shipflow.workflows.spec import FlowError, load_flow_text
from tests.backup.conftest import psql, run_activity, run_failing
from tests.backup.test_postgres import context
from tests.conftest import PG_ADMIN_URL
from tests.helpers import new_worker, run_flow

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS citext;
ALTER SCHEMA public OWNER TO {a};
COMMENT ON SCHEMA public IS 'owned by the application';
GRANT USAGE ON SCHEMA public TO {b};
CREATE SCHEMA app AUTHORIZATION {a};
GRANT USAGE ON SCHEMA app TO {b};
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
ALTER TYPE app.mood OWNER TO {a};
CREATE DOMAIN app.posint AS integer CHECK (VALUE > 0);
ALTER DOMAIN app.posint OWNER TO {b};
CREATE TABLE app.people (id serial PRIMARY KEY, name citext NOT NULL UNIQUE,
                         mood app.mood, score app.posint);
ALTER TABLE app.people OWNER TO {a};
COMMENT ON TABLE app.people IS 'everyone';
COMMENT ON COLUMN app.people.score IS 'always positive';
GRANT SELECT, UPDATE (mood) ON app.people TO {b};
INSERT INTO app.people (name, mood, score)
  SELECT 'P' || g, (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::app.mood, g FROM generate_series(1, 300) g;
CREATE TABLE public.events (id bigint GENERATED ALWAYS AS IDENTITY, at date NOT NULL, what text)
  PARTITION BY RANGE (at);
CREATE TABLE public.events_2025 PARTITION OF public.events
  FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE public.events_2026 PARTITION OF public.events
  FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
ALTER TABLE public.events OWNER TO {b};
ALTER TABLE public.events_2025 OWNER TO {b};
ALTER TABLE public.events_2026 OWNER TO {a};
GRANT SELECT, INSERT ON public.events TO {a};
INSERT INTO public.events (at, what)
  SELECT date '2025-06-01' + g, 'e' || g FROM generate_series(1, 400) g;
CREATE SEQUENCE public.tickets START 100 INCREMENT 5;
ALTER SEQUENCE public.tickets OWNER TO {b};
SELECT nextval('public.tickets') FROM generate_series(1, 7);
GRANT USAGE ON SEQUENCE public.tickets TO {a};
CREATE MATERIALIZED VIEW app.moods AS SELECT mood, count(*) AS n FROM app.people GROUP BY mood;
ALTER MATERIALIZED VIEW app.moods OWNER TO {a};
GRANT SELECT ON app.moods TO {b};
CREATE FUNCTION app.greet(who text) RETURNS text LANGUAGE sql IMMUTABLE
  AS $$ SELECT 'hello ' || who $$;
ALTER FUNCTION app.greet(text) OWNER TO {b};
REVOKE EXECUTE ON FUNCTION app.greet(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.greet(text) TO {a};
COMMENT ON FUNCTION app.greet(text) IS 'says hello';
"""

# What a migration does to all of that: owners, grants, comments, data, sequences.
MIGRATION = """
ALTER TABLE app.people OWNER TO postgres;
ALTER SCHEMA public OWNER TO pg_database_owner;
REVOKE ALL ON app.people FROM {b};
ALTER TABLE app.people ADD COLUMN tier int DEFAULT 1;
UPDATE app.people SET score = score + 1;
ALTER FUNCTION app.greet(text) OWNER TO {a};
COMMENT ON TABLE app.people IS 'changed';
DELETE FROM public.events WHERE id % 3 = 0;
SELECT nextval('public.tickets') FROM generate_series(1, 50);
CREATE TABLE app.extra (id int) ;
ALTER TABLE app.extra OWNER TO {b};
ALTER TYPE app.mood ADD VALUE 'ecstatic';
"""


def full_schema(url: str) -> str:
    """`pg_dump --schema-only` with owners and ACLs (the restore must bring both back)."""
    out = subprocess.run(
        ["pg_dump", "--schema-only", f"--dbname={url}"], capture_output=True, text=True, check=True
    )
    return "\n".join(
        line
        for line in out.stdout.splitlines()
        if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def checksums(url: str) -> dict[str, Any]:
    """md5 of every table's and materialized view's ordered rows; every sequence's position."""
    out: dict[str, Any] = {}
    with psycopg.connect(url) as conn:
        rels = conn.execute(
            "SELECT format('%I.%I', n.nspname, c.relname), c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'app') AND c.relkind IN ('r', 'p', 'm', 'S') ORDER BY 1"
        ).fetchall()
        for name, kind in rels:
            if kind == "S":
                out[name] = conn.execute(f"SELECT last_value, is_called FROM {name}").fetchone()  # type: ignore[call-overload]
            else:
                out[name] = conn.execute(  # type: ignore[call-overload]
                    f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {name} t"
                ).fetchone()
    return out


def owners_of(url: str, role: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
            "WHERE r.rolname = %s UNION ALL SELECT n.nspname FROM pg_namespace n "
            "JOIN pg_roles r ON r.oid = n.nspowner WHERE r.rolname = %s ORDER BY 1",
            (role, role),
        ).fetchall()
    return [r[0] for r in rows]


def admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[call-overload]


@pytest.fixture
def roles() -> Iterator[tuple[str, str]]:
    """Two application roles, unique to this test (roles are cluster-wide)."""
    tag = uuid.uuid4().hex[:8]
    names = (f"sf_app_{tag}", f"sf_ro_{tag}")
    for name in names:
        admin(f'CREATE ROLE "{name}" NOLOGIN')
    try:
        yield names
    finally:
        for name in names:
            admin(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture
def new_db() -> Iterator[str]:
    """An empty database to restore into (dropped afterwards, before the roles)."""
    name = f"sf_new_{uuid.uuid4().hex[:12]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def take_backup(backups: BackupActivities, bucket: str, url: str) -> BackupOutput:
    request = BackupInput(context=context(), database=url, to=f"s3://{bucket}/own/")
    result: BackupOutput = run_activity(backups.create, request).result
    return result


def restore(backups: BackupActivities, out: BackupOutput, url: str, owners: str = "keep") -> None:
    request = RestoreInput(
        context=context(),
        database=url,
        url=out.url,
        size=out.size,
        sha256=out.sha256,
        owners=owners,  # type: ignore[arg-type]
    )
    run_activity(backups.restore, request)


def test_rollback_and_restore_into_new_database_keep_owners_and_grants(
    roles: tuple[str, str],
    new_db: str,
    pg_url: str,
    backups: BackupActivities,
    bucket: str,
) -> None:
    a, b = roles
    psql(pg_url, SCHEMA.format(a=a, b=b))
    schema, sums = full_schema(pg_url), checksums(pg_url)
    # The dump carries owners, grants and the public schema's owner and comment.
    assert f"ALTER SCHEMA public OWNER TO {a}" in schema
    assert f"GRANT SELECT ON TABLE app.people TO {b}" in schema
    assert f"GRANT UPDATE(mood) ON TABLE app.people TO {b}" in schema
    out = take_backup(backups, bucket, pg_url)

    psql(pg_url, MIGRATION.format(a=a, b=b))
    assert full_schema(pg_url) != schema and checksums(pg_url) != sums
    restore(backups, out, pg_url)  # the rollback
    assert full_schema(pg_url) == schema
    assert checksums(pg_url) == sums
    assert "people" in owners_of(pg_url, a) and "public" in owners_of(pg_url, a)

    restore(backups, out, new_db)  # into a database that never saw the schema
    assert full_schema(new_db) == schema
    assert checksums(new_db) == sums
    assert {"events", "events_2025", "tickets"} <= set(owners_of(new_db, b))


def test_drop_owners_gives_everything_to_the_restoring_user(
    roles: tuple[str, str],
    new_db: str,
    pg_url: str,
    backups: BackupActivities,
    bucket: str,
) -> None:
    a, b = roles
    psql(pg_url, SCHEMA.format(a=a, b=b))
    sums = checksums(pg_url)
    out = take_backup(backups, bucket, pg_url)

    restore(backups, out, new_db, owners="drop")
    assert checksums(new_db) == sums
    assert owners_of(new_db, a) == [] and owners_of(new_db, b) == []
    restored = full_schema(new_db)
    assert "GRANT " not in restored and f"{a}" not in restored and f"{b}" not in restored


def test_missing_role_fails_clearly_and_leaves_the_database_alone(
    roles: tuple[str, str],
    new_db: str,
    pg_url: str,
    backups: BackupActivities,
    bucket: str,
) -> None:
    a, b = roles
    gone = f"sf_gone_{uuid.uuid4().hex[:8]}"
    admin(f'CREATE ROLE "{gone}" NOLOGIN')
    try:
        psql(pg_url, SCHEMA.format(a=a, b=b) + f"\nALTER TABLE app.people OWNER TO {gone};")
        sums = checksums(pg_url)
        out = take_backup(backups, bucket, pg_url)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{pg_url.rsplit("/", 1)[1]}" WITH (FORCE)')
        admin(f'DROP ROLE "{gone}"')
    psql(new_db, "CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (42);")
    before = full_schema(new_db), checksums(new_db)

    request = RestoreInput(
        context=context(), database=new_db, url=out.url, size=out.size, sha256=out.sha256
    )
    error, _ = run_failing(backups.restore, request)
    assert isinstance(error, ApplicationError)
    assert error.non_retryable
    message = str(error)
    assert f"role '{gone}'" in message and "does not exist" in message
    assert "owners: drop" in message and "rolled back" in message
    assert (full_schema(new_db), checksums(new_db)) == before

    restore(backups, out, new_db, owners="drop")  # the documented way out
    assert checksums(new_db) == sums
    assert owners_of(new_db, a) == []


OWNERS_FLOW = """
apiVersion: shipflow/v1
name: owners
stage: test
steps:
  - backup: {{id: db-backup, database: "${{env.DB}}", to: "s3://b/p/"}}
  - migrate: {{id: migrate, command: ["true"], undo: {{restore: db-backup{owners}}}}}
"""


@pytest.mark.parametrize(("written", "planned"), [("", "keep"), (", owners: drop", "drop")])
def test_owners_option_reaches_the_plan(written: str, planned: str) -> None:
    plan = compile(load_flow_text(OWNERS_FLOW.format(owners=written)), {}, {"DB": "x"})
    undo = plan.action("migrate").undo
    assert undo is not None and undo.kind == "restore" and undo.owners == planned


def test_bad_owners_value_names_the_field() -> None:
    with pytest.raises(FlowError) as info:
        load_flow_text(OWNERS_FLOW.format(owners=", owners: maybe"))
    assert "steps[1].migrate.undo" in str(info.value) and "owners" in str(info.value)


E2E_FLOW = """
apiVersion: shipflow/v1
name: owners-e2e
stage: test
steps:
  - backup: {{id: db-backup, database: "{db}", to: "s3://{bucket}/e2e/", endpoint: "{endpoint}"}}
  - migrate: {{id: migrate, command: {migrate}, undo: {{restore: db-backup{owners}}}}}
  - migrate: {{id: smoke, command: [sh, -c, "exit 1"]}}
"""


@pytest.mark.parametrize("owners", ["keep", "drop"])
async def test_compensation_restores_with_the_flows_owners_option(
    owners: str,
    roles: tuple[str, str],
    pg_url: str,
    temporal_client: Client,
    settings: Settings,
    bucket: str,
    s3_endpoint: str,
) -> None:
    a, b = roles
    psql(pg_url, SCHEMA.format(a=a, b=b))
    schema, sums = full_schema(pg_url), checksums(pg_url)
    migrate = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg_url,
               "-c", MIGRATION.format(a=a, b=b)]  # fmt: skip
    flow = E2E_FLOW.format(
        db=pg_url,
        bucket=bucket,
        endpoint=s3_endpoint,
        migrate=json.dumps(migrate),
        owners="" if owners == "keep" else ", owners: drop",
    )
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, flow)
    assert status.state == "rolled_back", status.model_dump_json(indent=1)
    assert status.step("migrate").state == "compensated"
    assert checksums(pg_url) == sums
    if owners == "keep":
        assert full_schema(pg_url) == schema
    else:
        assert owners_of(pg_url, a) == [] and owners_of(pg_url, b) == []
