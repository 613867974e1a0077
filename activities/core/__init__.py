"""The shared core: what every shipflow process needs, below the API and the worker.

Settings (`settings`), the Temporal client with its data converter and payload codec
(`client`, `codec`), starting a release run (`starter`), and the run store: the database
engine (`db`) and its SQL tables (`tables`). The API, the worker, the activities and the CLI
all import these; the core imports no activity (import-linter contract in pyproject.toml),
so it could leave `activities/` without a change to what it depends on.
"""
