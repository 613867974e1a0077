"""Per-request routing of HTTP/1.1 at a front port, for canaries.

While a canary splits a service's traffic by weight, a connection cannot be pinned to
one instance: a keep-alive client would then send all its requests to one version. So
the front port reads each request (head and body, by Content-Length or chunked), asks the
router for an instance for that request alone, forwards it over a kept upstream
connection to that instance, and relays the answer back. Each answer is timed and
recorded per revision (status below 500 counts as a success; no answer at all as a
failure), which is what the canary analysis reads.

Only what HTTP/1.1 framing needs is parsed (`http_framing`); anything else (an
`Upgrade`, a malformed head) ends the connection, a head over `REQUEST_HEAD_LIMIT` gets a
431. Requests are served one at a time and in order: a client that sends the next
request before its answer (pipelining) has it read and kept until the answer is out. A
request is sent to an instance once: again on a new connection only when its kept
connection turns out stale (closed by the instance while idle), never after an answer
timeout (`_may_resend`). An answer that does not start within `ANSWER_TIMEOUT_S` is a
504; an instance that fails before answering, a 502; no instance at all, a 503. A request
counts on its instance while it is in flight (`connections`), so an instance drains when
its in-flight requests end; idle upstream connections to an instance that left the
rotation are closed and never reused.

Why callbacks (asyncio `Protocol`s) rather than streams: issue #17 asks that per-request
routing cost under 10% of the front port's throughput against splicing
(`bench/proxy_bench.py`, docs/benchmarks.md). With `StreamReader`/`StreamWriter`, each
request cost a handful of coroutines and futures (`readuntil`, `readexactly`, `drain`)
on top of the same reads and writes a splice does. Here each read is one
`data_received` call that finds the message's end in the bytes at hand and forwards
them: a small answer that arrives whole leaves in one send, unchanged. Flow control is
the transports' own: a slow client pauses the reading of the instance's answer
(`pause_writing` -> `pause_reading`) and the next request waits until the client has
caught up, so the proxy never buffers an unbounded answer; a client far ahead with
pipelined requests has its reading paused past `READ_AHEAD`. The answer timeout keeps one
timer per connection (`AnswerClock`). The usual request (a kept connection to a ready
instance, an answer that arrives whole) is handled with the calls inlined, as the Python
calls per request were most of what was left (`_start`, `_Upstream._answer`).

An interim answer (`100 Continue`) is passed on and the final one awaited (and a client that
asks `Expect: 100-continue` gets its go-ahead from the front port itself, which needs the
body before it can route); an answer without a body (HEAD, 204, 304) leaves the connection
in use whatever its head says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shipflow.worker.runtime.http_framing import (
    HEAD_LIMIT,
    ChunkedScanner,
    answer_head,
    request_head,
)

#: A client's request head may be this long; a longer one gets a 431.
REQUEST_HEAD_LIMIT = 256 * 1024
#: A request's body may be this long. The front port reads each request whole before it
#: picks an instance for it (and can then send it once more on a stale connection), so
#: this bounds what one client connection can make the runtime hold: a longer body, told
#: by its Content-Length or found while a chunked one arrives, gets a 413 and the
#: connection closes, instead of the runtime, and every service it supervises, running out
#: of memory.
REQUEST_BODY_LIMIT = 64 * 1024 * 1024
CONNECT_TIMEOUT_S = 2.0
#: How long an answer may take to start; the front port answers 504 after it.
ANSWER_TIMEOUT_S = 300.0
#: Answers up to this size (by Content-Length) are kept until whole and sent in one write.
SMALL_ANSWER = 64 * 1024
#: Bytes of requests a client may send ahead (pipelined) before its reading is paused.
READ_AHEAD = 256 * 1024

#: Methods whose request may be sent twice with the effect of once (RFC 9110, 9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
_413_TEXT = b"request body over the front port's limit of %d bytes while a canary splits traffic\n"
_502 = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_504 = b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

Pick = Callable[[set[str]], Awaitable[Any]]

# What an upstream connection is doing (`_Upstream.state`).
_IDLE, _HEAD, _SMALL, _LENGTH, _CHUNKED, _EOF = range(6)
_STREAMING = (_LENGTH, _CHUNKED, _EOF)


class AnswerClock:
    """`ANSWER_TIMEOUT_S` for each answer of one connection, with one timer at a time.

    Scheduling and cancelling a timer per request was a sixth of the per-request path's
    CPU. Here the timer stays armed across requests and only looks at the current deadline
    when it fires (at most every `ANSWER_TIMEOUT_S`): past it, `on_timeout` is called.
    """

    __slots__ = ("_deadline", "_loop", "_on_timeout", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_timeout: Callable[[], None]) -> None:
        self._loop = loop
        self._on_timeout = on_timeout
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._deadline = self._loop.time() + ANSWER_TIMEOUT_S
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check)

    def stop(self) -> None:
        self._deadline = None

    def close(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._deadline is None:
            return  # between answers: the next `start` arms a new timer
        if self._loop.time() >= self._deadline:
            self._deadline = None
            self._on_timeout()
        else:
            self._timer = self._loop.call_at(self._deadline, self._check)


class PerRequest(asyncio.Protocol):
    """One client connection, served request by request (see the module docstring).

    `pick` waits for a ready backend when the router has none at once.
    """

    def __init__(self, router: Any, pick: Pick) -> None:
        self._router = router
        self._pick = pick
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._clock = AnswerClock(self._loop, self._timed_out)
        self._upstreams: dict[str, _Upstream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # What the client sent and is not yet forwarded, and how far it was looked at.
        self._buf: bytes | bytearray = b""
        self._scanned = 0
        self._end = -1  # the current request's end in _buf, once its head is read (-1: not yet)
        self._body_at = 0
        self._head_end = 0
        self._chunks: ChunkedScanner | None = None
        self._method = b""
        self._keep = True
        self._eof = False  # the client sent all it will
        self._gone = False  # the client's connection is lost
        self._closed = False  # we are closing the client's connection
        self._paused = False  # the client reads slower than answers come (transport's high water)
        self._reading = True
        # The request in flight.
        self._busy = False
        self._request = b""
        self._tried: set[str] = set()
        self._backend: Any = None
        self._current: _Upstream | None = None
        self._began = 0.0
        self._reused = False
        self._written = False
        self._answered = False
        self._forwarded = False

    # -- the client's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._buf:
            if not isinstance(self._buf, bytearray):
                self._buf = bytearray(self._buf)
            self._buf += data
        else:
            self._buf = data
        if self._busy or self._paused:
            if len(self._buf) > READ_AHEAD and self._reading:
                self._reading = False
                self._transport.pause_reading()  # type: ignore[union-attr]
            return
        self._next()

    def eof_received(self) -> bool:
        self._eof = True
        if not self._busy and not self._paused:
            self._next()
        return True  # keep the sending half open for the answer in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = self._closed = True
        up = self._current
        if self._busy and up is not None and up.state in _STREAMING:
            # The answer has begun and has no one to go to: it counts as given.
            self._done(up, up.status < 500, close=True)
        elif not self._busy:
            self._cleanup()
        # Else the request is on its way (connecting, waiting for an instance or for the
        # answer's head): it ends as it would have, and then the connection is cleaned up.

    def pause_writing(self) -> None:
        self._paused = True
        up = self._current
        if up is not None and up.state in _STREAMING:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        up = self._current
        if up is not None and up.state in _STREAMING:
            up.transport.resume_reading()
        elif not self._busy and not self._closed:
            self._next()

    def _next(self) -> None:
        """Take the next whole request from the buffer and forward it, if there is one."""
        while not self._busy and not self._closed and not self._paused:
            buf = self._buf
            if not buf:  # the usual case after an answer: nothing sent ahead
                if self._eof:
                    self._close()
                return
            if not self._reading:
                self._reading = True
                self._transport.resume_reading()  # type: ignore[union-attr]
            if self._end < 0 and not self._read_head(buf):
                return
            if self._chunks is not None:
                try:
                    end = self._chunks.feed(buf, self._body_at)
                except ValueError:
                    self._close()
                    return
                if end < 0:
                    self._body_at = len(buf)
                    if len(buf) - self._head_end > REQUEST_BODY_LIMIT:
                        self._refuse_body()
                    elif self._eof:
                        self._close()
                    return
                self._end = end
                self._chunks = None
            end = self._end
            if len(buf) < end:
                if self._eof:
                    self._close()
                return
            if end == len(buf):
                request = bytes(buf) if isinstance(buf, bytearray) else buf
                self._buf = b""
            else:
                request = bytes(buf[:end])
                self._buf = buf[end:]
            self._end = -1
            self._scanned = 0
            self._start(request)

    def _read_head(self, buf: bytes | bytearray) -> bool:
        """Parse the head at the start of `buf` and set the request's end. False: wait for
        more bytes (or the connection was closed)."""
        scanned = self._scanned
        at = buf.find(b"\r\n\r\n", scanned - 3 if scanned > 3 else 0)
        if at < 0 or at + 4 > REQUEST_HEAD_LIMIT:
            if len(buf) > REQUEST_HEAD_LIMIT:
                self._transport.write(_431)  # type: ignore[union-attr]
                self._close()
            elif self._eof:
                self._close()
            else:
                self._scanned = len(buf)
            return False
        end = head_end = at + 4
        head = buf if end == len(buf) and type(buf) is bytes else bytes(buf[:end])
        parsed = request_head(head)
        if parsed is None:
            self._close()
            return False
        method, version, connection, fields = parsed
        if b"upgrade" in connection:
            self._close()
            return False
        self._method = method
        self._keep = b"close" not in connection and (
            version == b"HTTP/1.1" or b"keep-alive" in connection
        )
        if fields:
            if b"chunked" in fields.get(b"transfer-encoding", b""):
                self._chunks = ChunkedScanner()
                self._body_at = self._head_end = end
            elif (length := fields.get(b"content-length")) is not None:
                if not length.isdigit():
                    self._close()
                    return False
                if int(length) > REQUEST_BODY_LIMIT:
                    self._refuse_body()
                    return False
                end += int(length)
        self._end = end
        if (
            b"expect" in fields
            and len(buf) == head_end  # nothing of the body yet
            and (end > head_end or self._chunks is not None)  # and there is one to come
            and version == b"HTTP/1.1"
            and b"100-continue" in fields[b"expect"]
        ):
            # The client waits for a go-ahead before it sends the body (curl does, for
            # bodies over 1 MiB), and the front port needs the whole body before it can pick
            # an instance: it gives the go-ahead itself (RFC 9110, 10.1.1) rather than leave
            # the client to its own timeout (a second, for curl). A `100` the instance sends
            # later is passed on too; a client takes any number of them.
            self._transport.write(_100)  # type: ignore[union-attr]
        return True

    def _refuse_body(self) -> None:
        """413 for a body over `REQUEST_BODY_LIMIT`; the rest of it is never read."""
        text = _413_TEXT % REQUEST_BODY_LIMIT
        self._transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n"
            b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
        )
        self._buf = b""
        self._close()

    # -- one request's way to an instance and back

    def _start(self, request: bytes) -> None:
        self._busy = True
        self._request = request
        tried: set[str] = set()
        self._tried = tried
        upstreams = self._upstreams
        for kept in upstreams.values():
            backend = kept.backend
            if not backend.ready or backend.stopping:  # left the rotation: never reuse
                self._drop_stale()
                break
        backend = self._router.pick_request(tried)  # at once when one is ready (usual)
        if backend is None:
            self._spawn(self._wait_for_backend())
            return
        up = upstreams.get(backend.id)
        if up is None or up.closed:
            self._use(backend)
            return
        # The usual case, inline (each call here is a share of the per-request cost): a
        # kept connection to a ready instance.
        self._backend = backend
        backend.connections += 1
        self._began = time.perf_counter()
        self._send(up, reused=True)

    def _drop_stale(self) -> None:
        for bid, up in list(self._upstreams.items()):
            if not up.backend.ready or up.backend.stopping:
                del self._upstreams[bid]
                up.close()

    def _dispatch(self) -> None:
        backend = self._router.pick_request(self._tried)  # at once when one is ready (usual)
        if backend is None:
            self._spawn(self._wait_for_backend())
        else:
            self._use(backend)

    def _use(self, backend: Any) -> None:
        self._backend = backend
        backend.connections += 1
        self._began = time.perf_counter()
        up = self._upstreams.get(backend.id)
        if up is None:
            self._spawn(self._connect(backend))
        elif up.closed:
            # The instance closed this idle connection (a stale keep-alive): nothing was
            # sent on it, so a new connection takes the request, whatever its method.
            self._upstreams.pop(backend.id).close()
            self._settle()
            self._dispatch()
        else:
            self._send(up, reused=True)

    async def _wait_for_backend(self) -> None:
        backend = await self._pick(self._tried)
        if backend is None:
            self._write(_503)
            self._end_request(close=True)
        else:
            self._use(backend)

    async def _connect(self, backend: Any) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, up = await self._loop.create_connection(
                    lambda: _Upstream(self, backend), "127.0.0.1", backend.port
                )
        except (OSError, TimeoutError):
            self._settle()
            self._tried.add(backend.id)
            self._dispatch()  # gone between its last probe and now: the next one
            return
        if self._gone:
            up.close()
            self._settle()
            self._end_request(close=True)
            return
        self._upstreams[backend.id] = up
        self._send(up, reused=False)

    def _send(self, up: _Upstream, *, reused: bool) -> None:
        self._current = up
        self._reused = reused
        self._answered = self._forwarded = False
        up.state = _HEAD  # an answer is awaited
        up._method = self._method
        up._head = b""
        up.transport.write(self._request)
        # Written: handed to the kernel, or else once the buffer drains (`resume_writing`).
        self._written = not up.transport.get_write_buffer_size()
        self._clock.start()

    def _write(self, data: bytes) -> None:
        if not self._gone:
            self._transport.write(data)  # type: ignore[union-attr]

    def _done(self, up: _Upstream, ok: bool, *, close: bool) -> None:
        """The answer is relayed whole: record it and go on with the next request."""
        backend = self._backend
        self._router.record(backend, time.perf_counter() - self._began, ok)
        backend.connections -= 1
        self._backend = None
        if close:
            self._drop(up)
            self._end_request(close=True)
            return
        self._busy = False  # inline `_end_request`
        self._current = None
        self._request = b""
        if not self._keep or self._closed:
            self._close()
        elif self._buf or self._eof:
            self._next()

    def _failed(self, up: _Upstream, error: BaseException) -> None:
        """No whole answer came: send the request once more, or fail it."""
        self._clock.stop()
        self._drop(up)
        if self._reused and not self._answered and _may_resend(error, self._method, self._written):
            self._settle()
            self._dispatch()  # the instance closed an idle connection: once more on a new one
            return
        self._router.record(self._backend, time.perf_counter() - self._began, False)
        self._settle()
        if not self._forwarded:
            self._write(_504 if isinstance(error, TimeoutError) else _502)
        self._end_request(close=True)

    def _timed_out(self) -> None:
        up = self._current
        if self._busy and up is not None and up.state == _HEAD:
            self._failed(up, TimeoutError())

    def _settle(self) -> None:
        """The request no longer counts on its instance (draining waits on this)."""
        if self._backend is not None:
            self._backend.connections -= 1
            self._backend = None

    def _drop(self, up: _Upstream) -> None:
        if self._upstreams.get(up.backend_id) is up:
            del self._upstreams[up.backend_id]
        up.close()

    def _end_request(self, *, close: bool) -> None:
        self._busy = False
        self._current = None
        self._request = b""
        if close or self._closed:
            self._close()
        else:
            self._next()

    def _upstream_gone(self, up: _Upstream) -> None:
        """An idle upstream connection was closed by its instance: never reuse it."""
        self._drop(up)

    def _close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        self._cleanup()

    def _cleanup(self) -> None:
        self._clock.close()
        for up in self._upstreams.values():
            up.close()
        self._upstreams.clear()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Upstream(asyncio.Protocol):
    """A kept connection from one client connection to one instance: relays each answer
    to the client as its bytes arrive, and tells the client's side where it ended."""

    def __init__(self, client: PerRequest, backend: Any) -> None:
        self.client = client
        self.backend = backend
        self.backend_id: str = backend.id
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.closed = False
        self.state = _IDLE
        self.status = 0
        self._method = b""
        self._head = b""  # the start of an answer head cut by the end of a read
        self._small = bytearray()
        self._left = 0
        self._chunks: ChunkedScanner | None = None
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def close(self) -> None:
        self.closed = True
        self.state = _IDLE
        if self.transport is not None:
            self.transport.close()

    def resume_writing(self) -> None:
        if self.client._current is self:
            self.client._written = True

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _HEAD:
            self._answer(data)
        elif state == _SMALL:
            self._small += data
            self._left -= len(data)
            if self._left <= 0:
                small = self._small
                self._small = bytearray()
                self._finish(
                    bytes(small[: len(small) + self._left] if self._left else small), self._left < 0
                )
        elif state == _LENGTH:
            if len(data) < self._left:
                self._left -= len(data)
                self.client._write(data)
            else:
                extra = len(data) > self._left
                self._finish(data[: self._left] if extra else data, extra)
        elif state == _CHUNKED:
            try:
                end = self._chunks.feed(data)  # type: ignore[union-attr]
            except ValueError:
                self.client._failed(self, ValueError("bad chunk"))
                return
            if end < 0:
                self.client._write(data)
            else:
                self._finish(data[:end] if end < len(data) else data, end < len(data))
        elif state == _EOF:
            self.client._write(data)
        elif not self.closed:
            self.close()  # an answer nobody asked for: this connection cannot be trusted
            self.client._upstream_gone(self)

    def _answer(self, data: bytes) -> None:
        """The first bytes of an answer: its head says how the rest is framed."""
        buf = self._head + data if self._head else data
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end + 4 > HEAD_LIMIT:
            if len(buf) > HEAD_LIMIT:
                self.client._failed(self, ValueError("answer head too long"))
            else:
                self._head = buf
            return
        end += 4
        self._head = b""
        status, length, connection, encoding = answer_head(buf[:end])
        client = self.client
        if 100 <= status < 200 and status != 101:
            client._write(buf[:end])  # an interim answer (100 Continue): the answer follows
            if len(buf) > end:
                self._answer(buf[end:])
            return
        client._clock._deadline = None  # answered in time (inline `AnswerClock.stop`)
        client._answered = True
        self.status = status
        close = b"close" in connection or status == 101
        if self._method == b"HEAD" or status in (204, 304) or status == 101:
            # No body, whatever the head says: the connection stays usable without framing.
            self._finish(buf[:end] if len(buf) > end else buf, len(buf) > end, close)
        elif encoding is not None:
            if b"chunked" not in encoding:
                self._stream(_EOF, buf)  # framed by the end of the connection (RFC 9112, 6.3)
                return
            self._chunks = scanner = ChunkedScanner()
            try:
                body_end = scanner.feed(buf, end)
            except ValueError:
                client._failed(self, ValueError("bad chunk"))
                return
            if body_end < 0:
                self._stream(_CHUNKED, buf)
            else:
                self._finish(
                    buf[:body_end] if body_end < len(buf) else buf, body_end < len(buf), close
                )
        elif length is not None:
            if not length.isdigit():
                client._failed(self, ValueError("bad Content-Length"))
                return
            total = end + int(length)
            have = len(buf)
            if have == total:  # the usual case: the whole answer in one read, sent in one write
                self.state = _IDLE  # inline `_finish`
                client._forwarded = True
                if not client._gone:
                    client._transport.write(buf)  # type: ignore[union-attr]
                client._done(self, status < 500, close=close)
            elif have > total:
                self._finish(buf[:total], True, close)
            elif total - end <= SMALL_ANSWER:
                self.state = _SMALL
                self._small = bytearray(buf)
                self._left = total - have
                self._close_after = close
            else:
                self._left = total - have
                self._close_after = close
                self._stream(_LENGTH, buf)
        else:
            self._stream(_EOF, buf)

    def _stream(self, state: int, first: bytes) -> None:
        """Relay a body as it arrives; while the client is behind, stop reading it."""
        self.state = state
        client = self.client
        client._forwarded = True
        client._write(first)
        if client._paused:
            self.transport.pause_reading()

    def _finish(self, last: bytes, extra: bool, close: bool | None = None) -> None:
        """The answer's last bytes: send them and hand the connection back (or close it
        when the instance sent more than its answer)."""
        if close is None:
            close = self._close_after
        self._close_after = False
        self.state = _IDLE
        self._chunks = None
        client = self.client
        client._forwarded = True
        client._write(last)
        client._done(self, self.status < 500, close=close or extra)

    def eof_received(self) -> bool:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        if self.closed:
            return
        state = self.state
        self.closed = True
        self.state = _IDLE
        if state == _IDLE:
            self.client._upstream_gone(self)
        elif state == _EOF:
            self.client._done(self, self.status < 500, close=True)
        else:
            partial = self._head if state == _HEAD else b"-"
            error = exc if isinstance(exc, OSError) else asyncio.IncompleteReadError(partial, None)
            self.client._failed(self, error)


def _may_resend(error: BaseException, method: bytes, written: bool) -> bool:
    """May a request that failed on a reused connection, before any byte of an answer, be
    sent again on a new one?

    Only when the failure is what a stale keep-alive looks like: the instance had closed
    the connection, so the request reached no one (reset or EOF at once). Never after a
    timeout: the instance may be running the request, and a second copy could run it twice
    (issue #17). A non-idempotent request (POST, PATCH...) is sent again only when the
    connection failed while the request was being written; once the instance accepted it
    whole, an EOF may also mean the instance died running it.
    """
    if isinstance(error, TimeoutError) or not isinstance(
        error, ConnectionResetError | BrokenPipeError | asyncio.IncompleteReadError
    ):
        return False
    if isinstance(error, asyncio.IncompleteReadError) and error.partial:
        return False  # a part of an answer arrived
    return not written or method in IDEMPOTENT
