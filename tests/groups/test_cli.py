"""`shipflow group ...` against a real API over HTTP: what a user types and sees."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from shipflow.activities.core import group_crypto
from shipflow.activities.core.settings import Settings
from shipflow.infra.cli.main import app
from tests.authoring.conftest import serve

SECRET = "cli-s3cret-value"


def test_group_commands(settings: Settings, tmp_path: Path) -> None:
    group_crypto.ensure_groups_key(group_crypto.key_file(settings))
    runner = CliRunner()
    env_file = tmp_path / "db.env"
    env_file.write_text(f"# comment\nexport DB_PASSWORD='{SECRET}'\nDB_USER=app\n")
    with serve(settings) as api:

        def run(*args: str):  # type: ignore[no-untyped-def]
            return runner.invoke(app, ["--api", api.url, "group", *args])

        made = run("import", str(env_file), "--kind", "secret", "--tag", "web")
        assert made.exit_code == 0, made.output
        assert "db (secret) version 1, tags web" in made.stdout
        assert "DB_PASSWORD=(secret)" in made.stdout and SECRET not in made.stdout
        cfg = run("set", "flags", "MODE=fast", "X=a=b", "--kind", "config", "--stage", "staging")
        assert cfg.exit_code == 0, cfg.output
        assert 'MODE="fast"' in cfg.stdout and 'X="a=b"' in cfg.stdout
        assert "only stages staging" in cfg.stdout
        assert run("unset", "db", "DB_USER").exit_code == 0
        listed = run("list", "--json")
        assert [(g["name"], g["version"]) for g in json.loads(listed.stdout)] == [
            ("db", 2),
            ("flags", 1),
        ]
        assert SECRET not in listed.stdout
        assert run("get", "db", "--reveal", "DB_PASSWORD").stdout.strip() == SECRET
        assert "reveal" in run("audit", "db").stdout
        assert "v2" in run("versions", "db").stdout
        rotated = run("rotate-key", "--key-file", str(group_crypto.key_file(settings)))
        assert rotated.exit_code == 0, rotated.output
        assert "3 value(s) sealed again" in rotated.stdout  # v1: 2 keys, v2: 1
        assert run("get", "db", "--reveal", "DB_PASSWORD").stdout.strip() == SECRET
        # Bad input: exit 2 with the field named, nothing written.
        bad = run("set", "db", "NOEQUALS")
        assert bad.exit_code == 2 and "expected KEY=VALUE" in bad.stderr
        bad = run("set", "db", "1X=v")
        assert bad.exit_code == 2 and "values.1X" in bad.stderr
        bad = run("set", "new", "A=1", "--kind", "nope")
        assert bad.exit_code == 2 and "--kind" in bad.stderr
        broken = tmp_path / "broken.env"
        broken.write_text("GOOD=1\nthis line has no equals\n")
        bad = run("import", str(broken), "--kind", "config")
        assert bad.exit_code == 2 and "broken.env:2: expected KEY=VALUE" in bad.stderr
        assert run("get", "ghost").exit_code == 2
        assert json.loads(run("list", "--json").stdout)[0]["version"] == 2


def test_a_configured_but_missing_key_stops_api_and_worker_at_start(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPFLOW_")}
    env.update(
        {
            "SHIPFLOW_GROUPS_KEY_FILE": str(tmp_path / "missing-keys"),
            "SHIPFLOW_DATA_DIR": str(tmp_path),
            "SHIPFLOW_OPEN_DEV_INSTANCE": "true",
        }
    )
    for command in ("api", "worker"):
        done = subprocess.run(
            [sys.executable, "-m", "shipflow.infra.cli.main", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (command, done.stderr)
        assert "missing-keys does not exist" in done.stderr and "Traceback" not in done.stderr
