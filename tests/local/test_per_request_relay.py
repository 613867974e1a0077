"""What the callback-driven per-request relay makes newly risky, tested at a real front port
in this process against real HTTP servers on loopback: bytes that arrive in pieces (a head
or a body cut across reads, both ways), pipelined requests (kept in order, one at a time),
a slow client reading a large answer (backpressure, not buffering), answers without a
body, the status codes of the failures (503, 502, 504) and the in-flight count."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import pytest

from shipflow.worker.runtime import http_proxy, proxy
from shipflow.worker.runtime.proxy import FrontPort
from shipflow.worker.runtime.state import Instance, Service
from shipflow.workflows.spec import LocalService
from tests.helpers import free_port, wait_until

HUGE = 64 * 1024 * 1024  # far more than the kernel's socket buffers on both sides hold
SPEC = LocalService.model_validate(
    {"command": ["x"], "port": 1, "strategy": {"canary": {"steps": [{"set_weight": 100}]}}}
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body that follows `head`, by its Content-Length or chunked (unchunked here)."""
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = bytearray()
        while (size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)) > 0:
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailers
        return bytes(body)
    if b"content-length:" in lower:
        return await reader.readexactly(
            int(lower.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        )
    return b""


async def dribble(writer: asyncio.StreamWriter, pieces: list[bytes]) -> None:
    """Write `pieces` as separate TCP segments (the peer sees one read each, or fewer)."""
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)


class Instances:
    """Servers on loopback behind a front port that routes request by request."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.service = Service(name="web", spec=SPEC)
        self.front: FrontPort | None = None

    async def add(self, iid: str, handler: Handler) -> Instance:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        self.servers.append(server)
        inst = Instance(
            id=iid,
            image="v1",
            port=server.sockets[0].getsockname()[1],
            spec=SPEC,
            revision="r1",
            ready=True,
        )
        self.service.instances.append(inst)
        return inst

    async def __aenter__(self) -> Instances:
        return self

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.front is None:
            self.front = FrontPort(free_port(), self.service)
            await self.front.start()
        return await asyncio.open_connection("127.0.0.1", self.front.port)

    async def __aexit__(self, *exc: object) -> None:
        if self.front is not None:
            await self.front.close()
        for server in self.servers:
            server.close()


async def answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return head, await asyncio.wait_for(read_body(reader, head), 10)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request with its method, path and body, the answer cut in pieces."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            body = await read_body(reader, head)
            method, path = head.split(b" ", 2)[:2]
            payload = method + b" " + path + b" " + body
            if path == b"/chunked":
                await dribble(
                    writer,
                    [
                        b"HTTP/1.1 200 OK\r\nTransfer-",
                        b"Encoding: chunked\r\n\r\n5",
                        b"\r\nhello\r",
                        b"\n3\r\nabc\r\n0\r",
                        b"\nX-T: 1\r\n",
                        b"\r\n",
                    ],
                )
            else:
                answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
                await dribble(writer, [answer[:10], answer[10:-3], answer[-3:]])
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def test_heads_and_bodies_cut_across_reads_are_relayed_whole_both_ways() -> None:
    async with Instances() as net:
        await net.add("a", echo)
        reader, writer = await net.open()
        await dribble(writer, [b"GET /one HTTP/1.1\r\nHo", b"st: web\r\n\r", b"\n"])
        assert await answer(reader) == (
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            b"GET /one ",
        )
        await dribble(
            writer, [b"POST /two HTTP/1.1\r\nContent-Length: 11\r\n\r\nhel", b"lo wo", b"rld"]
        )
        assert (await answer(reader))[1] == b"POST /two hello world"
        await dribble(
            writer,
            [
                b"PUT /three HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4",
                b"\r\nab",
                b"cd\r\n2;ext=1\r",
                b"\nef\r\n0\r\nTrailer: x\r",
                b"\n\r",
                b"\n",
            ],
        )
        assert (await answer(reader))[1] == b"PUT /three abcdef"
        writer.write(b"GET /chunked HTTP/1.1\r\n\r\n")
        head, body = await answer(reader)
        assert (
            head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" and body == b"helloabc"
        )
        writer.write(b"GET /four HTTP/1.1\r\n\r\n")
        assert (await answer(reader))[1] == b"GET /four "  # the same connection still in step
        writer.close()


async def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    log: list[tuple[str, bytes, float, float]] = []  # instance, path, received, answered

    def instance(name: str, delay: float) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    body = await read_body(reader, head)
                    path = head.split(b" ", 2)[1]
                    received = time.monotonic()
                    await asyncio.sleep(delay)
                    payload = name.encode() + b":" + path + b":" + body
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
                    )
                    log.append((name, path, received, time.monotonic()))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        return handle

    async with Instances() as net:
        slow = await net.add("slow", instance("slow", 0.3))
        fast = await net.add("fast", instance("fast", 0.0))
        reader, writer = await net.open()
        writer.write(
            b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /3 HTTP/1.1\r\n\r\nGET /4 HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        bodies = [(await answer(reader))[1] for _ in range(4)]
        assert [b.split(b":", 1)[1] for b in bodies] == [b"/1:", b"/2:abc", b"/3:", b"/4:"]
        assert {b.split(b":", 1)[0] for b in bodies} == {b"slow", b"fast"}  # both took requests
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed after the last, as asked
        # One at a time: no request reached an instance before the one before it was answered.
        assert [path for _, path, _, _ in log] == [b"/1", b"/2", b"/3", b"/4"]
        for before, after in itertools.pairwise(log):
            assert after[2] >= before[3]
        assert slow.connections == 0 and fast.connections == 0


async def unsent_when_settled(transport: asyncio.WriteTransport) -> int:
    """What an instance could not send yet, once it has stopped going down."""
    seen: list[int] = []

    def still() -> bool:
        seen.append(transport.get_write_buffer_size())
        return len(seen) > 5 and seen[-1] == seen[-6]

    await wait_until(still, interval=0.05)
    return seen[-1]


async def test_a_slow_client_pauses_the_instance_instead_of_the_proxy_buffering_the_answer() -> (
    None
):
    sent: list[asyncio.StreamWriter] = []

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                block = b"x" * (1024 * 1024)
                if b"/chunked" in head:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for _ in range(HUGE // len(block)):
                        writer.write(b"%x\r\n" % len(block) + block + b"\r\n")
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
                    for _ in range(HUGE // len(block)):
                        writer.write(block)
                sent.append(writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async with Instances() as net:
        inst = await net.add("a", huge)
        reader, writer = await net.open()
        for path in ("/length", "/chunked"):
            writer.write(f"GET {path} HTTP/1.1\r\n\r\n".encode())
            await wait_until(lambda: sent)
            # The client reads nothing: the instance's writes back up, the proxy holds little.
            left = await unsent_when_settled(sent.pop().transport)
            assert left > HUGE // 2, left  # the kernel's buffers hold a few MiB, not 32
            assert inst.connections == 1
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            body = await asyncio.wait_for(read_body(reader, head), 30)
            assert len(body) == HUGE and body.count(b"x") == HUGE
            await wait_until(lambda: inst.connections == 0)
        writer.close()


async def test_answers_without_a_body_and_an_interim_answer_keep_the_connection_in_step() -> None:
    async def bodiless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/204":
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                elif path == b"/304":
                    writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n")
                elif path == b"/continue":
                    await read_body(reader, head)
                    writer.write(
                        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
                    )
                else:  # HEAD: the length of the body it would have had, no body
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async with Instances() as net:
        await net.add("a", bodiless)
        reader, writer = await net.open()
        writer.write(b"HEAD /page HTTP/1.1\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        )
        writer.write(b"GET /204 HTTP/1.1\r\n\r\n")
        assert (
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            == b"HTTP/1.1 204 No Content\r\n\r\n"
        )
        writer.write(b"GET /304 HTTP/1.1\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(
            b"HTTP/1.1 304"
        )
        writer.write(
            b"POST /continue HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"
        )
        assert (
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            == b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        assert await answer(reader) == (b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n", b"ok")
        writer.write(b"GET /204 HTTP/1.1\r\n\r\n")
        assert (
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            == b"HTTP/1.1 204 No Content\r\n\r\n"
        )
        outcomes = [ok for _, _, ok in net.service.samples["r1"]]
        assert outcomes == [True] * 5
        writer.close()


async def test_failures_answer_503_502_and_504_and_are_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No instance: 503. The instance dies before answering: 502. No answer in time: 504
    (Gateway Timeout; it was a 502 before, which the module's docstring did not say)."""
    monkeypatch.setattr(proxy, "NO_BACKEND_WAIT_S", 0.1)
    monkeypatch.setattr(http_proxy, "ANSWER_TIMEOUT_S", 0.3)

    async def failing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/die" in head:
            writer.transport.abort()
            return
        await reader.read()  # never in time: until the front port gives up and closes

    async with Instances() as net:
        reader, writer = await net.open()
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(
            b"HTTP/1.1 503 Service Unavailable\r\n"
        )
        inst = await net.add("a", failing)
        for path, status in ((b"/die", b"502 Bad Gateway"), (b"/slow", b"504 Gateway Timeout")):
            reader, writer = await net.open()
            writer.write(b"GET %s HTTP/1.1\r\n\r\n" % path)
            assert (await asyncio.wait_for(reader.read(), 10)).startswith(
                b"HTTP/1.1 " + status + b"\r\n"
            )
        assert [ok for _, _, ok in net.service.samples["r1"]] == [False, False]
        assert inst.connections == 0


async def test_an_upstream_connection_to_an_instance_out_of_rotation_is_closed() -> None:
    closed: list[str] = []

    def instance(name: str) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + name.encode())
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                closed.append(name)
                writer.close()

        return handle

    async with Instances() as net:
        a = await net.add("a", instance("a"))
        await net.add("b", instance("b"))
        reader, writer = await net.open()
        seen = set()
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            seen.add((await answer(reader))[1])
        assert seen == {b"a", b"b"}
        a.stopping = True  # leaves the rotation, as an instance that drains
        for _ in range(3):
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            assert (await answer(reader))[1] == b"b"
        await wait_until(lambda: closed == ["a"])
        writer.close()


async def test_a_client_far_ahead_is_paused_then_served_every_request_in_order() -> None:
    """Past READ_AHEAD bytes of pipelined requests, the client's reading pauses until the
    answers catch up; none is lost or reordered."""

    async def numbered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(path) + path)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    count = 3 * http_proxy.READ_AHEAD // 40  # ~40 bytes a request: three times the read-ahead
    async with Instances() as net:
        inst = await net.add("a", numbered)
        reader, writer = await net.open()
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(count)))
        for i in range(count):
            assert (await answer(reader))[1] == b"/%d" % i
        assert inst.connections == 0
        writer.close()
