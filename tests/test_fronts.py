"""The protocol rules and the records contract, over real sockets, against every front.

Each test starts `audiohook serve`'s stack (one embedded AWS, both production fronts over it)
and plays one scenario against a front:

- `gateway`: the API Gateway emulator, faithful (binary frame -> close 1003), running the
  Lambda handlers of template.yaml;
- `gateway-base64`: the same emulator in its opt-in, not-AWS mode that hands binary frames to
  `$default` as base64 events, in order per connection (the Lambda path's audio, locally);
- `relay`: the binary-capable production front.

Scenarios with audio run on `gateway-base64` and `relay`; on `gateway` they assert that the
first binary frame closes the connection with 1003. Every server frame goes through the
Genesys-side conformance checker and the tests assert zero findings. The audio is then read
back from the embedded Kinesis stream and must be bit-exact at the positions the client sent
it, with nothing of the session after its `disconnected` record, whose counters equal what the
server received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets

from audiohook.aws.stream import read_stream
from audiohook.local.embedded_aws import LOCAL_QUEUEING_ALLOWANCE
from audiohook.local.gateway import LocalStack
from audiohook.records import AudioRecord, LifecycleRecord, decode_record
from audiohook.tools.client import duration, upgrade_headers
from audiohook.tools.conformance import Finding, ServerFrameChecker
from conftest import REPO, load_jsonl, open_parameters

ORG_ID = open_parameters()["organizationId"]
GATEWAY, GATEWAY_BASE64, RELAY = "gateway", "gateway-base64", "relay"
FRONTS = [GATEWAY, RELAY]  # text only
AUDIO_FRONTS = [GATEWAY_BASE64, RELAY]  # fronts that carry audio
ALL_FRONTS = [GATEWAY, GATEWAY_BASE64, RELAY]  # audio scenarios: `gateway` must close with 1003
RATE = 8000
BYTES_PER_SAMPLE_FRAME = 2  # the first offer, which both fronts select: PCMU external+internal
SETTLE_S = 0.6  # past the relay's 200 ms flush: anything written after `disconnected` shows by then


@dataclass
class Front:
    kind: str
    url: str
    stack: LocalStack
    sockets: list[Any] = field(default_factory=list)

    async def connect(self, session_id: str) -> Any:
        demo = self.stack.demo
        headers = upgrade_headers(self.url, demo.api_key, demo.client_secret, organization_id=ORG_ID,
                                  session_id=session_id, correlation_id=str(uuid.uuid4()), now=time.time())
        socket = await websockets.connect(self.url, additional_headers=headers, max_size=None)
        self.sockets.append(socket)
        return socket

    async def records(self) -> dict[str, list[AudioRecord | LifecycleRecord]]:
        """Every session's records, in stream order (read in a thread: the fronts share this loop)."""
        aws = self.stack.aws

        def read() -> dict[str, list[AudioRecord | LifecycleRecord]]:
            by_session: dict[str, list[AudioRecord | LifecycleRecord]] = {}
            for _, data in read_stream(aws.client("kinesis"), aws.resources.stream_name):
                record = decode_record(data)
                by_session.setdefault(record.session_id, []).append(record)
            return by_session

        return await asyncio.to_thread(read)


@contextlib.asynccontextmanager
async def running(kind: str) -> AsyncIterator[Front]:
    # A stack name of its own: a fresh table and stream (moto keeps every stack of the process).
    async with LocalStack(REPO / "template.yaml", stack_name=f"fronts-{uuid.uuid4().hex[:8]}",
                          binary="base64" if kind == GATEWAY_BASE64 else "aws") as stack:
        front = Front(kind, stack.relay_url if kind == RELAY else stack.url, stack)
        try:
            yield front
        finally:  # the client hangs up before the servers stop
            await asyncio.gather(*(socket.close() for socket in front.sockets))


def play(kind: str, script: Callable[[Front], Awaitable[Any]]) -> Any:
    async def scenario() -> Any:
        async with running(kind) as front:
            return await asyncio.wait_for(script(front), 120)

    return asyncio.run(scenario())


@dataclass
class Genesys:
    """A client that sends exactly what it is told, records the audio it sent at which
    position, and judges every server frame as Genesys does."""

    socket: Any
    session_id: str
    seq: int = 0
    position: int = 0  # samples per channel: sent plus discarded
    sent: list[tuple[int, bytes]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    checker: ServerFrameChecker = field(init=False)

    def __post_init__(self) -> None:
        self.checker = ServerFrameChecker(self.session_id)
        self._audio = random.Random(self.session_id)  # audio unique to the session: misplacement shows

    @classmethod
    async def connect(cls, front: Front, session_id: str | None = None) -> Genesys:
        session_id = session_id or str(uuid.uuid4())
        return cls(await front.connect(session_id), session_id)

    async def send(self, type: str, parameters: dict[str, Any] | None = None, **fields: Any) -> None:
        self.seq += 1
        message = {"version": "2", "id": self.session_id, "type": type, "seq": self.seq,
                   "serverseq": self.checker.accepted_server_seq, "position": duration(self.position / RATE),
                   "parameters": {} if parameters is None else parameters} | fields
        self.checker.client_sent(message, time.time())
        await self.socket.send(json.dumps(message))

    async def gap(self, seq: int) -> None:
        """A message ahead of its predecessor. The relay answers at once; the Lambda path keeps it
        until the next input arriving PREDECESSOR_WAIT_MS later (docs/sequencing.md; the local
        stack's own allowance for its one-request-at-a-time moto server)."""
        await self.send("ping", seq=seq)
        self.seq = seq
        await asyncio.sleep(int(LOCAL_QUEUEING_ALLOWANCE["PREDECESSOR_WAIT_MS"]) / 1000 + 0.1)
        await self.send("ping")

    async def raw(self, data: str | bytes) -> None:
        await self.socket.send(data)

    async def audio(self, samples: int) -> None:
        frame = self._audio.randbytes(samples * BYTES_PER_SAMPLE_FRAME)
        await self.socket.send(frame)
        self.sent.append((self.position, frame))
        self.position += samples

    def skip(self, samples: int) -> str:
        """Audio the client drops (paused or discarded): the position moves on; its duration."""
        self.position += samples
        return duration(samples / RATE)

    async def receive(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.socket.recv(), timeout=30)
        assert isinstance(frame, str), "server messages must be text frames"
        verdict = self.checker.check(False, frame, time.time())
        self.findings.extend(verdict.findings)
        return json.loads(frame)

    async def open(self) -> None:
        await self.send("open", open_parameters(str(uuid.uuid4()), str(uuid.uuid4())))
        opened = await self.receive()
        assert opened["type"] == "opened", opened
        assert opened["parameters"]["media"][0]["channels"] == ["external", "internal"]

    async def close(self) -> None:
        await self.send("close", {"reason": "end"})
        closed = await self.receive()
        assert (closed["type"], closed["clientseq"]) == ("closed", self.seq), closed
        await self.socket.close()


def server(type: str, seq: int, clientseq: int, session_id: str, parameters: dict[str, Any] | None = None) -> dict:
    return {"version": "2", "type": type, "seq": seq, "clientseq": clientseq, "id": session_id,
            "parameters": parameters or {}}


# --------------------------------------------------------------------------- the records contract
async def settled(front: Front, session_id: str) -> list[AudioRecord | LifecycleRecord]:
    """The session's records once `disconnected` is in the stream, and SETTLE_S more."""
    return (await all_settled(front, [session_id]))[session_id]


async def all_settled(front: Front, session_ids: list[str]) -> dict[str, list[AudioRecord | LifecycleRecord]]:
    """Each session's records once every `disconnected` is in the stream, and SETTLE_S more."""
    deadline = time.monotonic() + 30
    while True:
        records = await front.records()
        waiting = [session_id for session_id in session_ids if not any(
            getattr(record, "event", None) == "disconnected" for record in records.get(session_id, []))]
        if not waiting:
            break
        assert time.monotonic() < deadline, f"no `disconnected` record for {waiting}"
        await asyncio.sleep(0.1)
    await asyncio.sleep(SETTLE_S)
    records = await front.records()
    return {session_id: records[session_id] for session_id in session_ids}


def runs(pieces: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Contiguous (position, bytes) pieces merged; overlapping pieces are an error."""
    merged: list[tuple[int, bytearray]] = []
    for position, data in sorted(pieces, key=lambda piece: piece[0]):
        if merged and merged[-1][0] + len(merged[-1][1]) // BYTES_PER_SAMPLE_FRAME == position:
            merged[-1][1].extend(data)
        else:
            assert not merged or merged[-1][0] + len(merged[-1][1]) // BYTES_PER_SAMPLE_FRAME < position, \
                f"audio at position {position} overlaps the audio before it"
            merged.append((position, bytearray(data)))
    return [(position, bytes(data)) for position, data in merged]


def stored_audio(records: list[AudioRecord | LifecycleRecord]) -> list[AudioRecord]:
    # At least once: a record stored twice is one record (records.md, "Ordering and delivery").
    unique = {(record.position, record.audio): record for record in records if isinstance(record, AudioRecord)}
    return list(unique.values())


def disconnected(records: list[AudioRecord | LifecycleRecord]) -> LifecycleRecord:
    """The session's `disconnected` record, which must be its last record in the stream."""
    finals = [index for index, record in enumerate(records) if getattr(record, "event", None) == "disconnected"]
    assert len(finals) == 1, f"{len(finals)} `disconnected` records"
    assert finals[0] == len(records) - 1, f"records after `disconnected`: {records[finals[0] + 1:]}"
    record = records[-1]
    assert isinstance(record, LifecycleRecord)
    return record


def assert_stored_exactly(records: list[AudioRecord | LifecycleRecord], genesys: Genesys) -> LifecycleRecord:
    """Every byte the client sent, at its position, and nothing else; counters match; nothing after the end."""
    audio = stored_audio(records)
    assert runs([(record.position, record.audio) for record in audio]) == runs(genesys.sent)
    final = disconnected(records)
    assert (final.data["frames"], final.data["audioBytes"], final.data["position"]) == (
        len(genesys.sent), sum(len(frame) for _, frame in genesys.sent), genesys.position)
    assert sum(record.frame_count for record in audio) == len(genesys.sent)
    return final


def lifecycle(records: list[AudioRecord | LifecycleRecord]) -> list[str]:
    return [record.event for record in records if isinstance(record, LifecycleRecord)]


async def first_audio_frame_closes_with_1003(front: Front) -> None:
    """API Gateway has no binary route: the first audio frame ends the connection."""
    genesys = await Genesys.connect(front)
    await genesys.open()
    await genesys.audio(1600)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await genesys.receive()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
    final = disconnected(await settled(front, genesys.session_id))
    assert (final.data["statusCode"], final.data["frames"]) == (1003, 0)
    assert genesys.findings == []


# --------------------------------------------------------------------------- protocol rules
@pytest.mark.parametrize("kind", FRONTS)
def test_probe_exchange_is_answered_exactly_like_the_fixture(kind):
    exchange = load_jsonl("probe-exchange-ok.jsonl")
    session_id = exchange[0]["message"]["id"]

    async def script(front: Front) -> list[dict]:
        genesys = await Genesys.connect(front, session_id)
        replies = []
        for step in exchange:
            if step["direction"] == "client":
                await genesys.raw(json.dumps(step["message"] | {"parameters": step["message"]["parameters"] | (
                    {"organizationId": ORG_ID} if step["message"]["type"] == "open" else {})}))
                replies.append(await genesys.receive())
        return replies

    expected = [step["message"] for step in exchange if step["direction"] == "server"]
    assert play(kind, script) == expected


@pytest.mark.parametrize("kind", FRONTS)
def test_every_server_message_counts_in_seq_and_names_the_last_client_seq(kind):
    async def script(front: Front) -> list[tuple]:
        genesys = await Genesys.connect(front)
        await genesys.send("open", open_parameters())
        await genesys.send("ping")
        await genesys.send("update", {"language": "es-ES"})
        await genesys.send("paused")
        await genesys.send("resumed", {"start": "PT0S", "discarded": "PT0S"})
        await genesys.send("ping")
        await genesys.send("close", {"reason": "end"})
        return [(m["type"], m["seq"], m["clientseq"]) for m in [await genesys.receive() for _ in range(5)]]

    assert play(kind, script) == [
        ("opened", 1, 1), ("pong", 2, 2), ("updated", 3, 3), ("pong", 4, 6), ("closed", 5, 7)]


def raw_update(genesys: Genesys, language_json: str) -> str:
    """The next ``update`` as text, its language (and what follows it) written as given."""
    return ('{"version":"2","id":"%s","type":"update","seq":2,"serverseq":1,"position":"PT0S",'
            '"parameters":{"language":%s}}' % (genesys.session_id, language_json))


BAD_TEXT = [
    pytest.param(lambda g: g.raw("{not json"),
                 "message is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
                 1, id="invalid-json"),
    pytest.param(lambda g: g.raw(raw_update(g, '"\\ud800"')),
                 "message is not valid JSON: a string holds a lone surrogate escape, which is not Unicode text",
                 1, id="lone-surrogate"),
    pytest.param(lambda g: g.raw(raw_update(g, '"en-US","x":NaN')), "message is not valid JSON: NaN is not a JSON value",
                 1, id="nan"),
    pytest.param(lambda g: g.raw(raw_update(g, '"en-US","x":' + "[" * 150 + "]" * 150)),
                 "message is not valid JSON: it nests deeper than 100 levels", 1, id="too-deep"),
    pytest.param(lambda g: g.send("ping", version="1"), 'unsupported version "1"; expected "2"', 2, id="wrong-version"),
    pytest.param(lambda g: g.gap(5), "ping.seq is 5 but the previous client seq was 1; expected 2", 1,
                 id="seq-gap"),
    pytest.param(lambda g: g.send("hello"), 'unknown message type "hello"', 2, id="unknown-type"),
]
BAD_AUDIO = [
    pytest.param(lambda g: g.raw(bytes(3201)),
                 "audio frame of 3201 bytes is not a whole number of samples: stereo PCMU needs a multiple of 2 bytes",
                 1, id="audio-bad-length"),
]


def bad_input_script(bad: Any) -> Callable[[Front], Awaitable[tuple]]:
    async def script(front: Front) -> tuple:
        genesys = await Genesys.connect(front)
        await genesys.send("open", open_parameters())
        opened = await genesys.receive()
        await bad(genesys)
        error = await genesys.receive()
        await genesys.send("ping")  # ignored after the error
        await genesys.send("close", {"reason": "disconnect"})
        return genesys.session_id, opened["type"], error, await genesys.receive(), genesys.seq

    return script


@pytest.mark.parametrize("kind", FRONTS)
@pytest.mark.parametrize(("bad", "info", "clientseq"), BAD_TEXT)
def test_bad_input_gets_one_disconnect_error_then_close_gets_closed(kind, bad, info, clientseq):
    session_id, opened, error, closed, close_seq = play(kind, bad_input_script(bad))
    assert opened == "opened"
    assert error == server("disconnect", 2, clientseq, session_id, {"reason": "error", "info": info})
    assert closed == server("closed", 3, close_seq, session_id)


@pytest.mark.parametrize("kind", AUDIO_FRONTS)
@pytest.mark.parametrize(("bad", "info", "clientseq"), BAD_AUDIO)
def test_bad_audio_gets_one_disconnect_error_then_close_gets_closed(kind, bad, info, clientseq):
    session_id, opened, error, closed, close_seq = play(kind, bad_input_script(bad))
    assert opened == "opened"
    assert error == server("disconnect", 2, clientseq, session_id, {"reason": "error", "info": info})
    assert closed == server("closed", 3, close_seq, session_id)


@pytest.mark.parametrize("kind", AUDIO_FRONTS)
def test_audio_before_open_is_a_protocol_error(kind):
    async def script(front: Front) -> tuple[str, dict]:
        genesys = await Genesys.connect(front)
        await genesys.raw(bytes(3200))
        return genesys.session_id, await genesys.receive()

    session_id, error = play(kind, script)
    assert error == server("disconnect", 1, 0, session_id, {"reason": "error", "info": "audio frame received before open"})


@pytest.mark.parametrize("kind", FRONTS)
def test_unsigned_upgrade_is_refused_with_401(kind):
    async def script(front: Front) -> int:
        headers = upgrade_headers(front.url, front.stack.demo.api_key, "", organization_id=ORG_ID,
                                  session_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()), now=time.time())
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(front.url, additional_headers=headers):
                pass
        return refused.value.response.status_code

    assert play(kind, script) == 401


# --------------------------------------------------------------------------- end to end, with audio
ALL_FRONTS_CLOSING = [GATEWAY, GATEWAY_BASE64, RELAY]


@pytest.mark.parametrize("kind", ALL_FRONTS_CLOSING)
def test_a_burst_of_ten_seconds_of_audio_is_stored_bit_exact(kind):
    # 10 s of stereo PCMU sent as fast as the socket takes it, in frames of varied sizes.
    sizes = [160, 1600, 320, 800, 3200, 40]  # samples per channel: 20, 200, 40, 100, 400, 5 ms

    async def script(front: Front) -> None:
        if front.kind == GATEWAY:
            return await first_audio_frame_closes_with_1003(front)
        genesys = await Genesys.connect(front)
        await genesys.open()
        index = 0
        while genesys.position < 10 * RATE:
            await genesys.audio(min(sizes[index % len(sizes)], 10 * RATE - genesys.position))
            index += 1
        await genesys.close()
        records = await settled(front, genesys.session_id)
        assert genesys.position == 80_000 and sum(len(frame) for _, frame in genesys.sent) == 160_000
        assert_stored_exactly(records, genesys)
        assert lifecycle(records) == ["opened", "closed", "disconnected"]
        assert genesys.findings == []

    play(kind, script)


@pytest.mark.parametrize("kind", ALL_FRONTS_CLOSING)
def test_fifty_concurrent_sessions_with_audio_are_each_stored_bit_exact(kind):
    async def one(front: Front) -> Genesys:
        genesys = await Genesys.connect(front)
        await genesys.open()
        for _ in range(3):
            await genesys.audio(800)
        await genesys.send("ping")
        assert (await genesys.receive())["type"] == "pong"
        await genesys.audio(800)
        await genesys.close()
        return genesys

    async def script(front: Front) -> None:
        if front.kind == GATEWAY:
            return await first_audio_frame_closes_with_1003(front)
        sessions = await asyncio.gather(*(one(front) for _ in range(50)))
        stored = await all_settled(front, [genesys.session_id for genesys in sessions])
        for genesys in sessions:
            records = stored[genesys.session_id]
            assert_stored_exactly(records, genesys)
            assert lifecycle(records) == ["opened", "closed", "disconnected"]
            assert genesys.findings == []

    play(kind, script)


@pytest.mark.parametrize("kind", ALL_FRONTS_CLOSING)
def test_pause_resume_and_discarded_with_audio_in_between_keep_every_position(kind):
    async def script(front: Front) -> None:
        if front.kind == GATEWAY:
            return await first_audio_frame_closes_with_1003(front)
        genesys = await Genesys.connect(front)
        await genesys.open()
        await genesys.audio(1600)
        await genesys.audio(1600)
        await genesys.send("paused")
        paused_at = duration(genesys.position / RATE)
        await genesys.send("resumed", {"start": paused_at, "discarded": genesys.skip(3200)})
        await genesys.audio(1600)
        await genesys.audio(800)
        discarded_from = duration(genesys.position / RATE)
        await genesys.send("discarded", {"start": discarded_from, "discarded": genesys.skip(1600)})
        await genesys.audio(1600)
        await genesys.send("ping")
        pong = await genesys.receive()
        assert (pong["type"], pong["seq"], pong["clientseq"]) == ("pong", 2, 5)
        await genesys.audio(400)
        await genesys.close()
        records = await settled(front, genesys.session_id)
        final = assert_stored_exactly(records, genesys)
        assert [(record.position, record.end_position) for record in runs_of(records)] == [
            (0, 3200), (6400, 8800), (10400, 12400)]
        assert final.data["position"] == 12400
        assert lifecycle(records) == ["opened", "paused", "resumed", "discarded", "closed", "disconnected"]
        resumed, discarded = (record for record in records if getattr(record, "event", None) in (
            "resumed", "discarded"))
        assert (resumed.data["samples"], discarded.data["samples"]) == (3200, 1600)
        assert genesys.findings == []

    play(kind, script)


@dataclass
class _Run:
    position: int
    end_position: int


def runs_of(records: list[AudioRecord | LifecycleRecord]) -> list[_Run]:
    audio = stored_audio(records)
    return [_Run(position, position + len(data) // BYTES_PER_SAMPLE_FRAME)
            for position, data in runs([(record.position, record.audio) for record in audio])]


@pytest.mark.parametrize("kind", ALL_FRONTS)
def test_an_abrupt_socket_drop_mid_audio_keeps_what_was_received_and_nothing_after(kind):
    async def script(front: Front) -> None:
        if front.kind == GATEWAY:
            return await first_audio_frame_closes_with_1003(front)
        genesys = await Genesys.connect(front)
        await genesys.open()
        for _ in range(5):
            await genesys.audio(1600)
        await genesys.send("ping")
        assert (await genesys.receive())["type"] == "pong"  # the server has read the five frames
        for _ in range(5):
            await genesys.audio(1600)
        genesys.socket.transport.abort()  # no close frame, a TCP reset, mid-audio
        records = await settled(front, genesys.session_id)
        audio = stored_audio(records)
        stored = runs([(record.position, record.audio) for record in audio])
        assert len(stored) == 1, "the audio received is one contiguous run from the start"
        position, data = stored[0]
        (sent_position, sent_data), = runs(genesys.sent)
        assert position == sent_position == 0
        assert len(data) >= 5 * 3200 and sent_data.startswith(data)  # a prefix, bit-exact
        final = disconnected(records)
        # The counters say exactly what was received, and it is all in the stream.
        assert (final.data["frames"], final.data["audioBytes"], final.data["position"]) == (
            sum(record.frame_count for record in audio), len(data), len(data) // BYTES_PER_SAMPLE_FRAME)
        assert (final.data["outcome"], final.data["statusCode"]) == ("abandoned", 1006)
        assert lifecycle(records) == ["opened", "disconnected"]
        assert genesys.findings == []

    play(kind, script)


@pytest.mark.parametrize("kind", [GATEWAY, RELAY])
def test_a_flood_of_two_hundred_pings_gets_every_pong_in_order(kind):
    async def script(front: Front) -> None:
        genesys = await Genesys.connect(front)
        await genesys.open()
        for _ in range(200):
            await genesys.send("ping")
        replies: list[tuple[str, int, int]] = []
        with contextlib.suppress(TimeoutError):  # a pong that never comes fails the comparison below
            while len(replies) < 200 and (not replies or replies[-1][0] == "pong"):
                reply = await asyncio.wait_for(genesys.receive(), 10)
                replies.append((reply["type"], reply["seq"], reply["clientseq"]))
        assert replies == [("pong", seq, seq) for seq in range(2, 202)]
        await genesys.close()
        records = await settled(front, genesys.session_id)
        final = disconnected(records)
        assert (final.data["seq"], final.data["clientseq"], final.data["error"]) == (202, 202, None)
        assert lifecycle(records) == ["opened", "closed", "disconnected"]
        assert genesys.findings == []

    play(kind, script)
