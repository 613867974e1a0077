"""The one import root: every module is `shipflow.<folder>...`, never the bare folder name.

The repository root is on sys.path whenever shipflow runs from a checkout (pytest, `python -m
shipflow.worker.main`), so `import api` would still work there, and load `api/app.py` a
second time as a different module from `shipflow.api.app`: two settings caches, two table
registries, two copies of every class (isinstance fails across them). In an installed wheel
the bare name does not exist at all. Nothing may use it: imports, `-m` argv, module names
in strings (`find_spec`, uvicorn app strings, sandbox passthrough lists).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("workflows", "activities", "api", "worker", "infra")
_DOTTED = re.compile(rf"(?<![\w.])(?:{'|'.join(FOLDERS)})(?:\.\w+)+")


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def old_root_references(source: str) -> list[str]:
    """Each import of a bare folder name, and each string naming a module by it."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in FOLDERS]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in FOLDERS:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for match in _DOTTED.finditer(node.value):
                parts = match.group(0).split(".")
                if any(_is_module(".".join(parts[:n])) for n in range(2, len(parts) + 1)):
                    found.append(repr(node.value))
    return found


def test_the_checker_finds_every_kind_of_old_reference() -> None:
    source = (
        "import api.app\n"
        "from worker.main import build_worker\n"
        "from workflows import spec\n"
        'argv = [sys.executable, "-m", "activities.targets.local.runtime"]\n'
        'find_spec("infra.stack")\n'
    )
    assert len(old_root_references(source)) == 5
    clean = (
        "from shipflow.api.app import create_app\n"
        'argv = ["-m", "shipflow.worker.main"]\n'
        'log = "worker.log"; name = "api"\n'  # not modules: a file name, a service name
    )
    assert old_root_references(clean) == []


def test_no_python_file_uses_a_bare_folder_name() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    offenders = {
        name: refs
        for name in tracked
        if (ROOT / name).is_file()
        and name != "tests/test_layout.py"  # its own examples
        and (refs := old_root_references((ROOT / name).read_text()))
    }
    assert offenders == {}


def test_the_import_root_links_every_folder_relatively() -> None:
    for folder in FOLDERS:
        link = ROOT / "shipflow" / folder
        assert link.is_symlink(), f"shipflow/{folder} must be a symlink to ../{folder}"
        assert str(link.readlink()) == f"../{folder}"
    import shipflow.api.app

    assert Path(shipflow.api.app.__file__).resolve() == ROOT / "api" / "app.py"
