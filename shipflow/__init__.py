"""shipflow's one import root.

The code lives in the folders at the top of the repository (`workflows/`, `activities/`,
`api/`, `worker/`, `infra/`), where the design card wants them; this package holds only
relative symlinks to them, so that every module has exactly one name, `shipflow.<folder>...`,
whether it is run from a checkout (pytest, `python -m shipflow.worker.main`), installed
editable, or installed from a wheel (pyproject's `package-dir` maps each
`shipflow.<folder>` onto its folder, so a wheel holds real files and installs only the
top-level package `shipflow`). Importing a folder by its bare name (`import api`) would load
the same files a second time under another name; `tests/test_layout.py` forbids it.
"""
