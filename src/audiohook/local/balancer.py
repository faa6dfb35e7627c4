"""A local stand-in for the relay's load balancer: new connections spread over healthy relays.

Like the ALB in front of the relay tasks: each relay's ``GET /health`` is checked on an
interval (200: healthy; anything else or no answer: unhealthy); a new TCP connection goes to
the next healthy relay in turn (round robin) and is piped byte for byte both ways until
either side closes; connections already piped stay where they are when their relay turns
unhealthy (a draining relay keeps its calls while they move). With no healthy relay the
client gets ``503``. So a Genesys-like client that follows ``reconnect`` to the same URL lands
on another relay. It neither terminates TLS nor adds ``X-Forwarded-For``.

``async with Balancer([("127.0.0.1", 8080), ("127.0.0.1", 8082)]) as balancer: balancer.url``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Self

logger = logging.getLogger(__name__)

HEALTH_PATH = "/health"
NO_BACKEND = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n"
              b"Connection: close\r\n\r\nno healthy backend\r\n")


async def healthy(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """``GET /health`` answered 200."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), timeout_s)
        return status.split(b" ")[1:2] == [b"200"]
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


class Balancer:
    """Spreads new connections over the backends whose ``/health`` answers 200."""

    def __init__(self, backends: list[tuple[str, int]], *, host: str = "127.0.0.1", port: int = 0,
                 interval_s: float = 0.2) -> None:
        self.backends = list(backends)
        self.host = host
        self._port = port
        self._interval_s = interval_s
        self.healthy: list[tuple[str, int]] = []
        self.connections: dict[tuple[str, int], int] = {backend: 0 for backend in self.backends}  # per backend, total
        self._turn = 0
        self._server: asyncio.Server | None = None
        self._checker: asyncio.Task[None] | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> Self:
        await self.check()
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        self._checker = asyncio.create_task(self._check_loop())
        return self

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the balancer is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    def deregister(self, backend: tuple[str, int]) -> None:
        """Send no new connection to ``backend`` (what ECS asks of the target group before it
        stops a task); the connections it has stay piped until they close."""
        self.backends = [b for b in self.backends if b != backend]
        self.healthy = [b for b in self.healthy if b != backend]

    async def check(self) -> None:
        """One round of health checks (the targets' state as the next connection sees it)."""
        backends = list(self.backends)
        verdicts = await asyncio.gather(*(healthy(host, port) for host, port in backends))
        self.healthy = [backend for backend, ok in zip(backends, verdicts, strict=True)
                        if ok and backend in self.backends]

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check()

    def _next(self) -> tuple[str, int] | None:
        if not self.healthy:
            return None
        self._turn += 1
        return self.healthy[self._turn % len(self.healthy)]

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            backend = self._next()
            upstream = None
            if backend is not None:
                try:
                    upstream = await asyncio.open_connection(*backend)
                except OSError:
                    logger.warning("backend %s:%d refused the connection", *backend)
            if backend is None or upstream is None:
                # The request is read first: closing with it unread would reset the connection.
                with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError,
                                         asyncio.LimitOverrunError):
                    await asyncio.wait_for(client_reader.readuntil(b"\r\n\r\n"), 1.0)
                client_writer.write(NO_BACKEND)
                await client_writer.drain()
                return
            self.connections[backend] += 1
            backend_reader, backend_writer = upstream
            try:
                await asyncio.gather(_pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer))
            finally:
                backend_writer.close()
        except OSError:
            pass
        finally:
            client_writer.close()
            self._pipes.discard(task)
