"""`StackLifecycle`: starting the embedded stack in order, stopping it in reverse, the data dir lock.

`start()` checks the ports, takes the data dir's lock, then starts Temporal, the local
runtime, S3, the worker and the API one after the other, each awaited until usable;
`stop()` (idempotent, also at interpreter exit) stops them in reverse order.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
from typing import Self

import httpx

from shipflow.activities.core.codec import ensure_key_file
from shipflow.activities.core.group_crypto import ensure_groups_key
from shipflow.activities.targets.local.runtime_key import KEY_FILE as RUNTIME_KEY_FILE
from shipflow.activities.targets.local.runtime_key import (
    RuntimeKeyError,
    auth_headers,
    read_key_file,
)
from shipflow.infra.stack.components import Components
from shipflow.infra.stack.ports import PORT_OPTIONS, PortInUse, port_is_free
from shipflow.infra.stack.processes import StackError


class StackLifecycle(Components):
    """Start and stop of the whole stack (see `EmbeddedStack`)."""

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def check_ports(self) -> None:
        """Raises PortInUse for the first configured port something already listens on."""
        seen: dict[int, str] = {}
        for attr, (what, option) in PORT_OPTIONS.items():
            port = int(getattr(self, attr))
            if port == 0:
                continue  # not served (the worker's metrics)
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
                            self._say(
                                f"runtime: could not stop service {name} (HTTP {stopped.status_code})"
                            )
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
