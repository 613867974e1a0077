"""Fixtures of the local-target tests: a fresh runtime process per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.local.support import RuntimeProcess


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[RuntimeProcess]:
    # Where `shipflow dev` puts it, under the data dir of the `settings` fixture: a worker
    # built from those settings finds the runtime's key there without being told.
    rt = RuntimeProcess(tmp_path / "shipflow" / "runtime")
    rt.start()
    try:
        yield rt
    finally:
        rt.cleanup()
