"""`StackConfig`: what the embedded stack is configured with, and what its children get from it.

The bottom of `EmbeddedStack`'s class chain (config < processes < readiness < components <
lifecycle < supervision): ports, data dir, the admin token, the addresses, and the
environment the worker and the API are started with (only `SHIPFLOW_*` variables).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from shipflow.activities.core.codec import KEY_FILE_NAME
from shipflow.activities.core.group_crypto import KEY_FILE_NAME as GROUPS_KEY_FILE_NAME

if TYPE_CHECKING:
    from shipflow.infra.stack.processes import Child


REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN_NAME = "local-admin"


def hash_admin_token(token: str) -> str:
    """sha256 hex of the token, as the API stores and checks it (`shipflow.api.auth`)."""
    from shipflow.api.auth import hash_token

    return hash_token(token)


def new_admin_token() -> str:
    from shipflow.api.auth import new_token

    return new_token()


class StackConfig:
    """The stack's settings and addresses; see `EmbeddedStack` for the arguments."""

    def __init__(
        self,
        data_dir: str | Path,
        api_port: int = 8000,
        temporal_port: int = 7233,
        ui_port: int = 8233,
        runtime_port: int = 7300,
        s3_port: int = 7400,
        *,
        metrics_port: int = 0,
        task_queue: str = "shipflow",
        say: Callable[[str], None] | None = None,
        extra_env: dict[str, str] | None = None,
        start_timeout_s: float = 60.0,
        keep_services: bool = False,
        max_restarts: int = 5,
        restart_window_s: float = 120.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 15.0,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.logs_dir = self.data_dir / "logs"
        self.api_port = api_port
        self.temporal_port = temporal_port
        self.ui_port = ui_port
        self.runtime_port = runtime_port
        self.s3_port = s3_port
        self.metrics_port = metrics_port
        self.task_queue = task_queue
        self.extra_env = dict(extra_env or {})
        self.start_timeout_s = start_timeout_s
        self.keep_services = keep_services
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.token = new_admin_token()
        self.children: list[Child] = []
        self.s3_url: str | None = None
        self.runtime_url: str | None = None
        self.notes: list[str] = []
        self._atexit_registered = False
        self._lock: IO[str] | None = None
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        #: Why the stack gave up (a child kept crashing); None while it is fine.
        self.failure: str | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        # Held while children are checked, restarted or stopped: one of those at a time.
        self._children_lock = threading.RLock()
        self._supervisor: threading.Thread | None = None

    # ------------------------------------------------------------ addresses

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'shipflow.db'}"

    @property
    def payload_key_file(self) -> Path:
        """The payload encryption keys (mode 0600), generated on the first start."""
        return self.data_dir / KEY_FILE_NAME

    @property
    def groups_key_file(self) -> Path:
        """The key sealing secret group values (mode 0600), generated on the first start."""
        return self.data_dir / GROUPS_KEY_FILE_NAME

    def endpoints(self, *, show_token: bool = True) -> list[tuple[str, str]]:
        """(component, where) for the summary table; the token is the last row.

        The token is shown for `shipflow dev` (the user needs it); output that may end up
        in a CI log (the demo) passes `show_token=False`.
        """
        rows = [
            ("API", self.api_url),
            ("Web UI", self.ui_url),
            ("Temporal", self.temporal_address),
            ("S3", self.s3_url or "not started"),
            ("runtime", self.runtime_url or "not started"),
            *(
                [("worker metrics", f"http://127.0.0.1:{self.metrics_port}/metrics")]
                if self.metrics_port
                else []
            ),
            ("data dir", str(self.data_dir)),
            ("logs", str(self.logs_dir)),
            ("token", self.token if show_token else "generated (admin; not shown)"),
        ]
        return rows

    def pids(self) -> dict[str, int]:
        return {c.name: c.proc.pid for c in self.children}

    def child_env(self) -> dict[str, str]:
        """The environment of the worker and the API: all configuration is SHIPFLOW_*."""
        env = dict(os.environ)
        # Let `python`/`temporal` in flow commands mean this installation's, and make
        # the repo importable however the stack was launched.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env["PYTHONPATH"] = str(REPO_ROOT) + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        env["PYTHONUNBUFFERED"] = "1"
        for name in [k for k in env if k.startswith("SHIPFLOW_")]:
            del env[name]  # a user's shell settings must not point the stack elsewhere
        env.update(
            {
                "SHIPFLOW_TEMPORAL_ADDRESS": self.temporal_address,
                "SHIPFLOW_TEMPORAL_NAMESPACE": "default",
                "SHIPFLOW_TASK_QUEUE": self.task_queue,
                "SHIPFLOW_UI_URL": self.ui_url,
                "SHIPFLOW_DATA_DIR": str(self.data_dir),
                "SHIPFLOW_DATABASE_URL": self.database_url,
                "SHIPFLOW_API_URL": self.api_url,
                "SHIPFLOW_TOKENS": json.dumps(
                    [
                        {
                            "name": ADMIN_TOKEN_NAME,
                            "role": "admin",
                            "sha256": hash_admin_token(self.token),
                        }
                    ]
                ),
                "SHIPFLOW_RUNTIME_URL": self.runtime_url or f"http://127.0.0.1:{self.runtime_port}",
                # Temporal gets only ciphertext; the Web UI decodes through the API's
                # /codec, open to it on loopback (the UI cannot send a shipflow token).
                "SHIPFLOW_PAYLOAD_KEY_FILE": str(self.payload_key_file),
                "SHIPFLOW_GROUPS_KEY_FILE": str(self.groups_key_file),
                "SHIPFLOW_CODEC_LOOPBACK_OPEN": "true",
            }
        )
        if self.metrics_port:
            env["SHIPFLOW_WORKER_METRICS_ADDRESS"] = f"127.0.0.1:{self.metrics_port}"
        if self.s3_url:
            env["SHIPFLOW_S3_ENDPOINT"] = self.s3_url
            # moto accepts any credentials; boto3 just needs some.
            env.setdefault("AWS_ACCESS_KEY_ID", "shipflow-local")
            env.setdefault("AWS_SECRET_ACCESS_KEY", "shipflow-local")
            env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        env.update(self.extra_env)
        return env
