"""Safe deployment defaults: no open API by accident, `/metrics` behind a role on request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from shipflow.activities.core.settings import Settings
from shipflow.api.app import create_app
from shipflow.api.auth import load_tokens
from tests.api.conftest import api_client, bearer, token_settings
from tests.api.served import ApiProcess, api_env

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "kubernetes" / "secret.example.yaml"


def test_no_tokens_and_no_open_dev_setting_refuses_to_build(settings: Settings) -> None:
    closed = settings.model_copy(update={"open_dev_instance": False})
    with pytest.raises(ValueError, match="no API tokens configured") as raised:
        create_app(closed)
    assert "SHIPFLOW_OPEN_DEV_INSTANCE" in str(raised.value)
    create_app(token_settings(closed))  # tokens: fine
    create_app(settings)  # open on purpose: fine


@pytest.mark.parametrize(
    "command", [["-m", "shipflow.api.app"], ["-m", "shipflow.infra.cli.main", "api"]], ids=["module", "cli"]
)
def test_the_api_process_refuses_to_start_without_tokens(
    tmp_path: Path, temporal_address: str, command: list[str]
) -> None:
    env, _url = api_env({"SHIPFLOW_TEMPORAL_ADDRESS": temporal_address}, tmp_path / "shipflow")
    done = subprocess.run(
        [sys.executable, *command], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no API tokens configured" in done.stderr
    assert "SHIPFLOW_OPEN_DEV_INSTANCE=true" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_api_process_starts_open_with_the_setting(
    tmp_path: Path, temporal_address: str
) -> None:
    api = ApiProcess(
        {"SHIPFLOW_TEMPORAL_ADDRESS": temporal_address, "SHIPFLOW_OPEN_DEV_INSTANCE": "true"},
        tmp_path / "shipflow",
    )
    try:
        api.wait_ready()
        httpx.get(api.url + "/flows?token=sekrit-value", timeout=5)
    finally:
        api.close()
    assert "the API is open to anyone" in api.log.read_text()
    # Its log (not a terminal) is JSON lines, uvicorn's included, redacted.
    lines = [json.loads(line) for line in api.log.read_text().splitlines() if line.strip()]
    assert any(r["logger"] == "uvicorn.access" and "/flows?token=" in r["message"] for r in lines)
    assert "sekrit-value" not in api.log.read_text()


async def test_metrics_can_require_the_viewer_role(settings: Settings) -> None:
    guarded = token_settings(settings).model_copy(update={"metrics_role": "viewer"})
    async with api_client(guarded) as http:
        anonymous = await http.get("/metrics")
        assert anonymous.status_code == 401
        assert anonymous.json() == {"detail": "missing bearer token"}
        assert (
            await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        viewer = await http.get("/metrics", headers=bearer("viewer"))
        assert viewer.status_code == 200
        assert "shipflow_http_requests_total" in viewer.text
    operator_only = token_settings(settings).model_copy(update={"metrics_role": "operator"})
    async with api_client(operator_only) as http:
        assert (await http.get("/metrics", headers=bearer("viewer"))).status_code == 403
        assert (await http.get("/metrics", headers=bearer("operator"))).status_code == 200
    async with api_client(token_settings(settings)) as http:  # the default stays open
        assert (await http.get("/metrics")).status_code == 200


def test_the_kubernetes_secret_template_never_makes_an_open_api() -> None:
    data = yaml.safe_load(TEMPLATE.read_text())["stringData"]
    settings = Settings(tokens=data["SHIPFLOW_TOKENS"])
    assert data.get("SHIPFLOW_OPEN_DEV_INSTANCE", "false") == "false"
    # Unedited, the placeholder is refused (the API does not start); edited, it holds a token.
    with pytest.raises(ValueError, match="malformed entry"):
        load_tokens(settings)
    assert data["SHIPFLOW_METRICS_ROLE"] == "viewer"
