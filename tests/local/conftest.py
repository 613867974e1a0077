"""Fixtures of the local-target tests: a fresh runtime process per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.local.support import RuntimeProcess


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[RuntimeProcess]:
    rt = RuntimeProcess(tmp_path / "runtime")
    rt.start()
    try:
        yield rt
    finally:
        rt.cleanup()
