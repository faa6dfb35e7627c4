"""The relay's per-frame path over real sockets, against moto: streaming frames wait
unaccounted (``_Link.pending``) until the flush or the next other input, and must land in
Kinesis exactly where the frame-by-frame path put them: every byte, every position, every
lifecycle record after the audio that came before it, ``disconnected`` last.

Most tests use a flush interval longer than the test, so frames are still pending when what
follows them arrives; ``hold`` waits until the relay holds them, so the premise is checked.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config
from test_relay import (
    CALL_IDS,
    FRAME,
    SAMPLES,
    THROUGHPUT,
    audio_of,
    eventually,
    frame,
    lifecycle_of,
    message,
    open_socket,
    quick_relay,
    receive,
    relay_service,
    run,
    session_records,
)
from websockets.asyncio.client import ClientConnection

from audiohook.records import AudioRecord, LifecycleRecord
from audiohook.relay import server as relay_server
from audiohook.relay.server import MAX_MESSAGE_BYTES, MAX_PENDING_FRAME_BYTES, MAX_PENDING_FRAMES, Relay
from audiohook.session import Pause, Resume, SendEvent
from conftest import REGION, Aws, open_parameters
from faults import Faults

NO_FLUSH_MS = 60_000  # no flush tick during a test: only other input (or the end) takes pending frames
BAD_FRAME_INFO = "audio frame of 3201 bytes is not a whole number of samples: stereo PCMU needs a multiple of 2 bytes"
ENTITIES = [{"type": "transcript", "data": {
    "id": "8a7c2b52-0f84-4e7e-9f53-3a4e07f5ad2b", "channelId": 0, "isFinal": True,
    "offset": "PT0.2S", "duration": "PT0.4S",
    "alternatives": [{"confidence": 0.5, "interpretations": [{"type": "display", "transcript": "Grüße, 你好"}]}]}}]


def pending_frames(relay: Relay) -> int:
    return sum(len(link.pending) for link in relay._links.values())


def state_of(relay: Relay) -> str:
    (link,) = relay._links.values()
    return link.session.state.value


async def hold(relay: Relay, ws: ClientConnection, frames: list[bytes], *, behind: int = 0) -> None:
    """Send ``frames`` and wait until the relay holds them, unaccounted, behind ``behind``
    frames still pending from before (what came between has taken any others). The count
    waited for must differ from the one before that input: it may not be applied yet."""
    for data in frames:
        await ws.send(data)
    await eventually(lambda: pending_frames(relay) == behind + len(frames))


async def opened(relay: Relay, session_id: str) -> ClientConnection:
    ws = await open_socket(relay, session_id)
    await ws.send(json.dumps(message(session_id, "open", 1, 0, open_parameters(*CALL_IDS))))
    assert (await receive(ws))["type"] == "opened"
    return ws


async def send(ws: ClientConnection, data: dict[str, Any]) -> None:
    await ws.send(json.dumps(data))


def timeline(records: list[AudioRecord | LifecycleRecord]) -> list[tuple[Any, ...]]:
    """The session's records in stream order: consecutive audio records that continue each
    other as one ``("audio", position, bytes)`` (how frames are grouped into records is the
    buffer's business), lifecycle records as ``(event, position)``."""
    out: list[tuple[Any, ...]] = []
    for record in records:
        if isinstance(record, AudioRecord):
            last = out[-1] if out else None
            if last is not None and last[0] == "audio" and last[1] + len(last[2]) // 2 == record.position:
                out[-1] = ("audio", last[1], last[2] + record.audio)
            else:
                out.append(("audio", record.position, record.audio))
        else:
            out.append((record.event, record.position))
    return out


def event(records: list[AudioRecord | LifecycleRecord], name: str) -> LifecycleRecord:
    (found,) = [r for r in lifecycle_of(records) if r.event == name]
    return found


def frames(*numbers: int) -> bytes:
    return b"".join(frame(n) for n in numbers)


# --- state changes from the client ------------------------------------------------------------


def test_audio_pending_before_paused_resumed_discarded_and_close_lands_before_each_at_its_exact_position(
        aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario(relay: Relay) -> dict[str, Any]:
        ws = await opened(relay, s)
        await hold(relay, ws, [frame(0), frame(1), frame(2)])
        await send(ws, message(s, "paused", 2, 1))
        await send(ws, message(s, "resumed", 3, 1, {"start": "PT0.6S", "discarded": "PT1S"}))
        await hold(relay, ws, [frame(3), frame(4)])
        await send(ws, message(s, "discarded", 4, 1, {"start": "PT2.6S", "discarded": "PT0.2S"}))
        await hold(relay, ws, [frame(5)])
        await send(ws, message(s, "close", 5, 1, {"reason": "end"}))
        closed = await receive(ws)
        await ws.close()
        return closed

    closed = run(_with_relay(aws, scenario))

    assert closed == {"version": "2", "type": "closed", "seq": 2, "clientseq": 5, "id": s, "parameters": {}}
    records = session_records(aws, s)
    assert timeline(records) == [
        ("opened", 0),
        ("audio", 0, frames(0, 1, 2)),
        ("paused", 3 * SAMPLES),
        ("resumed", 3 * SAMPLES + 8000),
        ("audio", 3 * SAMPLES + 8000, frames(3, 4)),
        ("discarded", 5 * SAMPLES + 8000 + 1600),
        ("audio", 5 * SAMPLES + 8000 + 1600, frames(5)),
        ("closed", 6 * SAMPLES + 9600),
        ("disconnected", 6 * SAMPLES + 9600),
    ]
    assert event(records, "resumed").data == {"start": "PT0.6S", "discarded": "PT1S", "samples": 8000,
                                              "initiator": "client", "pausedBy": "client"}
    final = event(records, "disconnected").data
    assert (final["frames"], final["audioBytes"], final["position"]) == (6, 6 * FRAME, 6 * SAMPLES + 9600)


def test_a_frame_of_a_bad_length_after_pending_frames_gets_one_disconnect_and_the_frames_before_it_keep_their_place(
        aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario(relay: Relay) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        ws = await opened(relay, s)
        await hold(relay, ws, [frame(0), frame(1), frame(2)])
        await ws.send(frame(3, FRAME + 1))
        replies = [await receive(ws)]
        await ws.send(frame(4))  # after the error: ignored
        await ws.send(frame(5, FRAME + 1))  # and so is another bad one: no second disconnect
        await send(ws, message(s, "close", 2, 2, {"reason": "error"}))
        replies.append(await receive(ws))
        await ws.close()
        await eventually(lambda: relay.sessions() == 0)
        return replies, relay.metrics()

    replies, metrics = run(_with_relay(aws, scenario))

    assert replies == [
        {"version": "2", "type": "disconnect", "seq": 2, "clientseq": 1, "id": s,
         "parameters": {"reason": "error", "info": BAD_FRAME_INFO}},
        {"version": "2", "type": "closed", "seq": 3, "clientseq": 2, "id": s, "parameters": {}},
    ]
    records = session_records(aws, s)
    assert timeline(records) == [
        ("opened", 0), ("audio", 0, frames(0, 1, 2)), ("error", 3 * SAMPLES), ("closed", 3 * SAMPLES),
        ("disconnected", 3 * SAMPLES)]
    assert event(records, "error").data == {"info": BAD_FRAME_INFO, "state": "ACTIVE"}
    assert (metrics["frames"], metrics["frames_ignored"], metrics["protocol_errors"]) == (3, 2, 1)


def test_an_empty_frame_between_pending_frames_is_counted_and_moves_nothing(aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario(relay: Relay) -> None:
        ws = await opened(relay, s)
        await hold(relay, ws, [frame(0), frame(1)])
        await ws.send(b"")
        await hold(relay, ws, [frame(2), frame(3), frame(4)])
        await ws.send(b"")
        await send(ws, message(s, "close", 2, 1, {"reason": "end"}))
        assert (await receive(ws))["type"] == "closed"
        await ws.close()

    run(_with_relay(aws, scenario))

    records = session_records(aws, s)
    assert timeline(records) == [
        ("opened", 0), ("audio", 0, frames(0, 1, 2, 3, 4)), ("closed", 5 * SAMPLES), ("disconnected", 5 * SAMPLES)]
    final = event(records, "disconnected").data
    assert (final["frames"], final["emptyFrames"], final["audioBytes"]) == (5, 2, 5 * FRAME)


def test_a_burst_beyond_the_pending_limit_with_frames_too_big_to_wait_arrives_bit_exact_and_in_order(
        aws: Aws) -> None:
    s = str(uuid.uuid4())
    sizes = [FRAME] * (MAX_PENDING_FRAMES + 3) + [MAX_PENDING_FRAME_BYTES, MAX_PENDING_FRAME_BYTES + 2, 2,
                                                   64 * 1024, FRAME, 2 * MAX_PENDING_FRAME_BYTES] + [FRAME] * 40
    burst = [bytes((n * 7 + i) % 251 for i in range(size)) for n, size in enumerate(sizes)]

    async def scenario(relay: Relay) -> dict[str, Any]:
        ws = await opened(relay, s)
        for data in burst:
            await ws.send(data)
        await send(ws, message(s, "close", 2, 1, {"reason": "end"}))
        assert (await receive(ws))["type"] == "closed"
        await ws.close()
        await eventually(lambda: relay.sessions() == 0)
        return relay.metrics()

    metrics = run(_with_relay(aws, scenario))

    total = sum(sizes) // 2
    assert timeline(session_records(aws, s)) == [
        ("opened", 0), ("audio", 0, b"".join(burst)), ("closed", total), ("disconnected", total)]
    assert (metrics["frames"], metrics["bytes"]) == (len(burst), sum(sizes))


def test_a_frame_as_big_as_a_message_may_be_arrives_whole_at_its_position(aws: Aws) -> None:
    # 1 MiB (MAX_MESSAGE_BYTES): more than one Kinesis record holds; it goes out in pieces.
    s = str(uuid.uuid4())
    big = bytes(n % 251 for n in range(MAX_MESSAGE_BYTES))

    async def scenario(relay: Relay) -> dict[str, Any]:
        ws = await opened(relay, s)
        await hold(relay, ws, [frame(0)])
        await ws.send(big)
        await ws.send(frame(1))
        await send(ws, message(s, "close", 2, 1, {"reason": "end"}))
        assert (await receive(ws))["type"] == "closed"
        await ws.close()
        await eventually(lambda: relay.sessions() == 0)
        return relay.metrics()

    metrics = run(_with_relay(aws, scenario))

    end = (2 * FRAME + len(big)) // 2
    assert timeline(session_records(aws, s)) == [
        ("opened", 0), ("audio", 0, frame(0) + big + frame(1)), ("closed", end), ("disconnected", end)]
    assert (metrics["frames"], metrics["gaps"], metrics["errors"]) == (3, 0, 0)


def test_a_fragmented_frame_between_pending_frames_keeps_its_place(aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario(relay: Relay) -> None:
        ws = await opened(relay, s)
        await hold(relay, ws, [frame(0), frame(1)])
        await ws.send([frame(2)[:1000], frame(2)[1000:2999], frame(2)[2999:]])  # one message in three frames
        await hold(relay, ws, [frame(3)])
        await send(ws, message(s, "close", 2, 1, {"reason": "end"}))
        assert (await receive(ws))["type"] == "closed"
        await ws.close()

    run(_with_relay(aws, scenario))

    assert timeline(session_records(aws, s)) == [
        ("opened", 0), ("audio", 0, frames(0, 1, 2, 3)), ("closed", 4 * SAMPLES), ("disconnected", 4 * SAMPLES)]


def test_frames_stream_on_the_per_frame_path_again_after_an_open_that_continued_a_session(aws: Aws) -> None:
    old, new = str(uuid.uuid4()), str(uuid.uuid4())

    async def scenario(relay: Relay) -> int:
        ws_old = await opened(relay, old)
        ws = await open_socket(relay, new)
        continued = {"continuedSessions": [{"id": old, "serverseq": 1, "clientseq": 1}]}
        await send(ws, message(new, "open", 1, 0, open_parameters(*CALL_IDS) | continued))
        await ws.send(frame(0))  # while the lookup runs: these wait behind the open
        await ws.send(frame(1))
        assert (await receive(ws))["type"] == "opened"
        await ws.send(frame(2))
        await ws.send(frame(3))
        await eventually(lambda: relay.metrics()["frames"] + pending_frames(relay) == 4)
        held = pending_frames(relay)
        await send(ws, message(new, "close", 2, 1, {"reason": "end"}))
        assert (await receive(ws))["type"] == "closed"
        await ws.close()
        await ws_old.close()
        return held

    held = run(_with_relay(aws, scenario))

    assert held >= 2  # at least the frames after the opened were held on the per-frame path
    assert timeline(session_records(aws, new)) == [
        ("opened", 0), ("audio", 0, frames(0, 1, 2, 3)), ("closed", 4 * SAMPLES), ("disconnected", 4 * SAMPLES)]


def test_a_link_hands_its_frames_over_once_it_holds_the_pending_limit(aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario(relay: Relay) -> list[tuple[int, int]]:
        ws = await opened(relay, s)
        seen = []
        await hold(relay, ws, [frame(n) for n in range(MAX_PENDING_FRAMES - 1)])
        seen.append((relay.metrics()["frames"], pending_frames(relay)))
        await ws.send(frame(MAX_PENDING_FRAMES - 1))
        await eventually(lambda: relay.metrics()["frames"] == MAX_PENDING_FRAMES)
        seen.append((relay.metrics()["frames"], pending_frames(relay)))
        await hold(relay, ws, [frame(MAX_PENDING_FRAMES)])
        seen.append((relay.metrics()["frames"], pending_frames(relay)))
        await ws.close()
        return seen

    seen = run(_with_relay(aws, scenario))

    assert seen == [(0, MAX_PENDING_FRAMES - 1), (MAX_PENDING_FRAMES, 0), (MAX_PENDING_FRAMES, 1)]
    assert timeline(session_records(aws, s)) == [
        ("opened", 0), ("audio", 0, frames(*range(MAX_PENDING_FRAMES + 1))),
        ("disconnected", (MAX_PENDING_FRAMES + 1) * SAMPLES)]


def test_sessions_whose_frames_a_flush_takes_a_slice_at_a_time_keep_every_position(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    # One link per slice: the loop answers between links, while the others stream and talk.
    monkeypatch.setattr(relay_server, "TAKE_SLICE", 1)
    ids = [str(uuid.uuid4()) for _ in range(3)]

    async def one(relay: Relay, s: str, n: int) -> None:
        ws = await opened(relay, s)
        for k in range(12):
            await ws.send(frame(n * 16 + k))
            if k % 4 == 3:
                await send(ws, message(s, "ping", 2 + k // 4, 1))
                await asyncio.sleep(0.02)
        for _ in range(3):
            assert (await receive(ws))["type"] == "pong"
        await send(ws, message(s, "paused", 5, 1))
        await send(ws, message(s, "close", 6, 1, {"reason": "end"}))
        assert (await receive(ws))["type"] == "closed"
        await ws.close()

    async def scenario(relay: Relay) -> None:
        await asyncio.gather(*(one(relay, s, n) for n, s in enumerate(ids)))

    run(_with_relay(aws, scenario, flush_ms=10))

    for n, s in enumerate(ids):
        assert timeline(session_records(aws, s)) == [
            ("opened", 0), ("audio", 0, frames(*range(n * 16, n * 16 + 12))), ("paused", 12 * SAMPLES),
            ("closed", 12 * SAMPLES), ("disconnected", 12 * SAMPLES)]


# --- pings ------------------------------------------------------------------------------------


def test_a_ping_between_pending_frames_is_answered_exactly_and_moves_no_audio(aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario(relay: Relay) -> list[dict[str, Any]]:
        ws = await opened(relay, s)
        await hold(relay, ws, [frame(0), frame(1)])
        # A position far ahead of the audio, then one behind it: neither moves anything.
        await send(ws, message(s, "ping", 2, 1, {"rtt": "PT0.05S"}, position="PT90S"))
        replies = [await receive(ws)]
        await hold(relay, ws, [frame(2), frame(3), frame(4), frame(5)], behind=2)  # they wait across a ping
        await send(ws, message(s, "ping", 3, 1, position="PT0S"))
        replies.append(await receive(ws))
        await send(ws, message(s, "close", 4, 1, {"reason": "end"}))
        replies.append(await receive(ws))
        await ws.close()
        return replies

    replies = run(_with_relay(aws, scenario))

    assert replies == [
        {"version": "2", "type": "pong", "seq": 2, "clientseq": 2, "id": s, "parameters": {}},
        {"version": "2", "type": "pong", "seq": 3, "clientseq": 3, "id": s, "parameters": {}},
        {"version": "2", "type": "closed", "seq": 4, "clientseq": 4, "id": s, "parameters": {}},
    ]
    assert timeline(session_records(aws, s)) == [
        ("opened", 0), ("audio", 0, frames(0, 1, 2, 3, 4, 5)), ("closed", 6 * SAMPLES),
        ("disconnected", 6 * SAMPLES)]


@pytest.mark.parametrize(("change", "info"), [
    ({"seq": 5}, "ping.seq is 5 but the previous client seq was 1; expected 2"),
    ({"serverseq": 9}, "ping.serverseq is 9 but the last server seq sent was 1"),
    ({"id": "0f5e3a1c-1111-4222-8333-944445555666"},
     "ping.id 0f5e3a1c-1111-4222-8333-944445555666 does not match the session id {s}"),
], ids=["seq", "serverseq", "id"])
def test_a_ping_that_breaks_the_protocol_after_pending_frames_records_the_error_after_their_audio(
        aws: Aws, change: dict[str, Any], info: str) -> None:
    s = str(uuid.uuid4())
    info = info.format(s=s)

    async def scenario(relay: Relay) -> list[dict[str, Any]]:
        ws = await opened(relay, s)
        await hold(relay, ws, [frame(0), frame(1), frame(2)])
        await send(ws, message(s, "ping", 2, 1) | change)
        replies = [await receive(ws)]
        await ws.send(frame(3))  # after the error: ignored
        await send(ws, message(s, "close", 3, 2, {"reason": "error"}))
        replies.append(await receive(ws))
        await ws.close()
        return replies

    replies = run(_with_relay(aws, scenario))

    clientseq = 1 if "seq" in change else 2
    assert replies == [
        {"version": "2", "type": "disconnect", "seq": 2, "clientseq": clientseq, "id": s,
         "parameters": {"reason": "error", "info": info}},
        {"version": "2", "type": "closed", "seq": 3, "clientseq": 3, "id": s, "parameters": {}},
    ]
    records = session_records(aws, s)
    assert timeline(records) == [
        ("opened", 0), ("audio", 0, frames(0, 1, 2)), ("error", 3 * SAMPLES), ("closed", 3 * SAMPLES),
        ("disconnected", 3 * SAMPLES)]
    final = event(records, "disconnected").data
    assert (final["frames"], final["audioBytes"], final["error"]) == (3, 3 * FRAME, info)


def test_text_that_is_not_json_after_pending_frames_records_the_error_after_their_audio(aws: Aws) -> None:
    s = str(uuid.uuid4())
    info = "message is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"

    async def scenario(relay: Relay) -> list[dict[str, Any]]:
        ws = await opened(relay, s)
        await hold(relay, ws, [frame(0), frame(1)])
        await ws.send("{not json")
        replies = [await receive(ws)]
        await send(ws, message(s, "close", 3, 2, {"reason": "error"}))
        replies.append(await receive(ws))
        await ws.close()
        return replies

    replies = run(_with_relay(aws, scenario))

    assert replies == [
        {"version": "2", "type": "disconnect", "seq": 2, "clientseq": 1, "id": s,
         "parameters": {"reason": "error", "info": info}},
        {"version": "2", "type": "closed", "seq": 3, "clientseq": 3, "id": s, "parameters": {}},
    ]
    records = session_records(aws, s)
    assert timeline(records) == [
        ("opened", 0), ("audio", 0, frames(0, 1)), ("error", 2 * SAMPLES), ("closed", 2 * SAMPLES),
        ("disconnected", 2 * SAMPLES)]


# --- server actions and the end of the connection ---------------------------------------------


def test_control_actions_while_frames_are_pending_come_after_that_audio_numbered_with_the_replies(
        aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario(relay: Relay) -> tuple[list[Any], list[dict[str, Any]]]:
        ws = await opened(relay, s)
        results, received = [], []
        await hold(relay, ws, [frame(0), frame(1), frame(2)])
        results.append(relay.apply_action(s, Pause()))
        received.append(await receive(ws))
        await hold(relay, ws, [frame(3)])  # streamed before the client saw the pause
        await send(ws, message(s, "paused", 2, 2))
        await eventually(lambda: state_of(relay) == "PAUSED")
        results.append(relay.apply_action(s, Resume()))
        received.append(await receive(ws))
        await send(ws, message(s, "resumed", 3, 3, {"start": "PT0.8S", "discarded": "PT0S"}))
        await hold(relay, ws, [frame(4), frame(5)])
        results.append(relay.apply_action(s, SendEvent(ENTITIES)))
        received.append(await receive(ws))
        await send(ws, message(s, "close", 4, 4, {"reason": "end"}))
        received.append(await receive(ws))
        await ws.close()
        return [(r.delivered, r.code, r.state, r.message) for r in results], received

    results, received = run(_with_relay(aws, scenario))

    pause = {"version": "2", "type": "pause", "seq": 2, "clientseq": 1, "id": s, "parameters": {}}
    resume = {"version": "2", "type": "resume", "seq": 3, "clientseq": 2, "id": s, "parameters": {}}
    sent_event = {"version": "2", "type": "event", "seq": 4, "clientseq": 3, "id": s,
                  "parameters": {"entities": ENTITIES}}
    assert results == [(True, "delivered", "ACTIVE", pause), (True, "delivered", "PAUSED", resume),
                       (True, "delivered", "ACTIVE", sent_event)]
    assert received == [pause, resume, sent_event,
                        {"version": "2", "type": "closed", "seq": 5, "clientseq": 4, "id": s, "parameters": {}}]
    records = session_records(aws, s)
    assert timeline(records) == [
        ("opened", 0),
        ("audio", 0, frames(0, 1, 2)),
        ("pausing", 3 * SAMPLES),
        ("audio", 3 * SAMPLES, frames(3)),
        ("paused", 4 * SAMPLES),
        ("resuming", 4 * SAMPLES),
        ("resumed", 4 * SAMPLES),
        ("audio", 4 * SAMPLES, frames(4, 5)),
        ("event", 6 * SAMPLES),
        ("closed", 6 * SAMPLES),
        ("disconnected", 6 * SAMPLES),
    ]
    assert [event(records, name).data["seq"] for name in ("pausing", "resuming", "event")] == [2, 3, 4]
    assert event(records, "paused").data == {"initiator": "server"}


def test_a_socket_dropped_with_frames_pending_delivers_them_then_disconnected_last(aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario(relay: Relay) -> None:
        ws = await opened(relay, s)
        await hold(relay, ws, [frame(n) for n in range(5)])
        ws.transport.abort()  # no close frame: the connection is simply lost
        await eventually(lambda: relay.sessions() == 0)

    run(_with_relay(aws, scenario))

    records = session_records(aws, s)
    assert timeline(records) == [("opened", 0), ("audio", 0, frames(*range(5))), ("disconnected", 5 * SAMPLES)]
    final = event(records, "disconnected").data
    assert {k: final[k] for k in ("outcome", "statusCode", "frames", "audioBytes", "position")} == {
        "outcome": "abandoned", "statusCode": 1006, "frames": 5, "audioBytes": 5 * FRAME, "position": 5 * SAMPLES}


def test_the_drains_reconnect_comes_after_the_frames_pending_when_it_is_sent(aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario() -> list[dict[str, Any]]:
        async with quick_relay(relay_service(aws), flush_ms=NO_FLUSH_MS, drain_s=5) as relay:
            ws = await opened(relay, s)
            await hold(relay, ws, [frame(0), frame(1)])
            drain = asyncio.create_task(relay.drain())
            replies = [await receive(ws)]
            await send(ws, message(s, "close", 2, 2, {"reason": "reconnect"}))
            replies.append(await receive(ws))
            await ws.close()
            await drain
            return replies

    replies = run(scenario())

    assert replies == [
        {"version": "2", "type": "reconnect", "seq": 2, "clientseq": 1, "id": s,
         "parameters": {"info": "server task stopping: continue on a new connection"}},
        {"version": "2", "type": "closed", "seq": 3, "clientseq": 2, "id": s, "parameters": {}},
    ]
    assert timeline(session_records(aws, s)) == [
        ("opened", 0), ("audio", 0, frames(0, 1)), ("reconnecting", 2 * SAMPLES), ("closed", 2 * SAMPLES),
        ("disconnected", 2 * SAMPLES)]


def test_the_shutdown_disconnect_comes_after_the_frames_pending_when_it_is_sent(aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario() -> dict[str, Any]:
        async with quick_relay(relay_service(aws), flush_ms=NO_FLUSH_MS, drain_s=0, close_wait_s=0.2) as relay:
            ws = await opened(relay, s)
            await hold(relay, ws, [frame(0), frame(1)])
            await relay.drain()
            return await receive(ws)

    told = run(scenario())

    assert told == {"version": "2", "type": "disconnect", "seq": 2, "clientseq": 1, "id": s,
                    "parameters": {"reason": "completed", "info": "server shutting down"}}
    records = session_records(aws, s)
    assert timeline(records) == [
        ("opened", 0), ("audio", 0, frames(0, 1)), ("disconnecting", 2 * SAMPLES), ("disconnected", 2 * SAMPLES)]


def test_records_kinesis_refuses_for_a_while_keep_their_order_and_positions(aws: Aws) -> None:
    kinesis = boto3.client("kinesis", region_name=REGION, config=Config(retries={"total_max_attempts": 1}))
    faults = Faults(call_error=lambda call: (THROUGHPUT, 400) if call <= 3 else None)
    faults.install(kinesis)
    s = str(uuid.uuid4())

    async def scenario() -> dict[str, Any]:
        async with quick_relay(relay_service(aws, kinesis), flush_ms=NO_FLUSH_MS) as relay:
            ws = await opened(relay, s)
            await hold(relay, ws, [frame(0), frame(1)])
            await send(ws, message(s, "paused", 2, 1))
            await send(ws, message(s, "resumed", 3, 1, {"start": "PT0.4S", "discarded": "PT0S"}))
            await hold(relay, ws, [frame(2)])
            await send(ws, message(s, "close", 4, 1, {"reason": "end"}))
            assert (await receive(ws))["type"] == "closed"
            await ws.close()
        return relay.metrics()

    metrics = run(scenario())

    assert timeline(session_records(aws, s)) == [
        ("opened", 0), ("audio", 0, frames(0, 1)), ("paused", 2 * SAMPLES), ("resumed", 2 * SAMPLES),
        ("audio", 2 * SAMPLES, frames(2)), ("closed", 3 * SAMPLES), ("disconnected", 3 * SAMPLES)]
    assert metrics["records_requeued"] > 0 and (metrics["gaps"], metrics["dropped"]) == (0, 0)
    assert faults.calls > 3


def test_records_left_over_when_a_call_returns_go_at_once_and_the_frames_since_the_tick_wait_for_the_next(
        aws: Aws) -> None:
    # One call at a time, and the first one (the first session's opened) held: at the second
    # tick the other session's records are left over. When the held call returns they go at
    # once; the frames that arrived since that tick stay pending and become one record with
    # the ones that follow, at the next tick.
    kinesis = boto3.client("kinesis", region_name=REGION, config=Config(retries={"total_max_attempts": 1}))
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def hold_the_first_call(params: dict[str, Any], **_: Any) -> None:
        calls.append(len(params["Records"]))
        if len(calls) == 1:
            entered.set()
            release.wait(10)

    kinesis.meta.events.register("before-parameter-build.kinesis.PutRecords", hold_the_first_call)
    first, s = str(uuid.uuid4()), str(uuid.uuid4())

    async def scenario(relay: Relay) -> int:
        other = await opened(relay, first)
        await asyncio.to_thread(entered.wait, 10)
        ws = await opened(relay, s)
        for n in range(2):
            await ws.send(frame(n))
        await eventually(lambda: relay.metrics()["frames"] == 2)  # the second tick took them
        await hold(relay, ws, [frame(2), frame(3)])
        release.set()
        await eventually(lambda: len(calls) == 2)
        await asyncio.sleep(0.05)
        still_pending = pending_frames(relay)
        await ws.send(frame(4))
        await eventually(lambda: relay.metrics()["frames"] == 5)
        for socket, session_id in ((ws, s), (other, first)):
            await send(socket, message(session_id, "close", 2, 1, {"reason": "end"}))
            assert (await receive(socket))["type"] == "closed"
            await socket.close()
        return still_pending

    still_pending = run(_with_relay(aws, scenario, kinesis=kinesis, flush_ms=1000, max_inflight=1))

    assert still_pending == 2
    assert calls[:2] == [1, 2]  # the first session's opened; then the other's opened and first audio
    assert [(record.position, record.audio) for record in audio_of(session_records(aws, s))] == [
        (0, frames(0, 1)), (2 * SAMPLES, frames(2, 3, 4))]


# --- the memory bound -------------------------------------------------------------------------


def test_pending_frames_that_only_partly_fit_in_the_buffer_keep_what_fits_and_one_gap_covers_the_rest(
        aws: Aws) -> None:
    s = str(uuid.uuid4())
    size = 8000  # 0.5 s of stereo PCMU; the opened record takes well under half a frame
    big = [bytes([n]) * size for n in range(6)]

    async def scenario() -> dict[str, Any]:
        async with quick_relay(relay_service(aws), flush_ms=NO_FLUSH_MS, max_buffer_bytes=3 * size + size // 2,
                               max_pause_s=0.05) as relay:
            ws = await opened(relay, s)
            await hold(relay, ws, big)
            await send(ws, message(s, "close", 2, 1, {"reason": "end"}))
            assert (await receive(ws))["type"] == "closed"
            await ws.close()
            await eventually(lambda: relay.sessions() == 0)
            return relay.metrics()

    metrics = run(scenario())

    samples = size // 2
    records = session_records(aws, s)
    assert timeline(records) == [
        ("opened", 0), ("audio", 0, b"".join(big[:3])), ("gap", 6 * samples), ("closed", 6 * samples),
        ("disconnected", 6 * samples)]
    assert event(records, "gap").data == {"start": 3 * samples, "samples": 3 * samples, "frames": 3,
                                          "reason": "relay buffer full"}
    assert (metrics["dropped"], metrics["dropped_samples"], metrics["dropped_bytes"]) == (3, 3 * samples, 3 * size)
    assert (metrics["frames"], metrics["gaps"]) == (6, 1)


async def _with_relay(aws: Aws, body: Any, **options: Any) -> Any:
    service = relay_service(aws, options.pop("kinesis", None))
    async with quick_relay(service, flush_ms=options.pop("flush_ms", NO_FLUSH_MS), **options) as relay:
        return await body(relay)
