"""Per-request routing of HTTP/1.1 at a front port, for canaries.

While a canary splits a service's traffic by weight, a connection cannot be pinned to
one instance: a keep-alive client would then send all its requests to one version. So
the front port reads each request (head and body, by Content-Length or chunked), asks the
router for an instance for that request alone, forwards it over a kept upstream
connection to that instance, and relays the answer back. Each answer is timed and
recorded per revision (status below 500 counts as a success; no answer at all as a
failure), which is what the canary analysis reads.

Only what HTTP/1.1 framing needs is parsed; anything else (an `Upgrade`, a malformed
head) ends the connection. A request is sent to an instance once: again on a new
connection only when its kept connection turns out stale (closed by the instance while
idle), never after an answer timeout (`_may_resend`). A request counts on its instance while it is in flight,
so an instance drains when its in-flight requests end; idle upstream connections to an
instance that left the rotation are closed and never reused.

Cost: issue #17 asks that per-request routing cost under 10% of the front port's
throughput against splicing (`bench/proxy_bench.py`, docs/benchmarks.md). What made it
cost more was Python work per request, not syscalls (the same reads and writes as a
splice): so the answer timeout keeps one timer per connection (`AnswerClock`), a small
answer is read whole and written in one send, the answer's head is searched rather than
split into a dict, and `drain()` is awaited only when data is left in the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

HEAD_LIMIT = 64 * 1024
CHUNK = 256 * 1024
CONNECT_TIMEOUT_S = 2.0
#: How long an answer may take to start; the front port answers 504 after it.
ANSWER_TIMEOUT_S = 300.0
#: Answers up to this size (by Content-Length) are read whole and sent in one write.
SMALL_ANSWER = 64 * 1024

Upstream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


#: A request head as RFC 9112 has it: a request line, then `name: value` lines whose name is
#: a token right before the colon (no space: a server must reject that), then an empty line.
_REQUEST_HEAD = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) [^ \r\n]+ (HTTP/1\.[01])\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n)*\r\n\Z"
)


def _request_head(head: bytes) -> tuple[bytes, bytes, bytes, dict[bytes, bytes]] | None:
    """(method, version, Connection, body framing fields) of a client's request head, or
    None for a head that is not well-formed HTTP/1.x (the connection is then closed).

    One regular expression checks the whole head and lookups search its lower-cased copy,
    instead of splitting every line in Python: this runs once per request. The framing
    fields (Content-Length, Transfer-Encoding) are returned only when present; two
    Content-Length fields are refused (a body that two parties could frame differently).
    """
    match = _REQUEST_HEAD.match(head)
    if match is None:
        return None
    lower = head.lower()
    fields: dict[bytes, bytes] = {}
    length = _field(lower, b"\r\ncontent-length:")
    if length is not None:
        if lower.count(b"\r\ncontent-length:") > 1:
            return None
        fields[b"content-length"] = length
    encoding = _field(lower, b"\r\ntransfer-encoding:")
    if encoding is not None:
        fields[b"transfer-encoding"] = encoding
    return match[1], match[2], _field(lower, b"\r\nconnection:") or b"", fields


def _answer_head(head: bytes) -> tuple[int, bytes | None, bytes, bytes | None]:
    """(status, Content-Length, Connection, Transfer-Encoding) of an instance's answer head.

    Found by searching the lower-cased head rather than splitting every line: an answer
    passes here once per request, and only these fields decide how it is relayed. Values
    come back lower-cased and stripped; a status that is not a number is a 502.
    """
    lower = head.lower()
    first = head[: head.find(b"\r\n")].split(b" ", 2)
    status = int(first[1]) if len(first) > 1 and first[1].isdigit() else 502
    return (
        status,
        _field(lower, b"\r\ncontent-length:"),
        _field(lower, b"\r\nconnection:") or b"",
        _field(lower, b"\r\ntransfer-encoding:"),
    )


def _field(lower: bytes, name: bytes) -> bytes | None:
    at = lower.find(name)
    if at < 0:
        return None
    at += len(name)
    return lower[at : lower.find(b"\r\n", at)].strip()


async def _relay_body(
    src: asyncio.StreamReader, fields: dict[bytes, bytes], write: Callable[[bytes], Awaitable[None]],
    *, until_eof: bool,
) -> None:
    """Copy one message body from `src` by its framing (chunked, length, or to EOF)."""
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        while True:
            size_line = await src.readuntil(b"\r\n")
            await write(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = await src.readuntil(b"\r\n")
                    await write(line)
                    if line == b"\r\n":
                        return
            data = await src.readexactly(size + 2)
            await write(data)
    length = fields.get(b"content-length")
    if length is not None:
        left = int(length)
        while left > 0:
            data = await src.read(min(CHUNK, left))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            await write(data)
        return
    if until_eof:
        while data := await src.read(CHUNK):
            await write(data)


async def serve_per_request(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, router: Any,
    pick: Callable[[set[str]], Awaitable[Any]],
) -> None:
    """Serve one client connection request by request. `pick` waits for a ready backend."""
    upstreams: dict[str, Upstream] = {}
    _no_delay(client_w)
    clock = AnswerClock()

    async def to_client(data: bytes) -> None:
        await _send(client_w, data)

    try:
        while True:
            try:
                head = await client_r.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                await to_client(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                                b"Content-Length: 0\r\n\r\n")
                return
            parsed = _request_head(head)
            if parsed is None:
                return
            method, version, connection, fields = parsed
            if b"upgrade" in connection:
                return
            request = head
            if fields:
                body = bytearray()
                await _relay_body(client_r, fields, _appender(body), until_eof=False)
                request = head + bytes(body)
            keep = b"close" not in connection and (version == b"HTTP/1.1" or b"keep-alive" in connection)
            if not await _forward(request, method, router, pick, upstreams, client_w, to_client, clock):
                return
            if not keep:
                return
    finally:
        clock.close()
        for _, w in upstreams.values():
            w.close()
        client_w.close()
        with contextlib.suppress(Exception):
            await client_w.wait_closed()


class AnswerClock:
    """`ANSWER_TIMEOUT_S` for each answer of one connection, with one timer at a time.

    `asyncio.timeout` per request schedules and cancels a timer each time, which was a
    sixth of the per-request path's CPU. Here the timer stays armed across requests and
    only looks at the current deadline when it fires (at most every `ANSWER_TIMEOUT_S`):
    past it, the connection's task is cancelled and `expired` turns that into a timeout.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._fired = False

    def start(self) -> None:
        self._deadline = self._loop.time() + ANSWER_TIMEOUT_S
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check)

    def stop(self) -> None:
        self._deadline = None

    def expired(self) -> bool:
        """True when the clock (and nothing else) cancelled the task: a timeout, not a cancel."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._deadline is None:
            return  # between answers: the next `start` arms a new timer
        if self._loop.time() >= self._deadline and self._task is not None:
            self._fired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(self._deadline, self._check)


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write, and wait only when the peer is slow (data left in the transport's buffer).

    `drain()` returns at once while the buffer is empty; skipping its call then saves two
    coroutines per write on the hot path. A peer that is gone shows at the next read.
    """
    writer.write(data)
    if writer.transport.get_write_buffer_size():
        await writer.drain()


async def _forward(
    request: bytes, method: bytes, router: Any, pick: Callable[[set[str]], Awaitable[Any]],
    upstreams: dict[str, Upstream], client_w: asyncio.StreamWriter,
    to_client: Callable[[bytes], Awaitable[None]], clock: AnswerClock,
) -> bool:
    """Send one request to a backend and relay its answer. False: close the client.

    The hot path (a small answer with a Content-Length, as most are) reads the whole answer
    and writes it to the client at once: one send instead of two.
    """
    tried: set[str] = set()
    if upstreams:
        ready = _ready_ids(router)
        for stale in [bid for bid in upstreams if bid not in ready]:
            upstreams.pop(stale)[1].close()
    while True:
        backend = router.pick_request(tried)  # at once when an instance is ready (the usual case)
        if backend is None:
            backend = await pick(tried)
        if backend is None:
            await to_client(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                            b"Connection: close\r\n\r\n")
            return False
        reused = backend.id in upstreams
        began = time.perf_counter()
        backend.connections += 1
        answered = forwarded = False
        try:
            if not reused:
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT_S):
                        upstreams[backend.id] = await asyncio.open_connection(
                            "127.0.0.1", backend.port, limit=HEAD_LIMIT
                        )
                        _no_delay(upstreams[backend.id][1])
                except (OSError, TimeoutError):
                    tried.add(backend.id)
                    continue
            up_r, up_w = upstreams[backend.id]
            if reused and _closed(up_r, up_w):
                # The instance closed this idle connection (a stale keep-alive): nothing was
                # sent on it, so a new connection takes the request, whatever its method.
                upstreams.pop(backend.id)[1].close()
                continue
            written = False
            try:
                up_w.write(request)
                if up_w.transport.get_write_buffer_size():
                    await up_w.drain()
                written = True
                clock.start()
                try:
                    head = await up_r.readuntil(b"\r\n\r\n")
                except asyncio.CancelledError:
                    if not clock.expired():
                        raise
                    raise TimeoutError from None
                finally:
                    clock.stop()
                answered = True
                status, length, connection, encoding = _answer_head(head)
                no_body = method == b"HEAD" or status in (204, 304) or 100 <= status < 200
                close = b"close" in connection or (length is None and encoding is None)
                if no_body:
                    forwarded = True
                    await to_client(head)
                elif length is not None and encoding is None and length.isdigit() and int(length) <= SMALL_ANSWER:
                    body = await up_r.readexactly(int(length))
                    forwarded = True
                    client_w.write(head + body)  # inline `_send`: the hot path's one write
                    if client_w.transport.get_write_buffer_size():
                        await client_w.drain()
                else:
                    forwarded = True
                    await to_client(head)
                    fields = {b"content-length": length} if length is not None else {}
                    if encoding is not None:
                        fields[b"transfer-encoding"] = encoding
                    await _relay_body(up_r, fields, to_client, until_eof=close)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    TimeoutError) as e:
                upstreams.pop(backend.id)[1].close()
                if reused and not answered and _may_resend(e, method, written):
                    continue  # the instance closed an idle connection: once more on a new one
                router.record(backend, time.perf_counter() - began, False)
                if not forwarded:
                    await to_client(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                    b"Connection: close\r\n\r\n")
                return False
            router.record(backend, time.perf_counter() - began, status < 500)
            if close:
                upstreams.pop(backend.id)[1].close()
                return False
            return True
        finally:
            backend.connections -= 1


#: Methods whose request may be sent twice with the effect of once (RFC 9110, 9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def _closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Was a kept upstream connection closed (EOF or reset seen) while it was idle?"""
    return reader.at_eof() or reader.exception() is not None or writer.is_closing()


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


def _no_delay(writer: asyncio.StreamWriter) -> None:
    """Heads and bodies are separate writes: without this, each answer would wait for a
    delayed ACK (~40 ms) on keep-alive connections."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _appender(buffer: bytearray) -> Callable[[bytes], Awaitable[None]]:
    async def append(data: bytes) -> None:
        buffer.extend(data)

    return append


def _ready_ids(router: Any) -> set[str]:
    return {i.id for i in router.instances if i.ready and not i.stopping}
