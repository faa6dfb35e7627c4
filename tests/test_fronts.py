"""The protocol rules, over real sockets, against every front that runs the service.

`gateway` is the local API Gateway emulator running the Lambda handlers of template.yaml;
`relay` is the binary-capable production front. Each scenario is one list of steps played
against both; the expected server messages are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import websockets

from audiohook.aws.wiring import build_service
from audiohook.config import Settings
from audiohook.local.gateway import LocalStack
from audiohook.relay.server import Relay
from audiohook.tools.client import upgrade_headers
from conftest import API_KEY, CLIENT_SECRET, REPO, load_jsonl, open_parameters

ORG_ID = open_parameters()["organizationId"]
FRONTS = ["gateway", "relay"]


@dataclass
class Front:
    url: str
    api_key: str
    client_secret: str


@contextlib.asynccontextmanager
async def running(kind: str, aws: Any) -> AsyncIterator[Front]:
    if kind == "gateway":
        async with LocalStack(REPO / "template.yaml") as stack:
            yield Front(stack.url, stack.demo.api_key, stack.demo.client_secret)
    else:
        service = build_service(aws.settings, dynamodb=aws.dynamodb, kinesis=aws.kinesis)
        async with Relay(service, host="127.0.0.1", port=0) as relay:
            yield Front(relay.url, API_KEY, CLIENT_SECRET)


class Genesys:
    """A client that sends exactly what it is told and collects the server's frames."""

    def __init__(self, socket: Any, session_id: str):
        self.socket, self.session_id, self.seq = socket, session_id, 0

    async def send(self, type: str, parameters: dict[str, Any] | None = None, **fields: Any) -> None:
        self.seq += 1
        message = {"version": "2", "id": self.session_id, "type": type, "seq": self.seq, "serverseq": 0,
                   "position": "PT0S", "parameters": {} if parameters is None else parameters} | fields
        await self.socket.send(json.dumps(message))

    async def gap(self, seq: int) -> None:
        """A message ahead of its predecessor. The relay answers at once; the Lambda path keeps it
        until the next input arriving PREDECESSOR_WAIT_MS (3 s) later (docs/sequencing.md)."""
        await self.send("ping", seq=seq)
        self.seq = seq
        await asyncio.sleep(Settings().predecessor_wait_ms / 1000 + 0.1)
        await self.send("ping")

    async def raw(self, data: str | bytes) -> None:
        await self.socket.send(data)

    async def receive(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.socket.recv(), timeout=10)
        assert isinstance(frame, str), "server messages must be text frames"
        return json.loads(frame)


def play(kind: str, aws: Any, script: Any, session_id: str | None = None) -> Any:
    session_id = session_id or str(uuid.uuid4())

    async def scenario() -> Any:
        async with running(kind, aws) as front:
            headers = upgrade_headers(front.url, front.api_key, front.client_secret, organization_id=ORG_ID,
                                      session_id=session_id, correlation_id=str(uuid.uuid4()), now=time.time())
            async with websockets.connect(front.url, additional_headers=headers) as socket:
                return await script(Genesys(socket, session_id))

    return asyncio.run(scenario())


def server(type: str, seq: int, clientseq: int, session_id: str, parameters: dict[str, Any] | None = None) -> dict:
    return {"version": "2", "type": type, "seq": seq, "clientseq": clientseq, "id": session_id,
            "parameters": parameters or {}}


@pytest.mark.parametrize("kind", FRONTS)
def test_probe_exchange_is_answered_exactly_like_the_fixture(kind, aws):
    exchange = load_jsonl("probe-exchange-ok.jsonl")
    session_id = exchange[0]["message"]["id"]

    async def script(genesys: Genesys) -> list[dict]:
        replies = []
        for step in exchange:
            if step["direction"] == "client":
                await genesys.raw(json.dumps(step["message"] | {"parameters": step["message"]["parameters"] | (
                    {"organizationId": ORG_ID} if step["message"]["type"] == "open" else {})}))
                replies.append(await genesys.receive())
        return replies

    expected = [step["message"] for step in exchange if step["direction"] == "server"]
    assert play(kind, aws, script, session_id) == expected


@pytest.mark.parametrize("kind", FRONTS)
def test_every_server_message_counts_in_seq_and_names_the_last_client_seq(kind, aws):
    async def script(genesys: Genesys) -> list[tuple]:
        await genesys.send("open", open_parameters())
        await genesys.send("ping")
        await genesys.send("update", {"language": "es-ES"})
        await genesys.send("paused")
        await genesys.send("resumed", {"start": "PT0S", "discarded": "PT0S"})
        await genesys.send("ping")
        await genesys.send("close", {"reason": "end"})
        return [(m["type"], m["seq"], m["clientseq"]) for m in [await genesys.receive() for _ in range(5)]]

    assert play(kind, aws, script) == [
        ("opened", 1, 1), ("pong", 2, 2), ("updated", 3, 3), ("pong", 4, 6), ("closed", 5, 7)]


BAD_INPUTS = [
    pytest.param(lambda g: g.raw("{not json"),
                 "message is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
                 1, id="invalid-json"),
    pytest.param(lambda g: g.send("ping", version="1"), 'unsupported version "1"; expected "2"', 2, id="wrong-version"),
    pytest.param(lambda g: g.gap(5), "ping.seq is 5 but the previous client seq was 1; expected 2", 1,
                 id="seq-gap"),
    pytest.param(lambda g: g.send("hello"), 'unknown message type "hello"', 2, id="unknown-type"),
    pytest.param(lambda g: g.raw(bytes(3201)),
                 "audio frame of 3201 bytes is not a whole number of samples: stereo PCMU needs a multiple of 2 bytes",
                 1, id="audio-bad-length"),
]


@pytest.mark.parametrize("kind", FRONTS)
@pytest.mark.parametrize(("bad", "info", "clientseq"), BAD_INPUTS)
def test_bad_input_gets_one_disconnect_error_then_close_gets_closed(kind, aws, bad, info, clientseq):
    async def script(genesys: Genesys) -> list[dict]:
        await genesys.send("open", open_parameters())
        opened = await genesys.receive()
        await bad(genesys)
        disconnect = await genesys.receive()
        await genesys.send("ping")  # ignored after the error
        await genesys.send("close", {"reason": "disconnect"})
        return [opened["type"], disconnect, await genesys.receive(), genesys.seq]

    session_id = str(uuid.uuid4())
    opened, disconnect, closed, close_seq = play(kind, aws, script, session_id)
    assert opened == "opened"
    assert disconnect == server("disconnect", 2, clientseq, session_id, {"reason": "error", "info": info})
    assert closed == server("closed", 3, close_seq, session_id)


@pytest.mark.parametrize("kind", FRONTS)
def test_audio_before_open_is_a_protocol_error(kind, aws):
    async def script(genesys: Genesys) -> dict:
        await genesys.raw(bytes(3200))
        return await genesys.receive()

    session_id = str(uuid.uuid4())
    assert play(kind, aws, script, session_id) == server(
        "disconnect", 1, 0, session_id, {"reason": "error", "info": "audio frame received before open"})


@pytest.mark.parametrize("kind", FRONTS)
def test_unsigned_upgrade_is_refused_with_401(kind, aws):
    async def scenario() -> int:
        async with running(kind, aws) as front:
            headers = upgrade_headers(front.url, front.api_key, "", organization_id=ORG_ID,
                                      session_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()), now=time.time())
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(front.url, additional_headers=headers):
                    pass
            return refused.value.response.status_code

    assert asyncio.run(scenario()) == 401
