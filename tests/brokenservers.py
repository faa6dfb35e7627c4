"""Purpose-built AudioHook servers on 127.0.0.1 for the client tests, each with one defect.

``ReferenceServer`` answers like ``probe-exchange-ok.jsonl``; every other server changes one
thing about it. Run one with ``async with running(server) as url: ...``; each connection's
traffic is kept in ``server.sessions`` for the tests to look at.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from audiohook.auth import verify_upgrade

API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
CLIENT_SECRET = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="
UNSIGNED_KEY = "unsigned-key"
PATH = "/audiohook/v2?tenant=test"
OTHER_ID = "11111111-2222-4333-8444-555555555555"
L16_STEREO = {"type": "audio", "format": "L16", "channels": ["external", "internal"], "rate": 8000}


@dataclass
class SessionLog:
    """One connection as the server saw it."""

    headers: dict[str, str]
    request_target: str
    received: list[dict[str, Any]] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    clientseq: int = 0


class ReferenceServer:
    """A correct minimal AudioHook server: verifies the signature, answers open/close/ping/update."""

    def __init__(self) -> None:
        self.sessions: list[SessionLog] = []

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        headers = dict(request.headers.raw_items())
        result = verify_upgrade(
            headers, request.path, {API_KEY: CLIENT_SECRET, UNSIGNED_KEY: ""}, now=time.time()
        )
        if not result.ok:
            return connection.respond(HTTPStatus.UNAUTHORIZED, f"{result.reason}\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        log = SessionLog(dict(ws.request.headers.raw_items()), ws.request.path)
        self.sessions.append(log)
        try:
            async for data in ws:
                if isinstance(data, bytes):
                    log.audio.append(data)
                    await self.on_audio(ws, log)
                    continue
                message = json.loads(data)
                log.received.append(message)
                log.clientseq = message["seq"]
                await self.on_message(ws, log, message)
        except ConnectionClosed:
            pass

    async def on_audio(self, ws: ServerConnection, log: SessionLog) -> None:
        pass

    async def on_message(self, ws: ServerConnection, log: SessionLog, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "open":
            await self.send(ws, log, "opened", self.opened_parameters(message))
        elif kind == "close":
            await self.send(ws, log, "closed", {})
        elif kind == "ping":
            await self.send(ws, log, "pong", {})
        elif kind == "update":
            await self.send(ws, log, "updated", {})

    def opened_parameters(self, open_message: dict[str, Any]) -> dict[str, Any]:
        return {"startPaused": False, "media": [open_message["parameters"]["media"][0]]}

    def make(self, log: SessionLog, kind: str, parameters: dict[str, Any]) -> dict[str, Any]:
        log.seq += 1
        return {
            "version": "2",
            "type": kind,
            "seq": log.seq,
            "clientseq": log.clientseq,
            "id": log.received[0]["id"],
            "parameters": parameters,
        }

    def encode(self, message: dict[str, Any]) -> str | bytes:
        return json.dumps(message)

    async def send(
        self, ws: ServerConnection, log: SessionLog, kind: str, parameters: dict[str, Any]
    ) -> None:
        message = self.make(log, kind, parameters)
        log.sent.append(message)
        try:
            await ws.send(self.encode(message))
        except ConnectionClosed:
            pass


class BinaryFrames(ReferenceServer):
    def encode(self, message: dict[str, Any]) -> str | bytes:
        return json.dumps(message).encode()


class NotJson(ReferenceServer):
    def encode(self, message: dict[str, Any]) -> str | bytes:
        return f"{message['type']} seq={message['seq']}"


class PythonRepr(ReferenceServer):
    def encode(self, message: dict[str, Any]) -> str | bytes:
        return str(message)


class Envelope(ReferenceServer):
    """Answers like a Lambda proxy integration's return value, not the message itself."""

    def encode(self, message: dict[str, Any]) -> str | bytes:
        return json.dumps({"statusCode": 200, "body": json.dumps(message)})


class DoubleEncoded(ReferenceServer):
    def encode(self, message: dict[str, Any]) -> str | bytes:
        return json.dumps(json.dumps(message))


class NumericVersion(ReferenceServer):
    def make(self, log: SessionLog, kind: str, parameters: dict[str, Any]) -> dict[str, Any]:
        return super().make(log, kind, parameters) | {"version": 2}


class WrongId(ReferenceServer):
    def make(self, log: SessionLog, kind: str, parameters: dict[str, Any]) -> dict[str, Any]:
        return super().make(log, kind, parameters) | {"id": OTHER_ID}


class SeqJump(ReferenceServer):
    """Numbers its messages 1, 3, 5, ..."""

    def make(self, log: SessionLog, kind: str, parameters: dict[str, Any]) -> dict[str, Any]:
        message = super().make(log, kind, parameters)
        log.seq += 1
        return message


class FailedProbeFixture(ReferenceServer):
    """Reproduces probe-exchange-failed.jsonl: `opened` goes out in a form the client refuses
    (here a binary frame), then `closed` takes its seq from the client's `close` and keeps the
    clientseq of `open`."""

    def encode(self, message: dict[str, Any]) -> str | bytes:
        text = json.dumps(message)
        return text.encode() if message["type"] == "opened" else text

    def make(self, log: SessionLog, kind: str, parameters: dict[str, Any]) -> dict[str, Any]:
        message = super().make(log, kind, parameters)
        if kind == "closed":
            message |= {"seq": log.clientseq, "clientseq": 1}
        return message


class PositionField(ReferenceServer):
    def make(self, log: SessionLog, kind: str, parameters: dict[str, Any]) -> dict[str, Any]:
        return super().make(log, kind, parameters) | {"position": "PT0S"}


class MediaNotOffered(ReferenceServer):
    def opened_parameters(self, open_message: dict[str, Any]) -> dict[str, Any]:
        return {"startPaused": False, "media": [L16_STEREO]}


class SecondOpened(ReferenceServer):
    async def on_message(self, ws: ServerConnection, log: SessionLog, message: dict[str, Any]) -> None:
        await super().on_message(ws, log, message)
        if message["type"] == "open":
            await self.send(ws, log, "opened", self.opened_parameters(message))


class Slow(ReferenceServer):
    """Answers one message type only after ``delay_s``."""

    def __init__(self, slow_type: str, delay_s: float) -> None:
        super().__init__()
        self.slow_type = slow_type
        self.delay_s = delay_s

    async def on_message(self, ws: ServerConnection, log: SessionLog, message: dict[str, Any]) -> None:
        if message["type"] == self.slow_type:
            await asyncio.sleep(self.delay_s)
        await super().on_message(ws, log, message)


class Unauthorized(ReferenceServer):
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        return connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")


class HangsUp(ReferenceServer):
    """Closes the WebSocket with 1011 instead of answering `open`."""

    async def on_message(self, ws: ServerConnection, log: SessionLog, message: dict[str, Any]) -> None:
        await ws.close(1011, "internal error")


class RefusesOrganization(ReferenceServer):
    """Answers `open` with `disconnect` (unauthorized), as a server does for an unknown organization."""

    async def on_message(self, ws: ServerConnection, log: SessionLog, message: dict[str, Any]) -> None:
        if message["type"] == "open":
            await self.send(ws, log, "disconnect", {"reason": "unauthorized", "info": "unknown organization"})
        else:
            await super().on_message(ws, log, message)


class Lively(ReferenceServer):
    """Selects the offer at ``offer_index``, sends a transcript event every ``event_every`` audio
    frames, pauses the client after ``pause_after_frames`` frames (resuming once it is paused),
    sends `disconnect` after ``disconnect_after_frames`` and drops the connection after
    ``hang_up_after_frames``."""

    def __init__(
        self,
        offer_index: int = 0,
        pause_after_frames: int | None = None,
        event_every: int = 0,
        disconnect_after_frames: int | None = None,
        hang_up_after_frames: int | None = None,
    ) -> None:
        super().__init__()
        self.offer_index = offer_index
        self.pause_after_frames = pause_after_frames
        self.event_every = event_every
        self.disconnect_after_frames = disconnect_after_frames
        self.hang_up_after_frames = hang_up_after_frames

    def opened_parameters(self, open_message: dict[str, Any]) -> dict[str, Any]:
        return {"startPaused": False, "media": [open_message["parameters"]["media"][self.offer_index]]}

    async def on_audio(self, ws: ServerConnection, log: SessionLog) -> None:
        frames = len(log.audio)
        if self.event_every and frames % self.event_every == 0:
            await self.send(
                ws, log, "event", {"entities": [{"type": "transcript", "data": {"frames": frames}}]}
            )
        if frames == self.pause_after_frames:
            await self.send(ws, log, "pause", {})
        if frames == self.disconnect_after_frames:
            await self.send(ws, log, "disconnect", {"reason": "completed", "info": "enough audio"})
        if frames == self.hang_up_after_frames:
            await ws.close(1011, "internal error")

    async def on_message(self, ws: ServerConnection, log: SessionLog, message: dict[str, Any]) -> None:
        await super().on_message(ws, log, message)
        asked_to_pause = any(sent["type"] == "pause" for sent in log.sent)
        resumed_already = any(sent["type"] == "resume" for sent in log.sent)
        if message["type"] == "paused" and asked_to_pause and not resumed_already:
            await self.send(ws, log, "resume", {})


@asynccontextmanager
async def running(server: ReferenceServer) -> AsyncIterator[str]:
    """Serve on a random 127.0.0.1 port; yields the ws:// URL (with a path and a query)."""
    async with serve(
        server.handle, "127.0.0.1", 0, process_request=server.process_request
    ) as websocket_server:
        port = next(iter(websocket_server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}{PATH}"


def header(log: SessionLog, name: str) -> str | None:
    return Headers(log.headers).get(name)
