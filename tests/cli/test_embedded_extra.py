"""moto is the optional extra `embedded`: without it `shipflow dev` says what to install.

A production install (`pip install shipflow`) has no moto; the embedded stack needs its
server mode for the local S3 endpoint. The child below hides moto the way an install without
the extra lacks it (`sys.modules["moto"] = None` makes the import system report it absent)
and runs the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shipflow.activities.s3 import missing_embedded_s3
from tests.helpers import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
WITHOUT_MOTO = (
    "import sys; sys.modules['moto'] = None; "
    "from shipflow.infra.cli.main import main; sys.argv[0] = 'shipflow'; main()"
)


def test_the_extra_is_installed_for_the_tests() -> None:
    assert missing_embedded_s3() is None


def test_dev_without_the_extra_names_it_and_starts_nothing(tmp_path: Path) -> None:
    api, temporal, ui, runtime, s3, sink = free_ports(6)
    data_dir = tmp_path / "data"
    argv = [
        sys.executable, "-c", WITHOUT_MOTO, "dev", "--data-dir", str(data_dir),
        "--api-port", str(api), "--temporal-port", str(temporal), "--ui-port", str(ui),
        "--runtime-port", str(runtime), "--s3-port", str(s3), "--sink-port", str(sink),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPFLOW_")}
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1, said
    assert "moto not installed" in said and "pip install 'shipflow[embedded]'" in said, said
    assert "Traceback" not in said
    assert not (data_dir / "logs").exists()  # nothing was started
