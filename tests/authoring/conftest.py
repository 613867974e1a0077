"""An API served over real HTTP on a free port, for the CLI to talk to (in-process or as a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from click.testing import Result
from typer.testing import CliRunner

from shipflow.activities.core.settings import Settings
from shipflow.api.app import create_app
from shipflow.infra.cli.main import app
from tests.helpers import free_port, wait_until_sync


@dataclass
class Served:
    url: str
    settings: Settings

    def run(self, *args: str) -> Result:
        """`shipflow ARGS` in this process (quicker; the terminal width is not under test)."""
        return CliRunner().invoke(app, ["--api", self.url, *args])

    def cli(
        self,
        *args: str,
        columns: int = 200,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """`shipflow ARGS` as its own process, on a terminal COLUMNS wide."""
        return subprocess.run(
            [sys.executable, "-m", "shipflow.infra.cli.main", *args],
            env=cli_env(self.url, columns, env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def cli_env(api: str, columns: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPFLOW_")}
    env.update({"SHIPFLOW_API": api, "COLUMNS": str(columns), "NO_COLOR": "1"})
    env.update(extra or {})
    return env


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    with serve(settings) as api:
        yield api


@contextmanager
def serve(settings: Settings) -> Iterator[Served]:
    """The API for `settings` served by uvicorn in a thread, on a free port."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until_sync(lambda: server.started, timeout=30)
    try:
        yield Served(f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path
