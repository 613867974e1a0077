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
import sys
import zipfile
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


def _layout_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Layout\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


def test_tests_are_laid_out_as_the_readme_says() -> None:
    """The README's layout block names every folder of tests/ (and no other), and each is a
    package, so that `tests.<folder>.<module>` is the one name of every test module."""
    block = _layout_section().split("```")[1]
    tests_lines: list[str] = []
    for line in block.splitlines():
        if line.startswith("tests/") or (tests_lines and line.startswith(" ")):
            tests_lines.append(line)
        elif tests_lines:
            break
    named = set(re.findall(r"(?<![\w/.])(\w+)/", " ".join(tests_lines)[len("tests/") :]))
    folders = {
        p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and any(p.glob("test_*.py"))
    }
    assert named == folders
    assert [f for f in sorted(folders) if not (ROOT / "tests" / f / "__init__.py").is_file()] == []


def _build_wheel(out: Path) -> Path:
    """Build shipflow's wheel with setuptools alone (no isolation, no network), every build
    file under `out`: a build directory in the checkout could hold modules removed since."""
    subprocess.run(
        [
            sys.executable, "-c", "from setuptools import setup; setup()", "-q",
            "egg_info", "--egg-base", str(out),
            "build", "--build-base", str(out / "build"),
            "bdist_wheel", "--bdist-dir", str(out / "bdist"), "--dist-dir", str(out / "dist"),
        ],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (wheel,) = (out / "dist").glob("shipflow-*.whl")
    return wheel


def test_the_wheel_installs_only_shipflow_and_moto_only_with_the_extra(tmp_path: Path) -> None:
    """What `pip install .` puts into site-packages: one top-level package, `shipflow`, with
    every module of the five folders and their data files; moto (Flask, docker, cfn-lint
    behind it) only with the `embedded` extra."""
    with zipfile.ZipFile(_build_wheel(tmp_path)) as wheel:
        names = set(wheel.namelist())
        (dist_info,) = {n.split("/")[0] for n in names if ".dist-info/" in n}
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
        top_level = wheel.read(f"{dist_info}/top_level.txt").decode().split()
    assert {n.split("/")[0] for n in names} == {"shipflow", dist_info}
    assert top_level == ["shipflow"]
    tracked = subprocess.run(
        ["git", "ls-files", *(f"{folder}/*.py" for folder in FOLDERS)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    in_wheel = {n.removeprefix("shipflow/") for n in names if n.endswith(".py")}
    on_disk = {name for name in tracked if (ROOT / name).is_file()}
    assert on_disk - in_wheel == set()  # every module is shipped
    assert in_wheel - on_disk - {"__init__.py"} == set()  # and nothing stale
    # the example flows name their schema beside them (`$schema=./flow.schema.json`)
    for data in (
        "api/static/console/index.html",
        "infra/flows/demo.yaml",
        "infra/flows/flow.schema.json",
    ):
        assert f"shipflow/{data}" in names
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    moto = [line for line in requires if line.split()[1].lower().startswith("moto")]
    assert moto and all('extra == "embedded"' in line for line in moto), moto
