"""The embedded stack encrypts: it generates the key file (0600) into its data dir, the
worker and API share it, Temporal holds ciphertext, and the Web UI is configured with the
API's codec endpoint, which decodes for the UI's origin on loopback without a token."""

from __future__ import annotations

import base64
import stat
import uuid
from collections.abc import Iterator

import httpx
import pytest

from shipflow.activities.core.codec import KEY_FILE_NAME
from shipflow.infra.stack.embedded import EmbeddedStack
from tests.api.test_codec import all_text, payloads_in
from tests.helpers import cli_history, stack_on_free_ports, wait_until_sync

FLOW = """\
apiVersion: shipflow/v1
name: {name}
stage: codec-stack
args: {{marker: {{default: plain}}}}
steps:
  - migrate: {{id: emit, command: [sh, -c, "echo OUT-$((6*7)) ${{args.marker}}"]}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    stack = stack_on_free_ports(
        tmp_path_factory.mktemp("codec-stack"),
        queue="codec",
        say=lambda _line: None,
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def test_stack_encrypts_and_the_web_ui_decodes_through_the_api(stack: EmbeddedStack) -> None:
    key_file = stack.data_dir / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = next(
        line for line in key_file.read_text().splitlines() if ":" in line and "#" not in line
    )
    secret_key = key.split(":", 1)[1]

    # The Web UI is told where our codec is (what its settings endpoint serves the browser).
    settings = httpx.get(f"{stack.ui_url}/api/v1/settings", timeout=10).json()
    assert settings["Codec"]["Endpoint"] == f"{stack.api_url}/codec"

    tag = uuid.uuid4().hex[:10]
    name = f"codec-{tag[:6]}"
    marker = f"ARG-{tag}"
    auth = {"Authorization": f"Bearer {stack.token}"}
    with httpx.Client(base_url=stack.api_url, headers=auth, timeout=30) as api:
        applied = api.post(
            "/flows", content=FLOW.format(name=name), headers={"Content-Type": "text/yaml"}
        )
        assert applied.status_code == 201, applied.text
        started = api.post(f"/flows/{name}/runs", json={"args": {"marker": marker}})
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]

        def succeeded() -> bool:
            state = api.get(f"/runs/{run_id}").json()["state"]
            assert state in ("pending", "running", "succeeded"), state
            return bool(state == "succeeded")

        wait_until_sync(succeeded, timeout=60, interval=0.2, what=f"run {run_id} to succeed")
        assert f"OUT-42 {marker}" in api.get(f"/runs/{run_id}").text

    history = cli_history(stack.temporal_address, run_id)
    raw = all_text(history)
    assert marker not in raw and "OUT-42" not in raw and "OUT-$((6*7))" not in raw
    payloads = payloads_in(history)
    assert payloads

    # The temporal CLI with our codec endpoint and a shipflow token shows the run in clear.
    in_clear = cli_history(
        stack.temporal_address,
        run_id,
        "--codec-endpoint",
        f"{stack.api_url}/codec",
        "--codec-auth",
        f"Bearer {stack.token}",
    )
    assert marker in all_text(in_clear)

    # The browser on the UI's page: loopback, the UI's Origin, no shipflow token.
    with httpx.Client(base_url=stack.api_url, timeout=30) as browser:
        preflight = browser.options(
            "/codec/decode",
            headers={
                "Origin": stack.ui_url,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == stack.ui_url
        decoded = browser.post(
            "/codec/decode",
            json={"payloads": payloads},
            headers={"Origin": stack.ui_url, "X-Namespace": "default"},
        )
        assert decoded.status_code == 200, decoded.text
        assert decoded.headers["Access-Control-Allow-Origin"] == stack.ui_url
        clear = all_text(decoded.json())
        assert marker in clear and "OUT-42" in clear
        # Not the UI (no Origin): the token is required.
        assert browser.post("/codec/decode", json={"payloads": payloads}).status_code == 401

    # The key itself is in no log of the stack's processes.
    for log in stack.logs_dir.iterdir():
        text = log.read_text(errors="replace")
        assert secret_key not in text, log
        assert base64.b64decode(secret_key).hex() not in text, log
