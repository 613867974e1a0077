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
