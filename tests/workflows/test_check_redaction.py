"""Issue #9.3: a failed `check` names its URL without the credentials in it."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from shipflow.activities.checks import CheckActivities
from shipflow.workflows.io.checks import CheckInput
from shipflow.workflows.io.common import StepContext
from shipflow.workflows.spec import CheckSpec
from tests.helpers import free_port


async def test_failed_check_error_masks_url_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHECK_TOKEN", "EnvTok9876")
    port = free_port()  # nothing listens: every probe fails to connect
    spec = CheckSpec.model_validate(
        {
            "id": "smoke",
            "http": {
                "url": f"http://ops:UrlPw5555@127.0.0.1:{port}/h?token=${{env.CHECK_TOKEN}}&x=1"
            },
            "period": "10ms",
            "failure_threshold": 2,
        }
    )
    request = CheckInput(
        context=StepContext(run_id="r", flow="f", stage="s", step_id="smoke"), check=spec
    )
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(CheckActivities().probe, request)
    message = str(info.value)
    assert "failed 2 times in a row" in message and f"127.0.0.1:{port}" in message
    assert "UrlPw5555" not in message and "EnvTok9876" not in message
