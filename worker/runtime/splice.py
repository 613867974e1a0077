"""Splicing one client connection to one instance at a front port, on asyncio Protocols.

A plain service's front port pins each new connection to the instance `pick` chooses and
copies bytes both ways until the connection ends (`proxy.FrontPort`). Each side is a
`Protocol` whose `data_received` writes straight into the other side's transport, and
the transports' flow control is joined across: when one side's peer reads slowly, the
other side's reading is paused (`pause_writing` -> `pause_reading`). No coroutine runs
per read (streams cost a `read` and a `drain` coroutine per chunk each way); only opening
the connection to the instance is a task.

Half-closes are passed on (`write_eof`). When the instance has finished and closed, the
client gets `CLOSE_GRACE_S` to close its side, then the connection ends so that it does
not pin a draining instance. The connection counts on its instance (`connections`) from
the moment the instance is picked until both sides are closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

CONNECT_TIMEOUT_S = 2.0
#: After the instance closed its side, how long the client may keep the connection open.
CLOSE_GRACE_S = 5.0
#: What a client may send before its instance is connected, before its reading is paused.
PENDING_LIMIT = 256 * 1024

#: Waits for an instance not in `tried` (None: none became ready in time).
PickWait = Callable[[set[str]], Awaitable[Any]]


class Splice(asyncio.Protocol):
    """The client's side of a spliced connection."""

    def __init__(self, router: Any, pick: PickWait) -> None:
        self._router = router
        self._pick = pick
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._up: _Up | None = None
        self._pending: list[bytes] = []  # what the client sent before the instance was connected
        self._backend: Any = None
        self._client_eof = False
        self._up_eof = False
        self._ended = False
        self._grace: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._task = asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        tried: set[str] = set()
        while not self._ended:
            backend = self._router.pick(tried)
            if backend is None:
                backend = await self._pick(tried)
            if backend is None or self._ended:
                self._end()
                return
            backend.connections += 1
            self._backend = backend
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await self._loop.create_connection(lambda: _Up(self), "127.0.0.1", backend.port)
            except (OSError, TimeoutError):
                self._settle()
                tried.add(backend.id)  # gone between its last probe and now: the next one
                continue
            return

    def _connected(self, up: _Up) -> None:
        if self._ended:
            up.transport.close()
            return
        self._up = up
        for data in self._pending:
            up.transport.write(data)
        self._pending.clear()
        if self._client_eof:
            _write_eof(up.transport)
        else:
            self._transport.resume_reading()  # type: ignore[union-attr]  # if it was paused

    def data_received(self, data: bytes) -> None:
        if self._up is not None:
            self._up.transport.write(data)
        else:
            self._pending.append(data)
            if sum(map(len, self._pending)) > PENDING_LIMIT:
                self._transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self._client_eof = True
        if self._up is not None:
            _write_eof(self._up.transport)
            if self._up_eof:
                self._end()
        return True  # the answer may still be coming

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def pause_writing(self) -> None:
        if self._up is not None:
            self._up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._up is not None:
            self._up.transport.resume_reading()

    def _up_finished(self) -> None:
        """The instance closed its side: pass it on, and give the client a moment."""
        self._up_eof = True
        if self._transport is not None and not self._transport.is_closing():
            _write_eof(self._transport)
        if self._client_eof:
            self._end()
        elif self._grace is None and not self._ended:
            self._grace = self._loop.call_later(CLOSE_GRACE_S, self._end)

    def _end(self) -> None:
        """Close both sides (a reset on either ends the connection)."""
        if self._ended:
            return
        self._ended = True
        if self._grace is not None:
            self._grace.cancel()
        if self._transport is not None:
            self._transport.close()
        if self._up is not None:
            self._up.transport.close()
        self._settle()

    def _settle(self) -> None:
        if self._backend is not None:
            self._backend.connections -= 1
            self._backend = None


class _Up(asyncio.Protocol):
    """The instance's side of a spliced connection."""

    def __init__(self, client: Splice) -> None:
        self.client = client
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.client._connected(self)

    def data_received(self, data: bytes) -> None:
        transport = self.client._transport
        if transport is not None:
            transport.write(data)

    def eof_received(self) -> bool:
        self.client._up_finished()
        return True  # the client may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._end()

    def pause_writing(self) -> None:
        if self.client._transport is not None:
            self.client._transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client._transport is not None and not self.client._ended:
            self.client._transport.resume_reading()


def _write_eof(transport: asyncio.Transport) -> None:
    if transport.can_write_eof() and not transport.is_closing():
        transport.write_eof()
