"""`audiohook call` answers server-initiated messages as Genesys does, over real sockets.

A scripted server sends ``pause``, ``resume``, ``event``, ``reconnect`` and ``disconnect`` at
fixed points of the audio and keeps every frame it received per connection, so each test
asserts the exact client messages and the exact audio bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from audiohook.tools.client import CallReport, call, duration
from audiohook.tools.wav import AudioSource

FRAME = 1600 * 2  # 200 ms of stereo PCMU


@dataclass
class Connection:
    texts: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    frames: int = 0
    seq: int = 0

    @property
    def types(self) -> list[str]:
        return [message["type"] for message in self.texts]


# A script step: after the connection's n-th audio frame (or a client message type), what to send.
Script = Callable[["Scripted", int, Connection, dict[str, Any] | None], Awaitable[None]]


class Scripted:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[Connection] = []

    async def send(self, ws: ServerConnection, conn: Connection, type: str, parameters: dict | None = None) -> None:
        conn.seq += 1
        await ws.send(json.dumps({"version": "2", "type": type, "seq": conn.seq,
                                  "clientseq": conn.texts[-1]["seq"] if conn.texts else 0,
                                  "id": conn.texts[0]["id"], "parameters": parameters or {}}))

    async def handle(self, ws: ServerConnection) -> None:
        conn = Connection()
        index = len(self.connections)
        self.connections.append(conn)
        self.ws = getattr(self, "ws", {}) | {index: ws}
        async for frame in ws:
            if isinstance(frame, bytes):
                conn.audio += frame
                conn.frames += 1
                await self.script(self, index, conn, None)
                continue
            message = json.loads(frame)
            conn.texts.append(message)
            if message["type"] == "open":
                media = message["parameters"]["media"][0]
                await self.send(ws, conn, "opened", {"startPaused": False, "media": [media]})
            elif message["type"] == "close":
                await self.send(ws, conn, "closed")
            elif message["type"] == "ping":
                await self.send(ws, conn, "pong")
            await self.script(self, index, conn, message)


def run_call(script: Script, **options: Any) -> tuple[CallReport, Scripted, AudioSource]:
    server = Scripted(script)
    audio = AudioSource.tone(440.0, options.pop("seconds", 2.0), channels=2)

    async def go() -> CallReport:
        async with serve(server.handle, "127.0.0.1", 0) as running:
            port = next(iter(running.sockets)).getsockname()[1]
            return await call(f"ws://127.0.0.1:{port}/", "key", "", audio=audio, **({
                "speed": 8.0, "ping_interval_s": 100.0} | options))

    return asyncio.run(asyncio.wait_for(go(), 20)), server, audio


def pcmu(audio: AudioSource) -> bytes:
    return b"".join(audio.frames("PCMU", ["external", "internal"], 1600))


def client_view(conn: Connection) -> list[tuple[str, int, int, dict]]:
    return [(m["type"], m["seq"], m["serverseq"], m["parameters"]) for m in conn.texts]


def test_pause_is_confirmed_audio_stops_and_resume_is_confirmed_with_what_was_skipped():
    async def script(server: Scripted, index: int, conn: Connection, message: dict | None) -> None:
        ws = server.ws[index]
        if message is None and conn.frames == 2:
            await server.send(ws, conn, "pause")
        elif message is not None and message["type"] == "paused":
            await asyncio.sleep(0.1)  # 4 frames at 8x speed go by unsent
            await server.send(ws, conn, "resume")

    report, server, audio = run_call(script)
    (conn,) = server.connections
    assert report.passed, report.findings
    assert conn.types == ["open", "paused", "resumed", "close"]
    (_, _, _, resumed) = client_view(conn)[2]
    skipped = len(pcmu(audio)) - len(conn.audio)
    assert skipped > 0 and skipped % FRAME == 0
    assert resumed == {"start": "PT0.4S", "discarded": duration(skipped // FRAME * 0.2)}
    assert client_view(conn)[1][2] == 2 and client_view(conn)[2][2] == 3  # serverseq: pause, then resume
    assert bytes(conn.audio) == pcmu(audio)[:2 * FRAME] + pcmu(audio)[2 * FRAME + skipped:]


def test_events_are_collected_and_shown():
    entities = [{"type": "transcript", "data": {"text": "hello"}}]

    async def script(server: Scripted, index: int, conn: Connection, message: dict | None) -> None:
        if message is None and conn.frames == 1:
            await server.send(server.ws[index], conn, "event", {"entities": entities})

    report, _, _ = run_call(script, seconds=0.6)
    assert report.passed and report.events == [entities] and report.events_received == 1
    assert 'event: [{"type": "transcript", "data": {"text": "hello"}}]' in report.to_text()


def test_disconnect_is_answered_with_a_close_transaction_and_the_audio_stops():
    async def script(server: Scripted, index: int, conn: Connection, message: dict | None) -> None:
        if message is None and conn.frames == 3:
            await server.send(server.ws[index], conn, "disconnect", {"reason": "completed", "info": "done"})

    report, server, audio = run_call(script)
    (conn,) = server.connections
    assert report.passed, report.findings
    assert client_view(conn)[-1] == ("close", 2, 2, {"reason": "disconnect"})
    assert conn.frames < len(pcmu(audio)) // FRAME


def test_reconnect_moves_the_call_to_a_new_session_that_continues_the_old_one():
    async def script(server: Scripted, index: int, conn: Connection, message: dict | None) -> None:
        if index == 0 and message is not None and message["type"] == "ping":
            await server.send(server.ws[index], conn, "reconnect", {"info": "task stopping"})

    report, server, audio = run_call(script, seconds=2.0, ping_interval_s=0.4)
    old, new = server.connections
    assert report.passed, report.findings
    assert report.continued_sessions == [new.texts[0]["id"]]
    assert new.texts[0]["id"] != old.texts[0]["id"]
    continued = new.texts[0]["parameters"]["continuedSessions"]
    assert continued == [{"id": old.texts[0]["id"], "serverseq": old.seq - 1, "clientseq": old.texts[-2]["seq"]}]
    assert new.texts[0]["parameters"]["participant"] == old.texts[0]["parameters"]["participant"]
    assert new.texts[0]["parameters"]["conversationId"] == old.texts[0]["parameters"]["conversationId"]
    assert old.types[-1] == "close" and old.texts[-1]["parameters"] == {"reason": "reconnect"}
    assert new.types[0] == "open" and new.texts[-1]["parameters"] == {"reason": "end"}
    # Not a sample lost or repeated across the move.
    assert bytes(old.audio + new.audio) == pcmu(audio)
    assert report.audio_frames_sent == old.frames + new.frames
