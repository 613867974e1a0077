"""The splicing front port (a plain service's), in this process against real servers on
loopback: bytes both ways with half-closes, a slow client pausing the instance, an
instance that cannot be reached, the grace after the instance closed, no instance at all,
and the connection count that draining waits on."""

from __future__ import annotations

import asyncio

import pytest

from shipflow.worker.runtime import proxy
from shipflow.worker.runtime.proxy import FrontPort
from shipflow.worker.runtime.state import Instance, Service
from shipflow.workflows.spec import LocalService
from tests.helpers import free_port, wait_until

SPEC = LocalService.model_validate({"command": ["x"], "port": 1})
MIB = 1024 * 1024


class Net:
    def __init__(self) -> None:
        self.service = Service(name="web", spec=SPEC)
        self.servers: list[asyncio.Server] = []
        self.front = FrontPort(free_port(), self.service)

    async def add(self, iid: str, handler: object = None, *, port: int | None = None) -> Instance:
        if port is None:
            server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
            self.servers.append(server)
            port = server.sockets[0].getsockname()[1]
        inst = Instance(id=iid, image="v1", port=port, spec=SPEC, revision="r1", ready=True)
        self.service.instances.append(inst)
        return inst

    async def __aenter__(self) -> Net:
        await self.front.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.front.close()
        for server in self.servers:
            server.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Sends back all it gets, then closes once the client has."""
    while data := await reader.read(256 * 1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_bytes_go_both_ways_and_a_half_close_is_passed_on() -> None:
    payload = bytes(range(256)) * (4 * MIB // 256)
    async with Net() as net:
        inst = await net.add("a", echo)
        reader, writer = await asyncio.open_connection("127.0.0.1", net.front.port)
        got = bytearray()

        async def read_all() -> None:
            while data := await reader.read(MIB):
                got.extend(data)

        reading = asyncio.create_task(read_all())
        writer.write(payload)
        await writer.drain()
        writer.write_eof()  # the instance sees the EOF, answers the rest and closes
        await asyncio.wait_for(reading, 20)
        assert bytes(got) == payload
        await wait_until(lambda: inst.connections == 0)
        writer.close()


async def test_a_slow_client_pauses_the_instance_instead_of_the_proxy_buffering() -> None:
    huge = 64 * MIB
    sent: list[asyncio.StreamWriter] = []

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"x" * MIB
        for _ in range(huge // MIB):
            writer.write(block)
        sent.append(writer)
        await writer.drain()
        await reader.read()  # until the client is gone
        writer.close()

    async with Net() as net:
        inst = await net.add("a", flood)
        reader, writer = await asyncio.open_connection("127.0.0.1", net.front.port)
        await wait_until(lambda: sent)
        transport = sent[0].transport
        seen: list[int] = []

        def still() -> bool:
            seen.append(transport.get_write_buffer_size())
            return len(seen) > 5 and seen[-1] == seen[-6]

        await wait_until(still, interval=0.05)
        assert seen[-1] > huge // 2, seen[-1]  # the kernel's buffers hold a few MiB, not 32
        assert inst.connections == 1
        got = 0
        while got < huge:
            got += len(await asyncio.wait_for(reader.read(MIB), 10))
        writer.close()
        await wait_until(lambda: inst.connections == 0)


async def test_an_unreachable_instance_passes_the_connection_to_the_next() -> None:
    async with Net() as net:
        dead = await net.add("dead", port=free_port())  # nothing listens there
        live = await net.add("live", echo)
        for _ in range(2):  # round-robin: one of the two connections picks the dead one first
            reader, writer = await asyncio.open_connection("127.0.0.1", net.front.port)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
            writer.close()
        await wait_until(lambda: dead.connections == 0 and live.connections == 0)


async def test_the_client_gets_a_grace_after_the_instance_closed_then_the_connection_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proxy, "CLOSE_GRACE_S", 0.2)

    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    async with Net() as net:
        inst = await net.add("a", answer_and_close)
        reader, writer = await asyncio.open_connection("127.0.0.1", net.front.port)
        assert await asyncio.wait_for(reader.read(), 10) == b"bye"  # the EOF passed on
        await wait_until(lambda: inst.connections == 0, timeout=5)  # without the client closing
        writer.close()


async def test_with_no_instance_a_connection_is_closed_after_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proxy, "NO_BACKEND_WAIT_S", 0.1)
    async with Net() as net:
        reader, writer = await asyncio.open_connection("127.0.0.1", net.front.port)
        writer.write(b"hello?")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
