"""What an operator sees of a call, the same whichever front carried it.

One script (a signed call with audio, ping and close; a connection probe; an upgrade signed
with the wrong secret; a session ended by a protocol error) runs over real sockets against
the local API Gateway emulator (the Lambda handlers of template.yaml) and against the relay.
Everything the process writes is captured:

- the CloudWatch EMF documents: the same metric names, dimensions and breakdown values, and
  the same counts, on both fronts (the relay adds only its per-task gauges);
- the log lines: JSON with the session's ids, and nothing secret and no audio in any of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from audiohook import metrics as M
from audiohook.aws.wiring import build_service
from audiohook.local.gateway import LocalStack
from audiohook.relay.server import Relay
from audiohook.tools.client import upgrade_headers
from conftest import API_KEY, CLIENT_SECRET, REPO, open_parameters

ORG_ID = open_parameters()["organizationId"]
FRAME_BYTES = 3200  # 200 ms of PCMU stereo
FRAMES = 5
WRONG_SECRET = base64.b64encode(b"not the secret of this API key!!").decode()


@dataclass
class Sent:
    """What the client sent that must never show up in a log."""

    api_key: str
    client_secret: str
    signatures: list[str] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running(kind: str, aws: Any) -> AsyncIterator[tuple[str, str, str]]:
    if kind == "apigateway":
        # Audio through the Lambda path needs the emulator's opt-in base64 mode (API Gateway closes on binary).
        async with LocalStack(REPO / "template.yaml", binary="base64", relay=False) as stack:
            yield stack.url, stack.demo.api_key, stack.demo.client_secret
    else:
        service = build_service(aws.settings, dynamodb=aws.dynamodb, kinesis=aws.kinesis)
        async with Relay(service, host="127.0.0.1", port=0, flush_ms=50) as relay:
            yield relay.url, API_KEY, CLIENT_SECRET


def message(session_id: str, seq: int, type: str, parameters: dict[str, Any] | None = None,
            position: str = "PT0S", serverseq: int = 0) -> str:
    return json.dumps({"version": "2", "id": session_id, "type": type, "seq": seq, "serverseq": serverseq,
                       "position": position, "parameters": parameters or {}})


async def connect(url: str, sent: Sent, secret: str, session_id: str) -> Any:
    headers = upgrade_headers(url, sent.api_key, secret, organization_id=ORG_ID, session_id=session_id,
                              correlation_id=str(uuid.uuid4()), now=time.time())
    sent.signatures.append(headers["Signature"])
    return await websockets.connect(url, additional_headers=headers)


async def replies(socket: Any, count: int) -> list[str]:
    return [json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] for _ in range(count)]


async def script(url: str, sent: Sent) -> list[list[str]]:
    answers = []
    # A call: open, audio, ping, close.
    session_id = str(uuid.uuid4())
    async with await connect(url, sent, sent.client_secret, session_id) as socket:
        call = open_parameters(str(uuid.uuid4()), str(uuid.uuid4()))
        await socket.send(message(session_id, 1, "open", call))
        answers.append(await replies(socket, 1))
        for _ in range(FRAMES):
            frame = os.urandom(FRAME_BYTES)
            sent.audio.append(frame)
            await socket.send(frame)
        # The position tells the server how much audio came before (Lambda invocations run unordered).
        position = f"PT{FRAMES * FRAME_BYTES / 2 / 8000:g}S"
        await socket.send(message(session_id, 2, "ping", position=position))
        await socket.send(message(session_id, 3, "close", {"reason": "end"}, position=position))
        answers.append(await replies(socket, 2))
    # The connection probe Genesys runs when an integration is saved.
    session_id = str(uuid.uuid4())
    async with await connect(url, sent, sent.client_secret, session_id) as socket:
        await socket.send(message(session_id, 1, "open", open_parameters()))
        await socket.send(message(session_id, 2, "close", {"reason": "end"}))
        answers.append(await replies(socket, 2))
    # An upgrade signed with the wrong secret.
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, sent, WRONG_SECRET, str(uuid.uuid4()))
    answers.append([str(refused.value.response.status_code)])
    # A session ended by a protocol error (a serverseq the server never sent).
    session_id = str(uuid.uuid4())
    async with await connect(url, sent, sent.client_secret, session_id) as socket:
        await socket.send(message(session_id, 1, "open", open_parameters(str(uuid.uuid4()), str(uuid.uuid4()))))
        received = await replies(socket, 1)
        await socket.send(message(session_id, 2, "ping", serverseq=99))
        received += await replies(socket, 1)
        await socket.send(message(session_id, 3, "close", {"reason": "error"}))
        answers.append(received + await replies(socket, 1))
    return answers


@dataclass
class Captured:
    sent: Sent
    output: bytes  # stdout + stderr + log records, as the process wrote them

    def json_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.output.splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    lines.append(parsed)
        return lines

    def emf(self) -> list[dict[str, Any]]:
        return [line for line in self.json_lines() if "_aws" in line]

    def logs(self) -> list[dict[str, Any]]:
        return [line for line in self.json_lines() if "_aws" not in line and "message" in line]


@pytest.fixture
def captured(aws: Any, capfdbinary: Any, caplog: Any) -> dict[str, Captured]:
    """The script played once against each front, with everything written while it ran."""
    # The service's JSON logger (powertools) writes to the stream it found at import; point it
    # at the captured stdout for the run.
    handlers = [h for h in logging.getLogger("audiohook").handlers if isinstance(h, logging.StreamHandler)]
    assert handlers
    streams = [handler.setStream(sys.stdout) for handler in handlers]
    try:
        return play_both(capfdbinary, caplog, aws)
    finally:
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)


def play_both(capfdbinary: Any, caplog: Any, aws: Any) -> dict[str, Captured]:
    results = {}
    # The relay first: it uses the in-process moto of ``aws``, which the local stack's own moto
    # server (same process) resets when it stops.
    for kind in ("relay", "apigateway"):
        capfdbinary.readouterr()
        caplog.clear()

        async def play(kind: str = kind) -> tuple[Sent, list[list[str]]]:
            async with running(kind, aws) as (url, api_key, client_secret):
                sent = Sent(api_key, client_secret)
                return sent, await script(url, sent)

        sent, answers = asyncio.run(play())
        assert answers == [["opened"], ["pong", "closed"], ["opened", "closed"], ["401"],
                           ["opened", "disconnect", "closed"]], kind
        out, err = capfdbinary.readouterr()
        results[kind] = Captured(sent, out + b"\n" + err + b"\n" + caplog.text.encode())
    return results


# ----------------------------------------------------------------------------- metrics
def published(documents: list[dict[str, Any]]) -> dict[tuple[str, frozenset[str], str | None], list[float]]:
    """(metric, dimension names, breakdown value) -> every value published."""
    common = {M.SERVICE_DIMENSION, M.FRONT}
    found: dict[tuple[str, frozenset[str], str | None], list[float]] = {}
    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == M.NAMESPACE
        (dimensions,) = directive["Dimensions"]
        extra = set(dimensions) - common
        assert set(dimensions) >= common and len(extra) <= 1, dimensions
        label = document[extra.pop()] if extra else None
        for metric in directive["Metrics"]:
            name = metric["Name"]
            assert metric["Unit"] == M.BY_NAME[name].unit, metric
            value = document[name]
            found.setdefault((name, frozenset(dimensions), label), []).extend(
                value if isinstance(value, list) else [value])
    return found


def test_both_fronts_publish_the_same_metrics_with_the_same_dimensions(captured: dict[str, Captured]) -> None:
    lambda_path, relay = (published(captured[kind].emf()) for kind in ("apigateway", "relay"))
    common = frozenset({M.SERVICE_DIMENSION, M.FRONT})
    by_reason = common | {"Reason"}
    by_kind = common | {"Kind"}
    expected = {
        ("Connections", common, None), ("UpgradesRejected", common, None),
        ("UpgradesRejected", by_reason, "bad_signature"), ("CallSessions", common, None),
        ("ProbeSessions", common, None), ("ProtocolErrors", common, None),
        ("ProtocolErrors", by_kind, "sequence"), ("AudioFrames", common, None), ("AudioBytes", common, None),
        ("AudioAckDelay", common, None),
    }
    assert set(lambda_path) == expected
    # A Lambda invocation cannot see the other connections: levels are the relay's (per task).
    assert set(relay) - set(lambda_path) == {(name, common, None) for name in M.RELAY_ONLY}
    assert set(relay) >= expected

    def counts(found: dict[tuple[str, frozenset[str], str | None], list[float]]) -> dict[Any, float]:
        return {key: sum(values) for key, values in found.items()
                if M.BY_NAME[key[0]].unit != "Milliseconds" and not M.BY_NAME[key[0]].gauge}

    assert counts(relay) == counts(lambda_path) == {
        ("Connections", common, None): 3, ("UpgradesRejected", common, None): 1,
        ("UpgradesRejected", by_reason, "bad_signature"): 1, ("CallSessions", common, None): 2,
        ("ProbeSessions", common, None): 1, ("ProtocolErrors", common, None): 1,
        ("ProtocolErrors", by_kind, "sequence"): 1, ("AudioFrames", common, None): FRAMES,
        ("AudioBytes", common, None): FRAMES * FRAME_BYTES,
    }
    for kind in ("apigateway", "relay"):
        documents = captured[kind].emf()
        assert {(doc["service"], doc["Front"]) for doc in documents} == {("audiohook", kind)}
    # Every delay is a real one (a frame cannot be acknowledged before it arrives, nor after a minute).
    for found in (lambda_path, relay):
        assert all(0 <= delay < 60_000 for delay in found[("AudioAckDelay", common, None)])


# ----------------------------------------------------------------------------- logs
def windows(data: bytes, size: int) -> set[bytes]:
    return {data[i:i + size] for i in range(len(data) - size + 1)}


def test_no_secret_and_no_audio_in_any_log_line(captured: dict[str, Captured]) -> None:
    for kind, capture in captured.items():
        assert_nothing_secret(kind, capture)


def assert_nothing_secret(kind: str, capture: Captured) -> None:
    output, sent = capture.output, capture.sent
    assert len(capture.logs()) >= 8, kind  # the logs were captured
    secrets = {
        "API key": sent.api_key.encode(),
        "client secret": sent.client_secret.encode(),
        "decoded client secret": base64.b64decode(sent.client_secret),
    }
    for number, signature in enumerate(sent.signatures):
        secrets[f"Signature header {number}"] = signature.encode()
        secrets[f"signature value {number}"] = signature.split(":")[1].encode()  # sig1=:<base64>:
    leaked = [name for name, secret in secrets.items() if secret in output]
    assert not leaked, kind
    seen_raw = windows(output, 16)
    seen_text = windows(output, 24)
    for frame in sent.audio:
        assert not windows(frame, 16) & seen_raw, f"raw audio in the logs of the {kind} front"
        # Any 18 bytes of the frame, base64-encoded at any alignment, are 24 characters.
        assert not {base64.b64encode(frame[i:i + 18]) for i in range(len(frame) - 17)} & seen_text, \
            f"base64 audio in the logs of the {kind} front"


def test_every_log_line_about_a_session_names_it(captured: dict[str, Captured]) -> None:
    for kind, capture in captured.items():
        assert_lines_name_their_session(kind, capture)


def assert_lines_name_their_session(kind: str, capture: Captured) -> None:
    lines = [line for line in capture.logs() if line.get("service") == "audiohook"]
    about_sessions = [line for line in lines if "connection_id" in line]
    assert len(about_sessions) >= 7, kind
    # The upgrade names the session Genesys announced; once open, every line names the conversation too.
    assert all(line.get("session_id") for line in about_sessions), [
        line["message"] for line in about_sessions if not line.get("session_id")]
    after_open = [line for line in about_sessions if line["message"] in ("protocol error", "session finished")]
    missing = [(line["message"], line.get("session_id")) for line in after_open if not line.get("conversation_id")]
    assert after_open and not missing, missing
