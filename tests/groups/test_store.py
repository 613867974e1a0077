"""Groups storage: versions, audit, sealed secrets, key rotation, selection rules.

On a real SQLite file (and the PostgreSQL the suite uses), no mocks: what is asserted is
what a reader of the database file or of the store sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from shipflow.activities.core import group_crypto
from shipflow.activities.core.db import make_engine
from shipflow.activities.core.group_select import Consumer, SelectionError, resolve, select
from shipflow.activities.core.groups import (
    MAX_VALUE_BYTES,
    GroupChange,
    GroupInvalid,
    GroupKeyMissing,
    GroupNotFound,
    GroupStore,
)
from shipflow.activities.core.settings import Settings

SECRET = "s3cr3t-hunter2-value"


@pytest.fixture
def store(tmp_path: Path) -> GroupStore:
    settings = Settings(data_dir=tmp_path)
    assert group_crypto.ensure_groups_key(group_crypto.key_file(settings))
    return GroupStore(make_engine(settings.sqlalchemy_url()), settings)


def test_versions_audit_and_sealed_values(store: GroupStore, tmp_path: Path) -> None:
    key_file = tmp_path / "groups-keys"
    assert os.stat(key_file).st_mode & 0o077 == 0
    v1 = store.change(
        "db", GroupChange(kind="secret", set_values={"DB_PASSWORD": SECRET}), actor="alice"
    )
    assert (v1.version, v1.keys, v1.values) == (1, ["DB_PASSWORD"], None)
    v2 = store.change("db", GroupChange(set_values={"DB_USER": "app"}, tags=["prod"]), actor="bob")
    assert (v2.version, v2.keys, v2.tags) == (2, ["DB_PASSWORD", "DB_USER"], ["prod"])
    v3 = store.change("db", GroupChange(unset=["DB_USER"]), actor="bob")
    assert v3.keys == ["DB_PASSWORD"]
    # Old versions stay as they were.
    assert store.get("db", 2).keys == ["DB_PASSWORD", "DB_USER"]
    assert store.values("db", 2) == {"DB_PASSWORD": SECRET, "DB_USER": "app"}
    assert [v.version for v in store.versions("db")] == [1, 2, 3]
    # The database file never holds the value in clear.
    db = (tmp_path / "shipflow.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("shipflow.db-*")
    )
    assert SECRET.encode() not in db
    # Revealing is audited; the audit never holds values.
    assert store.reveal("db", "DB_PASSWORD", actor="root") == SECRET
    trail = store.audit("db")
    assert [(a.action, a.keys, a.actor) for a in trail] == [
        ("reveal", ["DB_PASSWORD"], "root"),
        ("unset", ["DB_USER"], "bob"),
        ("set", ["DB_USER"], "bob"),
        ("create", ["DB_PASSWORD"], "alice"),
    ]
    assert all(SECRET not in repr(a) for a in trail)


def test_config_values_are_clear_and_versioned(store: GroupStore) -> None:
    store.change("flags", GroupChange(kind="config", set_values={"MODE": "a"}), actor="x")
    store.change("flags", GroupChange(set_values={"MODE": "b"}), actor="x")
    assert store.get("flags").values == {"MODE": "b"}
    assert store.get("flags", 1).values == {"MODE": "a"}


def test_bad_input_names_the_field(store: GroupStore) -> None:
    with pytest.raises(GroupInvalid) as e:
        store.change(
            "Bad Name",
            GroupChange(
                kind="nope", set_values={"1X": "v", "OK": "x" * (MAX_VALUE_BYTES + 1)}, tags=["UP"]
            ),
            actor="x",
        )
    fields = [p for p, _ in e.value.problems]
    assert fields == ["name", "kind", "values.1X", "values.OK", "tags[0]"]
    with pytest.raises(GroupInvalid, match="a new group needs a kind"):
        store.change("new", GroupChange(set_values={"A": "1"}), actor="x")
    store.change("cfg", GroupChange(kind="config", set_values={"A": "1"}), actor="x")
    with pytest.raises(GroupInvalid, match="cannot become secret"):
        store.change("cfg", GroupChange(kind="secret"), actor="x")
    with pytest.raises(GroupInvalid, match="no key 'B'"):
        store.change("cfg", GroupChange(unset=["B"]), actor="x")
    with pytest.raises(GroupNotFound):
        store.get("missing")
    assert [v.version for v in store.versions("cfg")] == [1]  # nothing half-applied


def test_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, groups_key_file=tmp_path / "nowhere")
    store = GroupStore(make_engine(settings.sqlalchemy_url()), settings)
    with pytest.raises(GroupKeyMissing, match="SHIPFLOW_GROUPS_KEY_FILE"):
        store.change("db", GroupChange(kind="secret", set_values={"P": "x"}), actor="x")
    with pytest.raises(group_crypto.GroupKeyError, match="does not exist"):
        group_crypto.check_key(settings)
    # Config groups need no key.
    store.change("cfg", GroupChange(kind="config", set_values={"A": "1"}), actor="x")


def test_rotation_reseals_with_the_new_key(store: GroupStore, tmp_path: Path) -> None:
    store.change("db", GroupChange(kind="secret", set_values={"P": SECRET}), actor="x")
    key_file = tmp_path / "groups-keys"
    old_ids = group_crypto.load_ring(store.settings).ids
    new_id = group_crypto.add_key(key_file)
    assert os.stat(key_file).st_mode & 0o077 == 0
    assert store.reencrypt(actor="root") == 1
    # The old key can go: everything opens with the new one alone.
    lines = [x for x in key_file.read_text().splitlines() if x.startswith(new_id + ":")]
    key_file.write_text("\n".join(lines) + "\n")
    assert group_crypto.load_ring(store.settings).ids == [new_id] != old_ids
    assert store.values("db", 1) == {"P": SECRET}
    # A value moved to another key does not open.
    with pytest.raises(group_crypto.GroupKeyError):
        sealed = group_crypto.seal(group_crypto.load_ring(store.settings), "db", "P", "v")
        group_crypto.open_value(group_crypto.load_ring(store.settings), "db", "Q", sealed)


def test_selection_rules(store: GroupStore) -> None:
    store.change(
        "a", GroupChange(kind="config", set_values={"X": "a", "A": "1"}, tags=["web"]), actor="x"
    )
    store.change("b", GroupChange(kind="config", set_values={"X": "b"}, tags=["web"]), actor="x")
    store.change(
        "prod-only",
        GroupChange(kind="secret", set_values={"P": "p"}, tags=["web"], stages=["production"]),
        actor="x",
    )
    groups = store.all()
    web = Consumer(stage="staging", service="web", tags=["web"], where="target.services.web")
    with pytest.raises(SelectionError) as e:
        select(groups, web)
    (problem,) = e.value.problems
    assert "key X is in both group 'a' and group 'b'" in problem[1]
    web.order = ["a", "b"]
    resolved = resolve(store, web)
    assert resolved.env == {"X": "b", "A": "1"}  # b wins; prod-only left out by its stage
    assert resolved.versions == {"a": 1, "b": 1}
    named = Consumer(stage="staging", service="web", env_from=["prod-only", "ghost"])
    with pytest.raises(SelectionError) as e:
        select(groups, named)
    assert [p for p, _ in e.value.problems] == ["env_from[0]", "env_from[1]"]
    assert "restricted to stages production" in e.value.problems[0][1]
    prod = Consumer(stage="production", service="web", env_from=["prod-only"])
    assert resolve(store, prod).secrets == ["p"]
    # Pinned versions are used as they are, whatever the selection says now.
    store.change("a", GroupChange(set_values={"A": "2"}), actor="x")
    assert resolve(store, web, {"a": 1}).env == {"X": "a", "A": "1"}


def test_postgres_store(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=SecretStr(pg_url))
    group_crypto.ensure_groups_key(group_crypto.key_file(settings))
    store = GroupStore(make_engine(settings.sqlalchemy_url()), settings)
    store.change("db", GroupChange(kind="secret", set_values={"P": SECRET}), actor="x")
    store.change("db", GroupChange(set_values={"Q": "2"}), actor="x")
    assert store.values("db", 2) == {"P": SECRET, "Q": "2"}
    store.delete("db", actor="x")
    assert store.all() == [] and store.get("db", 1).keys == ["P"]


def test_worker_side_problems_fail_the_step_without_retry(store: GroupStore) -> None:
    """Groups changed after apply: the step fails, non-retryable, with a clear message."""
    from temporalio.exceptions import ApplicationError

    from shipflow.activities.group_env import GroupEnv
    from shipflow.workflows.io.common import StepContext
    from shipflow.workflows.io.deploy import RolloutInput

    store.change("db", GroupChange(kind="secret", set_values={"P": SECRET}), actor="x")
    env = GroupEnv(store.engine, store.settings)
    target = {"kind": "local", "services": {"web": {"env_from": ["db"]}}}
    context = StepContext(run_id="r", flow="f", stage="staging", step_id="web")
    made = env.for_rollout(RolloutInput(context=context, target=target, service="web", image="i"))
    assert (made.env, made.versions, made.secrets) == ({"P": SECRET}, {"db": 1}, [SECRET])
    store.delete("db", actor="x")
    with pytest.raises(ApplicationError) as e:
        env.for_rollout(RolloutInput(context=context, target=target, service="web", image="i"))
    assert e.value.non_retryable and e.value.type == "GroupSelection"
    assert "no group 'db'" in str(e.value) and SECRET not in str(e.value)
    # A pinned version (rollback) still works after the delete.
    pinned = RolloutInput(
        context=context, target=target, service="web", image="i", groups={"db": 1}
    )
    assert env.for_rollout(pinned).env == {"P": SECRET}
    k8s = RolloutInput(
        context=context,
        target={"kind": "kubernetes"},
        service="web",
        image="i",
        groups={"db": 1},
    )
    # Kubernetes references the group version (a Secret): no values copied into `env`.
    for_k8s = env.for_rollout(k8s)
    assert for_k8s.env == {} and [(s.name, s.version) for s in for_k8s.sources] == [("db", 1)]
    assert SECRET not in repr(for_k8s.sources)


def test_a_migrate_undo_command_gets_the_versions_its_step_got() -> None:
    from shipflow.workflows.io.common import StepContext
    from shipflow.workflows.plan import compile
    from shipflow.workflows.spec import load_flow_text
    from shipflow.workflows.step_kinds import UNDO_KINDS, StepRequest

    flow = load_flow_text(
        """
apiVersion: shipflow/v1
name: f
stage: staging
tags: [web]
steps:
  - migrate: {id: m, command: [up], env_from: [db], undo: {command: [down]}}
"""
    )
    plan = compile(flow, {})
    (action,) = plan.actions()
    assert action.undo is not None
    context = StepContext(run_id="r", flow="f", stage="staging", step_id="m")
    request = StepRequest(
        plan=plan,
        action=action,
        params=action.params,
        context=context,
        run_state="failed",
        undo=action.undo,
        step_output={"exit_code": 0, "groups": {"db": 4}},
    )
    undo = UNDO_KINDS["command"].call.build(request)
    assert (undo.env_from, undo.tags, undo.groups) == (["db"], ["web"], {"db": 4})
