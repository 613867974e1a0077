"""The local runtime's state file seals service env (group values live there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipflow.worker.runtime.state import Service, StateFile
from shipflow.workflows.spec import LocalService

SECRET = "state-file-secret-value"


def test_env_is_sealed_on_disk_and_opened_on_read(tmp_path: Path) -> None:
    spec = LocalService(command=["app"], port=9999, env={"DB_PASSWORD": SECRET, "MODE": "a"})
    state = StateFile(tmp_path / "state.json", "runtime-key")
    state.write({"web": Service(name="web", spec=spec, image="v1")})
    raw = (tmp_path / "state.json").read_text()
    assert SECRET not in raw and "DB_PASSWORD" not in raw
    assert json.loads(raw)["services"]["web"]["image"] == "v1"  # the rest stays readable
    assert state.read()["web"]["spec"]["env"] == {"DB_PASSWORD": SECRET, "MODE": "a"}
    with pytest.raises(ValueError, match="another runtime key"):
        StateFile(tmp_path / "state.json", "other-key").read()


def test_requests_print_env_keys_never_values() -> None:
    from shipflow.activities.targets.base import JobRequest, RolloutRequest

    rollout = RolloutRequest(run_id="r", step_id="s", service="w", image="i", env={"P": SECRET})
    job = JobRequest(run_id="r", step_id="s", name="n", command=["x"], env={"P": SECRET})
    for request in (rollout, job):
        assert SECRET not in repr(request) and SECRET not in str(request)
        assert "'P'" in repr(request)
