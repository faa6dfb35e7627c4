"""The local load balancer: new connections go to healthy backends in turn, piped byte for byte;
connections already piped stay when their backend turns unhealthy or is deregistered; with no
healthy backend the client gets 503."""

from __future__ import annotations

import asyncio
from typing import Any

from audiohook.local.balancer import Balancer


class Backend:
    """A TCP server that answers /health with its current status and echoes anything else,
    prefixed with its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = 200
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return "127.0.0.1", int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readline()
        if first.startswith(b"GET /health "):
            writer.write(f"HTTP/1.1 {self.health} X\r\nContent-Length: 0\r\n\r\n".encode())
        else:
            writer.write(self.name.encode() + b":" + first)
            while line := await reader.readline():
                writer.write(self.name.encode() + b":" + line)
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


async def exchange(balancer: Balancer, *lines: bytes) -> tuple[list[bytes], Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port)
    answers = []
    for line in lines:
        writer.write(line)
        await writer.drain()
        answers.append(await reader.readline())
    return answers, (reader, writer)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def test_new_connections_go_to_the_healthy_backends_in_turn_and_skip_an_unhealthy_one():
    async def scenario() -> list[bytes]:
        a, b, c = Backend("a"), Backend("b"), Backend("c")
        addresses = [await a.start(), await b.start(), await c.start()]
        c.health = 503
        async with Balancer(addresses) as balancer:
            answers = [(await exchange(balancer, b"hello\n"))[0][0] for _ in range(4)]
            assert balancer.connections == {addresses[0]: 2, addresses[1]: 2, addresses[2]: 0}
        for backend in (a, b, c):
            await backend.stop()
        return answers

    assert sorted(run(scenario())) == [b"a:hello\n", b"a:hello\n", b"b:hello\n", b"b:hello\n"]


def test_a_piped_connection_stays_when_its_backend_is_deregistered_and_unhealthy_and_new_ones_go_elsewhere():
    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        a, b = Backend("a"), Backend("b")
        addresses = [await a.start(), await b.start()]
        b.health = 503
        async with Balancer(addresses, interval_s=0.05) as balancer:
            first, (reader, writer) = await exchange(balancer, b"one\n")
            balancer.deregister(addresses[0])
            a.health = 503
            b.health = 200
            await asyncio.sleep(0.2)  # a few health checks
            writer.write(b"two\n")
            still = [await reader.readline()]
            moved, _ = await exchange(balancer, b"three\n")
            writer.close()
        for backend in (a, b):
            await backend.stop()
        return first, still, moved

    first, still, moved = run(scenario())
    assert (first, still, moved) == ([b"a:one\n"], [b"a:two\n"], [b"b:three\n"])


def test_with_no_healthy_backend_the_client_gets_503():
    async def scenario() -> bytes:
        a = Backend("a")
        address = await a.start()
        a.health = 503
        async with Balancer([address]) as balancer:
            reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            answer = await reader.read()
            writer.close()
        await a.stop()
        return answer

    assert run(scenario()).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
