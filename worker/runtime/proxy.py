"""The front port of a local service: an asyncio TCP proxy that routes by readiness.

Each NEW connection goes to the next ready instance (round-robin); a connection already
open keeps its instance until either side closes it, which is what lets an instance
drain: it leaves the rotation at once, and the runtime stops it only when its last
connection is gone (or its termination grace runs out). A connection is counted on its
instance from the moment it is picked, so a drain never misses one that is connecting.

While a canary splits the service's traffic (`router.per_request()`), a new connection is
served request by request instead (`http_proxy`): each HTTP request goes where the weight
sends it, also on keep-alive connections. Otherwise it is spliced whole (`splice`).

Both run on asyncio Protocols (callbacks on the transports) rather than streams: the
front port is a single-threaded relay, and on a loaded 2-core machine the coroutines and
futures that streams cost per read and write were what bounded its throughput (issue #17,
docs/benchmarks.md). The server decides per accepted connection which of the two serves it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from shipflow.worker.runtime.http_proxy import PerRequest
from shipflow.worker.runtime.splice import Splice

#: How long a new connection waits for some instance to become ready before it is closed.
NO_BACKEND_WAIT_S = 2.0


class Backend(Protocol):
    id: str
    port: int
    connections: int
    revision: str


class Router(Protocol):
    """What a front port asks its service (`state.Service`)."""

    def pick(self, exclude: set[str]) -> Backend | None: ...

    def per_request(self) -> bool: ...

    def pick_request(self, exclude: set[str]) -> Backend | None: ...

    def record(self, backend: Backend, seconds: float, ok: bool) -> None: ...


class FrontPort:
    """Listen on `port` and proxy each connection to a backend that `router` chooses."""

    def __init__(self, port: int, router: Router, *, host: str = "127.0.0.1"):
        self.port = port
        self.host = host
        self._router = router
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind the port.

        Raises:
            OSError: the port is taken (errno EADDRINUSE) or cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self.host, self.port, reuse_address=True, backlog=1024
        )

    def _protocol(self) -> asyncio.BaseProtocol:
        """What serves a connection just accepted: per request (callbacks, `http_proxy`)
        while the router splits by weight, else a splice of the whole connection."""
        if self._router.per_request():
            return PerRequest(self._router, self._request_backend)
        return Splice(self._router, self._backend)

    async def close(self) -> None:
        """Stop listening. Open connections are left to finish on their own."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _backend(self, tried: set[str], *, per_request: bool = False) -> Backend | None:
        deadline = time.monotonic() + NO_BACKEND_WAIT_S
        pick = self._router.pick_request if per_request else self._router.pick
        while True:
            backend = pick(tried)
            if backend is not None or tried or time.monotonic() >= deadline:
                return backend
            await asyncio.sleep(0.02)

    async def _request_backend(self, tried: set[str]) -> Backend | None:
        return await self._backend(tried, per_request=True)
