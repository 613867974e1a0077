"""Error texts as a set: `error: ...` on stderr, one sentence, what to do, no internal ports."""

from __future__ import annotations

from typer.testing import CliRunner

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.local.target import rollout_reason
from shipflow.infra.cli.main import app
from tests.api.conftest import TOKENS, token_settings
from tests.authoring.conftest import serve


def test_rollout_errors_name_service_and_image_once_and_no_instance_port() -> None:
    """Repro: deploy errors repeated the service and version and showed an instance's port."""
    runtime_said = (
        "'web' 'v3-broken' did not become ready within the progress deadline of 8s: "
        "readiness probe http GET http://127.0.0.1:41523/healthz: HTTP 503"
    )
    reason = rollout_reason("web", "v3-broken", runtime_said)
    assert reason == (
        "did not become ready within the progress deadline of 8s: "
        "readiness probe GET /healthz on a new instance: HTTP 503"
    )
    assert "41523" not in reason and "'web'" not in reason
    assert rollout_reason("web", "v3", "port 40001 does not accept connections yet") == (
        "a new instance does not accept connections yet"
    )
    assert rollout_reason("web", "v3", "readiness probe tcp 127.0.0.1:40001: refused") == (
        "readiness probe tcp on a new instance: refused"
    )


def test_a_missing_token_says_how_to_give_one(settings: Settings) -> None:
    """Repro: the missing-token error did not mention SHIPFLOW_TOKEN."""
    with serve(token_settings(settings)) as api:
        runner = CliRunner()
        missing = runner.invoke(app, ["--api", api.url, "runs"], env={"SHIPFLOW_TOKEN": None})
        assert missing.exit_code == 2
        lines = missing.stderr.splitlines()
        assert lines[0].startswith("error: ")
        assert lines[-1].startswith("hint: give a token with --token or the SHIPFLOW_TOKEN")
        viewer = {"SHIPFLOW_TOKEN": TOKENS["viewer"]}
        given = runner.invoke(app, ["--api", api.url, "runs", "--json"], env=viewer)
        assert given.exit_code == 0, given.output
        too_low = runner.invoke(app, ["--api", api.url, "flow", "apply", "/dev/null"], env=viewer)
        assert too_low.exit_code == 2
        assert too_low.stderr.splitlines()[0].startswith("error: ")
        assert too_low.stderr.splitlines()[-1].startswith("hint: this needs a token with")


def test_help_has_examples_and_no_type_placeholders() -> None:
    """Repro: help showed `<bool>` and `<list[str]>`, had no examples, mixed `{flow}` and `{RUN}`."""
    runner = CliRunner()
    commands = [
        ["run"], ["runs"], ["status"], ["cancel"], ["terminate"], ["approve"], ["reject"],
        ["rollback"], ["retry"], ["dev"], ["demo"], ["worker"], ["api"], ["runtime"],
        ["flow", "validate"], ["flow", "apply"], ["flow", "diff"], ["flow", "graph"],
        ["flow", "schema"], ["flow", "list"], ["backup", "list"], ["backup", "restore"],
    ]
    for command in commands:
        text = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"}).stdout
        assert "Examples:" in text, command
        assert "<bool>" not in text and "<list" not in text and "<str>" not in text, command
        assert "{" not in text.split("Usage:", 1)[1].splitlines()[0], command
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "120"}).stdout
    assert "130 interrupted (Ctrl-C)" in top
