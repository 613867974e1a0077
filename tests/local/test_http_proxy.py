"""The per-request front port's relaying, in this process against a real HTTP server on
loopback: small answers (read whole, one write), large and chunked answers (streamed),
an answer to EOF, and the answer timeout that now uses one timer per connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from shipflow.worker.runtime import http_proxy
from shipflow.worker.runtime.http_framing import request_head as _request_head
from shipflow.worker.runtime.http_proxy import AnswerClock
from shipflow.worker.runtime.proxy import FrontPort
from shipflow.worker.runtime.state import Instance, Service
from shipflow.workflows.spec import LocalService
from tests.helpers import free_port, wait_until

BIG = bytes(range(256)) * 800  # 200 KiB: above SMALL_ANSWER, so relayed in pieces


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive HTTP/1.1 server whose answer depends on the path."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path == b"/small":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall")
            elif path == b"/big":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG) + BIG)
            elif path == b"/chunked":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
                )
            elif path == b"/error":
                writer.write(b"HTTP/1.1 503 Busy\r\ncontent-length: 4\r\n\r\nbusy")
            elif path == b"/slow":
                await asyncio.sleep(30)  # never in time
            elif path == b"/eof":
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
                await writer.drain()
                writer.close()
                return
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def body_sink(
    bodies: list[bytes],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A keep-alive HTTP/1.1 server that keeps each request's body (by Content-Length, or
    chunked; none without either) in `bodies` and answers 200 `ok`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                if b"transfer-encoding: chunked" in head:
                    body = b""
                    while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) > 0:
                        body += (await reader.readexactly(size + 2))[:-2]
                    await reader.readuntil(b"\r\n")
                else:
                    _, found, rest = head.partition(b"content-length:")
                    body = await reader.readexactly(int(rest.split(b"\r\n", 1)[0]) if found else 0)
                bodies.append(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return serve


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one answer framed by its Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


async def canary_front(server: asyncio.Server) -> tuple[Service, FrontPort]:
    """A canaried service whose one ready instance is `server`, and its started front port
    (per-request routing)."""
    spec = LocalService.model_validate(
        {"command": ["x"], "port": 1, "strategy": {"canary": {"steps": [{"set_weight": 100}]}}}
    )
    service = Service(name="web", spec=spec)
    port = server.sockets[0].getsockname()[1]
    service.instances.append(
        Instance(id="a", image="v1", port=port, spec=spec, revision="r1", ready=True)
    )
    front = FrontPort(free_port(), service)
    await front.start()
    return service, front


async def get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[bytes, bytes]:
    """(head, body) of one GET on a kept connection, framed as the answer says."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: web\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) > 0:
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
        return head, body
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        return head, await asyncio.wait_for(reader.readexactly(length), 10)
    return head, await asyncio.wait_for(reader.read(), 10)


async def test_answers_are_relayed_whole_and_a_silent_instance_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_proxy, "ANSWER_TIMEOUT_S", 0.3)
    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    service, front = await canary_front(server)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        assert await get(reader, writer, "/small") == (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            b"small",
        )
        assert (await get(reader, writer, "/big"))[1] == BIG
        assert (await get(reader, writer, "/chunked"))[1] == b"abcdefg"
        head, body = await get(reader, writer, "/error")
        assert head.startswith(b"HTTP/1.1 503") and body == b"busy"
        assert await get(reader, writer, "/small") == (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            b"small",
        )
        assert (await get(reader, writer, "/eof"))[
            1
        ] == b"until the end"  # then the front port closes
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        head, _ = await get(reader, writer, "/slow")
        assert head.startswith(b"HTTP/1.1 504")  # after ANSWER_TIMEOUT_S, not never (a 502 before)
        writer.close()
        outcomes = [ok for _, _, ok in service.samples["r1"]]
        assert outcomes == [
            True,
            True,
            True,
            False,
            True,
            True,
            False,
        ]  # the 503 and the timeout failed
    finally:
        await front.close()
        server.close()


async def test_the_answer_clock_keeps_one_timer_and_fires_only_past_a_running_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay is callbacks now: the clock calls back instead of cancelling a task."""
    fired: list[float] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(http_proxy, "ANSWER_TIMEOUT_S", 0.05)
    clock = AnswerClock(loop, lambda: fired.append(loop.time()))
    try:
        for _ in range(3):  # the timer outlives answers that came in time
            clock.start()
            timer = clock._timer
            await asyncio.sleep(0.01)
            clock.stop()
            assert clock._timer is timer
        await asyncio.sleep(0.1)
        assert fired == []  # stopped: its timer fired and found no answer awaited
        began = loop.time()
        clock.start()
        await wait_until(lambda: fired, interval=0.01)
        assert fired[0] - began >= 0.05
        monkeypatch.setattr(http_proxy, "ANSWER_TIMEOUT_S", 60)
        clock.start()
        clock.close()  # a connection that ends takes its timer with it
        assert clock._timer is None
    finally:
        clock.close()
    assert len(fired) == 1


def test_a_request_head_is_checked_whole_and_its_framing_read() -> None:
    ok = _request_head(
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: Keep-Alive\r\n\r\n"
    )
    assert ok == (b"POST", b"HTTP/1.1", b"keep-alive", {b"content-length": b"3"})
    chunked = _request_head(b"PUT /y HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n")
    assert chunked == (b"PUT", b"HTTP/1.0", b"", {b"transfer-encoding": b"chunked"})
    assert _request_head(b"GET / HTTP/1.1\r\n\r\n") == (b"GET", b"HTTP/1.1", b"", {})
    for bad in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",  # a space before the colon: RFC 9112 rejects it
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",  # two framings
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\nContent-Length: 5\r\n\r\n",  # a bare LF hiding a field
    ):
        assert _request_head(bad) is None, bad


async def test_a_request_is_sent_once_after_a_timeout_and_again_only_on_a_stale_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue #17: a request that timed out on a kept upstream connection was sent a second
    time on a new one (a POST could run twice). It may be sent again only when the kept
    connection was found closed by the instance (a stale keep-alive), never after a timeout."""
    monkeypatch.setattr(http_proxy, "ANSWER_TIMEOUT_S", 0.3)
    seen: list[bytes] = []

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ", 2)[:2]
                if method == b"POST":
                    await reader.readexactly(2)
                seen.append(method + b" " + path)
                if path == b"/slow":
                    await asyncio.sleep(30)  # never in time
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if path == b"/then-close":
                    writer.close()  # an idle keep-alive connection the instance drops
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(counting, "127.0.0.1", 0)
    _, front = await canary_front(server)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        assert (await get(reader, writer, "/then-close"))[1] == b"ok"
        await wait_until(lambda: len(seen) == 1)
        # The kept connection is closed by now: the POST goes over a new one, once.
        writer.write(b"POST /create HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(2) == b"ok"
        # On the kept connection, a POST that gets no answer in time is failed, not re-sent.
        writer.write(b"POST /slow HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 50")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        assert (await get(reader, writer, "/small"))[1] == b"ok"
        writer.close()
        assert seen == [b"GET /then-close", b"POST /create", b"POST /slow", b"GET /small"]
    finally:
        await front.close()
        server.close()


def test_only_a_stale_keep_alive_lets_a_request_be_sent_again() -> None:
    eof = asyncio.IncompleteReadError(b"", None)
    assert http_proxy._may_resend(eof, b"GET", written=True)  # closed as it arrived
    assert http_proxy._may_resend(ConnectionResetError(), b"PUT", written=True)
    assert http_proxy._may_resend(BrokenPipeError(), b"POST", written=False)  # never accepted
    assert not http_proxy._may_resend(eof, b"POST", written=True)  # may have run it
    assert not http_proxy._may_resend(TimeoutError(), b"GET", written=True)
    assert not http_proxy._may_resend(
        asyncio.IncompleteReadError(b"HTTP/1.1 2", None), b"GET", written=True
    )


async def test_a_request_body_over_the_limit_gets_a_413_and_is_never_held_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The front port holds each request whole before routing it: one client must not make
    the runtime (and every service it supervises) run out of memory with a huge body."""
    monkeypatch.setattr(http_proxy, "REQUEST_BODY_LIMIT", 1000)
    received: list[bytes] = []
    server = await asyncio.start_server(body_sink(received), "127.0.0.1", 0)
    _, front = await canary_front(server)

    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        post = b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n"
        writer.write(post % 1000 + b"x" * 1000)  # at the limit: relayed
        assert await read_answer(reader) == (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok")
        writer.write(post % 10**12)  # a terabyte announced: refused before any of it comes
        head, text = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
        assert b"Connection: close" in head and b"limit of 1000 bytes" in text
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):  # chunks, with no end in sight
            writer.write(b"200\r\n" + b"y" * 0x200 + b"\r\n")
        head, _ = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 413")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert received == [b"x" * 1000]  # the instance saw only the request within the limit
    finally:
        await front.close()
        server.close()


async def test_a_client_that_waits_for_100_continue_gets_it_at_once() -> None:
    """curl asks `Expect: 100-continue` for bodies over 1 MiB and waits a second for the
    go-ahead; the front port needs the body before it can route, so it answers the
    expectation itself, and the body then goes to the instance as usual."""
    bodies: list[bytes] = []
    server = await asyncio.start_server(body_sink(bodies), "127.0.0.1", 0)
    _, front = await canary_front(server)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(
            b"PUT /upload HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        # Well before curl's own one-second timeout, and before any of the body was sent.
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(b"hello")
        assert (await read_answer(reader))[0].startswith(b"HTTP/1.1 200 OK")
        # A request without the expectation, or without a body, gets no interim answer.
        writer.write(b"PUT /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi")
        assert (await read_answer(reader))[0].startswith(b"HTTP/1.1 200 OK")
        writer.write(b"GET / HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\n\r\n")
        assert (await read_answer(reader))[0].startswith(b"HTTP/1.1 200 OK")  # no `100` first
        writer.close()
        assert bodies == [b"hello", b"hi", b""]
    finally:
        await front.close()
        server.close()
