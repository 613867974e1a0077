"""The front port of a local service: an asyncio TCP proxy that routes by readiness.

Each NEW connection goes to the next ready instance (round-robin); a connection already
open keeps its instance until either side closes it, which is what lets an instance
drain: it leaves the rotation at once, and the runtime stops it only when its last
connection is gone (or its termination grace runs out). A connection is counted on its
instance from the moment it is picked, so a drain never misses one that is connecting.

While a canary splits the service's traffic (`router.per_request()`), a new connection is
served request by request instead (`http_proxy`): each HTTP request goes where the weight
sends it, also on keep-alive connections. The server decides per accepted connection which
of the two serves it.

The per-request path runs on asyncio Protocols (`http_proxy` says why); the splice stays
on streams. A splice on Protocols was built and measured (docs/benchmarks.md, "Per-request
weighting vs splicing"): ~20% less CPU per request than this one, but per-request routing
then cost 11-33% of its throughput, against issue #17's budget of 10%, so it was not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

from shipflow.worker.runtime.http_proxy import PerRequest

CONNECT_TIMEOUT_S = 2.0
#: How long a new connection waits for some instance to become ready before it is closed.
NO_BACKEND_WAIT_S = 2.0
BUFFER = 256 * 1024
#: After the instance closed its side, how long the client may keep the connection open.
CLOSE_GRACE_S = 5.0


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
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=BUFFER), self._handle)

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

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        tried: set[str] = set()
        try:
            while True:
                backend = await self._backend(tried)
                if backend is None:
                    return
                backend.connections += 1
                try:
                    try:
                        async with asyncio.timeout(CONNECT_TIMEOUT_S):
                            up_r, up_w = await asyncio.open_connection(
                                "127.0.0.1", backend.port, limit=BUFFER
                            )
                    except (OSError, TimeoutError):
                        tried.add(backend.id)  # gone between its last probe and now: next one
                        continue
                    await _splice(client_r, client_w, up_r, up_w)
                    return
                finally:
                    backend.connections -= 1
        finally:
            client_w.close()
            with contextlib.suppress(Exception):
                await client_w.wait_closed()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await src.read(BUFFER)
            if not data:
                break
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (OSError, RuntimeError):
        # A reset on either side ends this direction; closing both ends the other.
        dst.close()


async def _splice(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
) -> None:
    up = asyncio.create_task(_pipe(client_r, up_w))
    down = asyncio.create_task(_pipe(up_r, client_w))
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down.done() and not up.done():
            # The instance finished its answer and closed: give the client a moment to
            # close its side, then end the connection so it does not pin the instance.
            await asyncio.wait({up}, timeout=CLOSE_GRACE_S)
        else:
            await asyncio.wait({up, down})
    finally:
        for task in (up, down):
            task.cancel()
        up_w.close()
        with contextlib.suppress(Exception):
            await up_w.wait_closed()
