"""The relay over real sockets, against moto: the same protocol as the Lambda path, audio
batched into Kinesis, no silent loss under Kinesis faults or a full buffer, drain on SIGTERM,
/health and /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from audiohook.aws.service import AudioHookService
from audiohook.aws.stream import KinesisWriter
from audiohook.aws.wiring import build_service, poster_for_endpoint
from audiohook.records import AUDIO_MAGIC, AudioRecord, LifecycleRecord, decode_record
from audiohook.relay.server import Relay
from audiohook.tools.client import GENESYS_USER_AGENT, call, probe, upgrade_headers
from audiohook.tools.export import rebuild_session
from audiohook.tools.wav import Audio, AudioSource, mulaw_decode
from conftest import API_KEY, CLIENT_SECRET, ORG_ID, REGION, REPO, Aws, Client, load_jsonl, open_parameters
from faults import Faults

T = TypeVar("T")
CALL_IDS = ("4c3d4d4e-8f5a-4f43-9b0c-1a2b3c4d5e6f", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
FRAME = 3200  # 200 ms of stereo PCMU
SAMPLES = 1600
THROUGHPUT = "ProvisionedThroughputExceededException"
OTHER_ORG_ID = "11111111-2222-4333-8444-555555555555"


def run(coroutine: Awaitable[T], timeout_s: float = 30) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, timeout_s))  # type: ignore[arg-type]


async def eventually(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def relay_service(aws: Aws, kinesis: Any = None) -> AudioHookService:
    """The service as the relay gets it; a Kinesis writer with quick retries for fault tests."""
    poster_for_endpoint.cache_clear()
    kinesis = kinesis or aws.kinesis
    service = build_service(aws.settings, dynamodb=aws.dynamodb, kinesis=kinesis)
    service.records = KinesisWriter(kinesis, aws.settings.audio_stream, max_attempts=2, base_delay_s=0.001)
    return service


@pytest.fixture
def kinesis(aws: Aws) -> Any:
    """A Kinesis client without botocore retries, for fault injection."""
    return boto3.client("kinesis", region_name=REGION, config=Config(retries={"total_max_attempts": 1}))


def quick_relay(service: AudioHookService, **options: Any) -> Relay:
    return Relay(service, flush_ms=options.pop("flush_ms", 20), close_wait_s=options.pop("close_wait_s", 2),
                 **options)


async def open_socket(relay: Relay, session_id: str, *, path: str = "/", secret: str = CLIENT_SECRET,
                      api_key: str = API_KEY) -> ClientConnection:
    url = relay.url.rstrip("/") + path
    headers = upgrade_headers(url, api_key, secret, organization_id=ORG_ID, session_id=session_id,
                              correlation_id=str(uuid.uuid4()), now=time.time())
    return await connect(url, additional_headers=headers, user_agent_header=GENESYS_USER_AGENT,
                         compression=None, ping_interval=None)


async def receive(ws: ClientConnection, timeout_s: float = 5) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


async def http_get(url: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    return await asyncio.to_thread(get)


def http_url(relay: Relay, path: str) -> str:
    return f"http://127.0.0.1:{relay.port}{path}"


def message(session_id: str, type: str, seq: int, serverseq: int, parameters: dict[str, Any] | None = None,
            **overrides: Any) -> dict[str, Any]:
    return {"version": "2", "id": session_id, "type": type, "seq": seq, "serverseq": serverseq,
            "position": "PT0S", "parameters": parameters or {}} | overrides


def session_records(aws: Aws, session_id: str) -> list[AudioRecord | LifecycleRecord]:
    return [record for record in map(decode_record, aws.stream_records()) if record.session_id == session_id]


def audio_of(records: list[AudioRecord | LifecycleRecord]) -> list[AudioRecord]:
    return sorted((r for r in records if isinstance(r, AudioRecord)), key=lambda r: r.position)


def lifecycle_of(records: list[AudioRecord | LifecycleRecord]) -> list[LifecycleRecord]:
    return [r for r in records if isinstance(r, LifecycleRecord)]


def frame(n: int, size: int = FRAME) -> bytes:
    return bytes([n % 256]) * size


# --- the same protocol scenarios through both fronts -----------------------------------------

Step = dict[str, Any] | str | bytes


def scenario_steps(name: str, s: str) -> list[Step]:
    call_open = open_parameters(*CALL_IDS)
    steps: dict[str, list[Step]] = {
        "probe": [message(s, "open", 1, 0, open_parameters()), message(s, "close", 2, 1, {"reason": "end"})],
        "control messages and audio": [
            message(s, "open", 1, 0, call_open), frame(0),
            message(s, "ping", 2, 1, {"rtt": "PT0.05S"}), frame(1),
            message(s, "update", 3, 2, {"language": "de-DE"}),
            message(s, "paused", 4, 3),
            message(s, "resumed", 5, 3, {"start": "PT0.4S", "discarded": "PT1S"}), frame(2),
            message(s, "discarded", 6, 3, {"start": "PT1.6S", "discarded": "PT0.2S"}), frame(3),
            message(s, "close", 7, 3, {"reason": "end"}),
        ],
        "audio before open": [
            frame(0), message(s, "open", 1, 1, call_open), message(s, "close", 2, 1, {"reason": "error"}),
        ],
        "frame of a bad length": [
            message(s, "open", 1, 0, call_open), frame(0), frame(1, FRAME + 1), frame(2),
            message(s, "close", 2, 2, {"reason": "end"}),
        ],
        "audio while paused": [
            message(s, "open", 1, 0, call_open), message(s, "paused", 2, 1), frame(0),
            message(s, "close", 3, 2, {"reason": "end"}),
        ],
        "seq reused": [
            message(s, "open", 1, 0, call_open), message(s, "ping", 1, 1),
            message(s, "close", 2, 2, {"reason": "end"}),
        ],
        "invalid json": [
            message(s, "open", 1, 0, call_open), "{not json", message(s, "close", 2, 2, {"reason": "error"}),
        ],
        "organization mismatch": [
            message(s, "open", 1, 0, open_parameters() | {"organizationId": OTHER_ORG_ID}),
            message(s, "close", 2, 1, {"reason": "disconnect"}),
        ],
    }
    return steps[name]


SCENARIOS = ["probe", "control messages and audio", "audio before open", "frame of a bad length",
             "audio while paused", "seq reused", "invalid json", "organization mismatch"]


def through_lambda_path(aws: Aws, service: AudioHookService, steps: list[Step], session_id: str) -> list[dict]:
    client = Client(service, session_id=session_id)
    assert client.connect() == {"statusCode": 200}
    for step in steps:
        client.send(step)
    client.disconnect()
    return aws.posted(client.connection.connection_id)


async def through_relay(relay: Relay, steps: list[Step], session_id: str) -> list[dict[str, Any]]:
    ws = await open_socket(relay, session_id)
    for step in steps:
        await ws.send(json.dumps(step) if isinstance(step, dict) else step)
    received = []
    while not received or received[-1]["type"] != "closed":
        received.append(await receive(ws))
    await ws.close()
    return received


def comparable(records: list[AudioRecord | LifecycleRecord]) -> list[tuple[Any, ...]]:
    return [(r.event, r.position, r.probe, r.data) for r in lifecycle_of(records)]


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_relay_answers_like_the_lambda_path(aws: Aws, service: AudioHookService, name: str) -> None:
    lambda_id, relay_id = str(uuid.uuid4()), str(uuid.uuid4())
    expected = through_lambda_path(aws, service, scenario_steps(name, lambda_id), lambda_id)

    async def scenario() -> list[dict[str, Any]]:
        async with quick_relay(relay_service(aws)) as relay:
            return await through_relay(relay, scenario_steps(name, relay_id), relay_id)

    got = run(scenario())

    assert [m | {"id": lambda_id} for m in got] == expected
    by_lambda, by_relay = session_records(aws, lambda_id), session_records(aws, relay_id)
    assert comparable(by_relay) == comparable(by_lambda)
    assert [(r.position, r.audio) for r in audio_of(by_relay)] == [(r.position, r.audio) for r in audio_of(by_lambda)] \
        or b"".join(r.audio for r in audio_of(by_relay)) == b"".join(r.audio for r in audio_of(by_lambda))


def test_a_bad_frame_gets_exactly_one_disconnect_naming_the_problem(aws: Aws) -> None:
    session_id = str(uuid.uuid4())
    got = run(_with_relay(aws, lambda relay: through_relay(
        relay, scenario_steps("frame of a bad length", session_id), session_id)))

    assert [m["type"] for m in got] == ["opened", "disconnect", "closed"]
    assert got[1]["parameters"] == {
        "reason": "error",
        "info": "audio frame of 3201 bytes is not a whole number of samples: stereo PCMU needs a multiple of 2 bytes",
    }
    assert (got[1]["seq"], got[1]["clientseq"]) == (2, 1)


def test_audio_before_open_gets_one_disconnect(aws: Aws) -> None:
    session_id = str(uuid.uuid4())
    got = run(_with_relay(aws, lambda relay: through_relay(
        relay, scenario_steps("audio before open", session_id), session_id)))

    assert got == [
        {"version": "2", "type": "disconnect", "seq": 1, "clientseq": 0, "id": session_id,
         "parameters": {"reason": "error", "info": "audio frame received before open"}},
        {"version": "2", "type": "closed", "seq": 2, "clientseq": 2, "id": session_id, "parameters": {}},
    ]


async def _with_relay(aws: Aws, body: Callable[[Relay], Awaitable[T]], **options: Any) -> T:
    async with quick_relay(relay_service(aws), **options) as relay:
        return await body(relay)


# --- one connection, one ordered stream (the relay's own sequencing) --------------------------


def test_a_message_repeating_the_previous_seq_is_a_protocol_error_on_the_relay(aws: Aws) -> None:
    # A TCP stream cannot duplicate: the very same ping sent twice is a wrong seq, not a duplicate.
    s = str(uuid.uuid4())
    ping = message(s, "ping", 2, 1)
    steps: list[Step] = [message(s, "open", 1, 0, open_parameters(*CALL_IDS)), ping, ping,
                         message(s, "close", 3, 3, {"reason": "error"})]

    got = run(_with_relay(aws, lambda relay: through_relay(relay, steps, s)))

    assert [(m["type"], m["seq"], m["clientseq"]) for m in got] == [
        ("opened", 1, 1), ("pong", 2, 2), ("disconnect", 3, 2), ("closed", 4, 3)]
    assert got[2]["parameters"] == {"reason": "error",
                                    "info": "ping.seq is 2 but the previous client seq was 2; expected 3"}
    errors = [r for r in lifecycle_of(session_records(aws, s)) if r.event == "error"]
    assert [e.data["info"] for e in errors] == ["ping.seq is 2 but the previous client seq was 2; expected 3"]


def test_a_ping_flood_gets_every_pong_in_order(aws: Aws) -> None:
    s = str(uuid.uuid4())

    async def scenario(relay: Relay) -> list[dict[str, Any]]:
        ws = await open_socket(relay, s)
        await ws.send(json.dumps(message(s, "open", 1, 0, open_parameters(*CALL_IDS))))
        replies = [await receive(ws)]
        for seq in range(2, 202):  # 200 pings back to back, never waiting for a pong
            await ws.send(json.dumps(message(s, "ping", seq, 1)))
        replies += [await receive(ws) for _ in range(200)]
        await ws.send(json.dumps(message(s, "close", 202, 201, {"reason": "end"})))
        replies.append(await receive(ws))
        await ws.close()
        return replies

    got = run(_with_relay(aws, scenario))

    assert [(m["type"], m["seq"], m["clientseq"]) for m in got] == (
        [("opened", 1, 1)] + [("pong", n, n) for n in range(2, 202)] + [("closed", 202, 202)])


def test_a_burst_then_a_dropped_socket_keeps_every_frame_in_place_and_ends_with_disconnected(aws: Aws) -> None:
    s = str(uuid.uuid4())
    frames = [frame(n) for n in range(50)]  # 10 s of audio sent as fast as the socket takes it

    async def scenario(relay: Relay) -> Relay:
        ws = await open_socket(relay, s)
        await ws.send(json.dumps(message(s, "open", 1, 0, open_parameters(*CALL_IDS))))
        await receive(ws)
        for n, data in enumerate(frames):
            await ws.send(data)
            if n % 10 == 9:
                await ws.send(json.dumps(message(s, "ping", 2 + n // 10, 1)))
        for _ in range(5):
            assert (await receive(ws))["type"] == "pong"
        ws.transport.abort()  # no close frame: the connection is simply lost
        await eventually(lambda: relay.sessions() == 0)
        return relay

    metrics = run(_with_relay(aws, scenario, flush_ms=50)).metrics()  # once stopped: everything flushed

    records = session_records(aws, s)
    audio = audio_of(records)
    assert b"".join(r.audio for r in audio) == b"".join(frames)
    assert [r.position for r in audio] == [sum(a.sample_count for a in audio[:i]) for i in range(len(audio))]
    assert isinstance(records[-1], LifecycleRecord) and records[-1].event == "disconnected"
    assert {k: records[-1].data[k] for k in ("frames", "audioBytes", "position", "statusCode", "outcome")} == {
        "frames": 50, "audioBytes": 50 * FRAME, "position": 50 * SAMPLES, "statusCode": 1006, "outcome": "abandoned"}
    assert metrics["frames_delivered"] == 50 and metrics["gaps"] == 0


def test_a_session_id_used_again_gets_a_queue_of_its_own(aws: Aws) -> None:
    # The first connection's records still wait for Kinesis when the second one (same session
    # id, other media) streams: each keeps its own layout and positions.
    s = str(uuid.uuid4())
    mono = open_parameters(*CALL_IDS) | {"media": [
        {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}]}

    async def one(relay: Relay, parameters: dict[str, Any], data: bytes) -> None:
        ws = await open_socket(relay, s)
        await ws.send(json.dumps(message(s, "open", 1, 0, parameters)))
        await receive(ws)
        await ws.send(data)
        await ws.send(json.dumps(message(s, "close", 2, 1, {"reason": "end"})))
        await receive(ws)
        await ws.close()

    async def released(deadline_s: float = 5.0) -> None:
        """A session id is live until its connection has ended on the relay (409 meanwhile)."""
        marker = {"pk": {"S": f"session#{s}"}}
        for _ in range(int(deadline_s / 0.02)):
            if "Item" not in aws.dynamodb.get_item(TableName=aws.settings.sessions_table, Key=marker):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the first connection never released its session id")

    async def scenario(relay: Relay) -> None:
        await one(relay, open_parameters(*CALL_IDS), frame(1))
        await released()
        await one(relay, mono, frame(2))

    run(_with_relay(aws, scenario, flush_ms=1000))

    audio = [r for r in session_records(aws, s) if isinstance(r, AudioRecord)]
    assert [(r.position, r.channels, r.audio) for r in audio] == [
        (0, ("external", "internal"), frame(1)), (0, ("external",), frame(2))]
    events = [r.event for r in lifecycle_of(session_records(aws, s))]
    assert events == ["opened", "closed", "disconnected"] * 2


# --- probe, upgrade ---------------------------------------------------------------------------


def test_the_probe_fixture_is_answered_exactly(aws: Aws) -> None:
    exchange = load_jsonl("probe-exchange-ok.jsonl")
    session_id = exchange[0]["message"]["id"]
    steps: list[Step] = [line["message"] for line in exchange if line["direction"] == "client"]
    expected = [line["message"] for line in exchange if line["direction"] == "server"]

    got = run(_with_relay(aws, lambda relay: through_relay(relay, steps, session_id)))

    assert got == expected


def test_the_genesys_probe_passes_on_any_path(aws: Aws) -> None:
    async def scenario() -> Any:
        async with quick_relay(relay_service(aws)) as relay:
            return await probe(relay.url + "audiohook/v2?tenant=a", API_KEY, CLIENT_SECRET, organization_id=ORG_ID)

    report = run(scenario())

    assert report.passed, report.to_text()


@pytest.mark.parametrize(("api_key", "secret"), [
    (API_KEY, "d3Jvbmcgc2VjcmV0IGtleSwgbG9uZyBlbm91Z2gh"),  # wrong client secret
    ("unknown-key", CLIENT_SECRET),
    (API_KEY, ""),  # unsigned, for a key that has a secret
], ids=["wrong secret", "unknown key", "unsigned"])
def test_an_unauthenticated_upgrade_gets_401_and_leaves_nothing(aws: Aws, api_key: str, secret: str) -> None:
    async def scenario() -> tuple[int, dict[str, Any]]:
        async with quick_relay(relay_service(aws)) as relay:
            with pytest.raises(InvalidStatus) as refused:
                await open_socket(relay, str(uuid.uuid4()), secret=secret, api_key=api_key)
            return refused.value.response.status_code, relay.metrics()

    status, metrics = run(scenario())

    assert status == 401
    assert metrics["upgrades_rejected"] == 1 and metrics["sessions_total"] == 0
    items = aws.dynamodb.scan(TableName=aws.settings.sessions_table)["Items"]
    assert not [item for item in items if item["pk"]["S"].startswith("conn#")]


def test_a_signature_for_another_path_is_refused(aws: Aws) -> None:
    async def scenario() -> int:
        async with quick_relay(relay_service(aws)) as relay:
            url = relay.url + "signed-path"
            headers = upgrade_headers(url, API_KEY, CLIENT_SECRET, organization_id=ORG_ID,
                                      session_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()), now=time.time())
            with pytest.raises(InvalidStatus) as refused:
                await connect(relay.url + "other-path", additional_headers=headers)
            return refused.value.response.status_code

    assert run(scenario()) == 401


# --- audio to Kinesis -------------------------------------------------------------------------


def test_a_call_lands_in_kinesis_batched_and_export_returns_its_samples(aws: Aws) -> None:
    # PCMU codes decoded to PCM are exactly representable: the export must hold these samples.
    codes = bytes((n * 37) % 256 for n in range(8000 * 2 * 2))
    samples = mulaw_decode(codes)
    source = AudioSource(Audio(8000, (samples[0::2], samples[1::2])))

    async def scenario() -> Any:
        async with quick_relay(relay_service(aws), flush_ms=200) as relay:
            report = await call(relay.url, API_KEY, CLIENT_SECRET, audio=source, speed=20, ping_interval_s=0.5,
                                organization_id=ORG_ID, language_update=(1.0, "fr-FR"))
            return report, relay.metrics()

    report, metrics = run(scenario())

    assert report.passed, report.to_text()
    records = session_records(aws, report.session_id)
    audio = audio_of(records)
    assert sum(r.frame_count for r in audio) == report.audio_frames_sent == 10
    assert len(audio) < report.audio_frames_sent  # several frames per record
    assert [r.position for r in audio] == [sum(a.sample_count for a in audio[:i]) for i in range(len(audio))]
    assert b"".join(r.audio for r in audio) == codes
    export = rebuild_session(aws.stream_records(), report.session_id)
    assert export.audio is not None and export.silent_samples == 0
    assert export.audio.channels == (samples[0::2], samples[1::2])
    assert [r.event for r in lifecycle_of(records)] == ["opened", "updated", "closed", "disconnected"]
    assert metrics["frames"] == 10 and metrics["gaps"] == 0 and metrics["dropped"] == 0


def test_many_sessions_share_putrecords_calls(aws: Aws) -> None:
    async def one(relay: Relay, n: int) -> str:
        session_id = str(uuid.uuid4())
        ws = await open_socket(relay, session_id)
        await ws.send(json.dumps(message(session_id, "open", 1, 0, open_parameters(*CALL_IDS))))
        await receive(ws)
        for k in range(3):
            await ws.send(frame(n + k))
        await ws.send(json.dumps(message(session_id, "close", 2, 1, {"reason": "end"})))
        await receive(ws)
        await ws.close()
        return session_id

    async def scenario() -> tuple[list[str], dict[str, Any]]:
        async with quick_relay(relay_service(aws), flush_ms=200) as relay:
            ids = await asyncio.gather(*(one(relay, n) for n in range(8)))
        return ids, relay.metrics()

    ids, metrics = run(scenario())

    for n, session_id in enumerate(ids):
        audio = audio_of(session_records(aws, session_id))
        assert b"".join(r.audio for r in audio) == b"".join(frame(n + k) for k in range(3))
    # 8 sessions x (3 frames + 4 lifecycle records): far fewer calls than records.
    assert metrics["kinesis_calls"] < metrics["records"]
    assert metrics["frames_delivered"] == 24


async def stream_call(relay: Relay, session_id: str, frames: int, size: int = FRAME,
                      before_close: Callable[[], Awaitable[None]] | None = None) -> list[dict[str, Any]]:
    ws = await open_socket(relay, session_id)
    await ws.send(json.dumps(message(session_id, "open", 1, 0, open_parameters(*CALL_IDS))))
    replies = [await receive(ws)]
    for n in range(frames):
        await ws.send(frame(n, size))
    if before_close is not None:
        await before_close()
    await ws.send(json.dumps(message(session_id, "close", 2, 1, {"reason": "end"})))
    replies.append(await receive(ws))
    await ws.close()
    return replies


def test_kinesis_throttling_and_partial_failures_lose_no_audio(aws: Aws, kinesis: Any) -> None:
    # Calls 1-2: every other entry throttled (the writer retries once, then gives up on them);
    # calls 3-5: the whole call throttled. The relay queues what the writer gave up on again.
    faults = Faults(
        entry_errors=lambda call, index, data: THROUGHPUT if call <= 2 and index % 2 == 0 else None,
        call_error=lambda call: (THROUGHPUT, 400) if 3 <= call <= 5 else None,
    )
    faults.install(kinesis)
    session_id = str(uuid.uuid4())

    async def scenario() -> dict[str, Any]:
        async with quick_relay(relay_service(aws, kinesis), flush_ms=10) as relay:
            async def spread() -> None:
                await asyncio.sleep(0.05)
            ws_replies = await stream_call(relay, session_id, 12, before_close=spread)
            assert [m["type"] for m in ws_replies] == ["opened", "closed"]
        return relay.metrics()

    metrics = run(scenario())

    records = session_records(aws, session_id)
    audio = audio_of(records)
    assert b"".join(r.audio for r in audio) == b"".join(frame(n) for n in range(12))
    assert [r.position for r in audio] == [sum(a.sample_count for a in audio[:i]) for i in range(len(audio))]
    assert [r.event for r in lifecycle_of(records)] == ["opened", "closed", "disconnected"]
    assert metrics["records_requeued"] > 0 and metrics["kinesis_failed_entries"] > 0
    assert metrics["gaps"] == 0 and metrics["dropped"] == 0
    assert faults.calls > 5


def test_audio_kinesis_refuses_beyond_retries_is_recorded_as_a_gap(aws: Aws, kinesis: Any) -> None:
    down = threading.Event()
    down.set()
    faults = Faults(entry_errors=lambda call, index, data: "AccessDeniedException"
                    if down.is_set() and data.startswith(AUDIO_MAGIC) else None)
    faults.install(kinesis)
    session_id = str(uuid.uuid4())

    async def scenario() -> dict[str, Any]:
        async with quick_relay(relay_service(aws, kinesis), max_requeues=1) as relay:
            async def until_gapped() -> None:
                await eventually(lambda: relay.metrics()["gaps"] >= 1)
                down.clear()
            await stream_call(relay, session_id, 3, before_close=until_gapped)
        return relay.metrics()

    metrics = run(scenario())

    records = session_records(aws, session_id)
    gaps = [r for r in lifecycle_of(records) if r.event == "gap"]
    covered = sorted([(r.position, r.sample_count) for r in audio_of(records)]
                     + [(g.data["start"], g.data["samples"]) for g in gaps])
    assert gaps and all(g.data["reason"] == "Kinesis: AccessDeniedException" for g in gaps)
    assert sum(samples for _, samples in covered) == 3 * SAMPLES  # every sample: delivered or a gap
    assert [start for start, _ in covered] == [sum(n for _, n in covered[:i]) for i in range(len(covered))]
    assert metrics["dropped"] == sum(g.data["frames"] for g in gaps) and metrics["gaps"] == len(gaps)


def test_a_full_buffer_is_reported_as_a_gap_never_silently(aws: Aws, kinesis: Any) -> None:
    entered, release = threading.Event(), threading.Event()

    def hold(**_: Any) -> None:  # Kinesis hangs until the test lets it answer
        entered.set()
        release.wait(10)

    kinesis.meta.events.register("before-call.kinesis.PutRecords", hold)
    session_id = str(uuid.uuid4())

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with quick_relay(relay_service(aws, kinesis), max_buffer_bytes=4 * FRAME, max_pause_s=0.05) as relay:
            async def overflow() -> None:
                await eventually(lambda: relay.metrics()["dropped"] >= 1)
                release.set()
            ws = await open_socket(relay, session_id)
            await ws.send(json.dumps(message(session_id, "open", 1, 0, open_parameters(*CALL_IDS))))
            await receive(ws)
            await asyncio.to_thread(entered.wait, 5)  # the opened record's call is hanging
            for n in range(8):
                await ws.send(frame(n))
            await overflow()
            during = relay.metrics()
            await ws.send(json.dumps(message(session_id, "close", 2, 1, {"reason": "end"})))
            await receive(ws)
            await ws.close()
        return during, relay.metrics()

    during, metrics = run(scenario())

    assert during["backpressure_pauses"] >= 1
    records = session_records(aws, session_id)
    gaps = [r for r in lifecycle_of(records) if r.event == "gap"]
    assert gaps and all(g.data["reason"] == "relay buffer full" for g in gaps)
    covered = sorted([(r.position, r.sample_count) for r in audio_of(records)]
                     + [(g.data["start"], g.data["samples"]) for g in gaps])
    assert sum(samples for _, samples in covered) == 8 * SAMPLES  # every sample: delivered or a gap
    assert [start for start, _ in covered] == [sum(n for _, n in covered[:i]) for i in range(len(covered))]
    assert metrics["dropped"] == sum(g.data["frames"] for g in gaps) >= 1
    assert metrics["frames_delivered"] + metrics["dropped"] == 8


# --- health, metrics, drain -------------------------------------------------------------------


def test_health_and_metrics(aws: Aws) -> None:
    async def scenario() -> tuple[tuple[int, str], tuple[int, str], tuple[int, str]]:
        async with quick_relay(relay_service(aws)) as relay:
            health = await http_get(http_url(relay, "/health"))
            session_id = str(uuid.uuid4())
            await stream_call(relay, session_id, 4)
            await eventually(lambda: relay.metrics()["frames_delivered"] == 4)
            metrics = await http_get(http_url(relay, "/metrics"))
            plain = await http_get(http_url(relay, "/"))
        return health, metrics, plain

    health, (status, body), plain = run(scenario())

    assert health == (200, "ok\n")
    assert status == 200
    metrics = json.loads(body)
    assert metrics["status"] == "serving"
    assert (metrics["sessions_total"], metrics["frames"], metrics["bytes"]) == (1, 4, 4 * FRAME)
    assert metrics["records"] >= 2 and metrics["kinesis_calls"] >= 1
    assert (metrics["gaps"], metrics["dropped"], metrics["errors"]) == (0, 0, 0)
    assert metrics["delay_ms"]["count"] == 4 and metrics["delay_ms"]["p99"] is not None
    assert plain[0] == 426  # a plain GET that is not a WebSocket upgrade


def test_drain_asks_every_session_to_reconnect_refuses_new_ones_and_disconnects_the_rest_after_the_deadline(
        aws: Aws) -> None:
    staying, leaving = str(uuid.uuid4()), str(uuid.uuid4())

    async def scenario() -> dict[str, Any]:
        async with quick_relay(relay_service(aws), drain_s=1.5) as relay:
            sockets = {}
            for session_id in (staying, leaving):
                ws = sockets[session_id] = await open_socket(relay, session_id)
                await ws.send(json.dumps(message(session_id, "open", 1, 0, open_parameters(*CALL_IDS))))
                assert (await receive(ws))["type"] == "opened"
                await ws.send(frame(0))
            drain = asyncio.create_task(relay.drain())
            await eventually(lambda: relay.draining)
            health = await http_get(http_url(relay, "/health"))
            with pytest.raises(InvalidStatus) as refused:
                await open_socket(relay, str(uuid.uuid4()))
            # Every session is asked to move; one leaves within the grace period (reason reconnect)...
            told_to_move = {session_id: await receive(ws) for session_id, ws in sockets.items()}
            ws = sockets[leaving]
            await ws.send(json.dumps(message(leaving, "close", 2, 2, {"reason": "reconnect"})))
            assert (await receive(ws))["type"] == "closed"
            await ws.close()
            # ...the other is told to go once the deadline has passed, and closes.
            ws = sockets[staying]
            told = await receive(ws, timeout_s=5)
            await ws.send(json.dumps(message(staying, "close", 2, 3, {"reason": "disconnect"})))
            closed = await receive(ws)
            await ws.close()
            await drain
            return {"health": health, "refused": refused.value.response.status_code, "moved": told_to_move,
                    "told": told, "closed": closed, "metrics": relay.metrics()}

    got = run(scenario())

    assert got["health"] == (503, "draining\n")
    assert got["refused"] == 503
    assert got["moved"] == {session_id: {
        "version": "2", "type": "reconnect", "seq": 2, "clientseq": 1, "id": session_id,
        "parameters": {"info": "server task stopping: continue on a new connection"}} for session_id in (staying, leaving)}
    assert got["told"] == {"version": "2", "type": "disconnect", "seq": 3, "clientseq": 1, "id": staying,
                           "parameters": {"reason": "completed", "info": "server shutting down"}}
    assert (got["closed"]["type"], got["closed"]["seq"], got["closed"]["clientseq"]) == ("closed", 4, 2)
    assert got["metrics"]["upgrades_refused_draining"] == 1 and got["metrics"]["sessions"] == 0
    assert [r.event for r in lifecycle_of(session_records(aws, staying))] == [
        "opened", "reconnecting", "disconnecting", "closed", "disconnected"]
    assert [r.event for r in lifecycle_of(session_records(aws, leaving))] == [
        "opened", "reconnecting", "closed", "disconnected"]
    assert all(len(audio_of(session_records(aws, s))) == 1 for s in (staying, leaving))


def test_a_session_that_never_answers_the_disconnect_is_closed_and_finished(aws: Aws) -> None:
    session_id = str(uuid.uuid4())

    async def scenario() -> int | None:
        async with quick_relay(relay_service(aws), drain_s=0, close_wait_s=0.2) as relay:
            ws = await open_socket(relay, session_id)
            await ws.send(json.dumps(message(session_id, "open", 1, 0, open_parameters(*CALL_IDS))))
            await receive(ws)
            await relay.drain()
            assert (await receive(ws))["type"] == "disconnect"
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert run(scenario()) == 1001
    events = lifecycle_of(session_records(aws, session_id))
    assert [r.event for r in events] == ["opened", "disconnecting", "disconnected"]
    assert events[-1].data["statusCode"] == 1001


# --- the real process: python -m audiohook.relay.server, SIGTERM -------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_relay_process_drains_on_sigterm_and_exits_0(tmp_path: Any) -> None:
    from audiohook.local.embedded_aws import EmbeddedAws

    port = free_port()
    with EmbeddedAws(REPO / "template.yaml") as embedded:
        env = os.environ | embedded.env() | {
            "RELAY_PORT": str(port), "RELAY_DRAIN_S": "1", "POWERTOOLS_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(REPO / "layers" / "audiohook"),
        }
        log = (tmp_path / "relay.log").open("w")
        process = subprocess.Popen([sys.executable, "-m", "audiohook.relay.server"], env=env, stdout=log, stderr=log)
        try:
            got = run(_drain_the_process(process, port, embedded.demo.api_key, embedded.demo.client_secret), 60)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
        logs = (tmp_path / "relay.log").read_text()
        records = [decode_record(data) for _, data in _read(embedded)]
    assert got["health"] == (503, "draining\n")
    assert (got["moved"]["type"], got["moved"]["seq"]) == ("reconnect", 2)
    assert got["told"]["parameters"] == {"reason": "completed", "info": "server shutting down"}
    assert got["closed"]["type"] == "closed"
    events = [r.event for r in records if isinstance(r, LifecycleRecord) and r.session_id == got["session_id"]]
    assert events == ["opened", "reconnecting", "disconnecting", "closed", "disconnected"]
    assert any(isinstance(r, AudioRecord) and r.session_id == got["session_id"] for r in records)
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(line.get("message") == "relay drained" for line in lines)
    assert all("connection_id" in line for line in lines if line.get("message") == "session connected")


def _read(embedded: Any) -> list[tuple[str, bytes]]:
    from audiohook.aws.stream import read_stream

    return read_stream(embedded.client("kinesis"), embedded.resources.stream_name)


async def _drain_the_process(process: subprocess.Popen[bytes], port: int, api_key: str, secret: str) -> dict:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if (await http_get(base + "/health"))[0] == 200:
                break
        except OSError:
            pass
        assert process.poll() is None, "the relay exited early"
        assert time.monotonic() < deadline, "the relay did not come up"
        await asyncio.sleep(0.1)
    url = f"ws://127.0.0.1:{port}/"
    session_id = str(uuid.uuid4())
    headers = upgrade_headers(url, api_key, secret, organization_id=ORG_ID, session_id=session_id,
                              correlation_id=str(uuid.uuid4()), now=time.time())
    async with connect(url, additional_headers=headers, compression=None) as ws:
        await ws.send(json.dumps(message(session_id, "open", 1, 0, open_parameters(*CALL_IDS))))
        assert (await receive(ws))["type"] == "opened"
        for n in range(3):
            await ws.send(frame(n))
        process.send_signal(signal.SIGTERM)
        health = (0, "")
        for _ in range(50):
            health = await http_get(base + "/health")
            if health[0] == 503:
                break
            await asyncio.sleep(0.02)
        moved = await receive(ws, timeout_s=10)  # this client does not move: disconnected at the deadline
        told = await receive(ws, timeout_s=10)
        await ws.send(json.dumps(message(session_id, "close", 2, 3, {"reason": "disconnect"})))
        closed = await receive(ws)
    return {"health": health, "moved": moved, "told": told, "closed": closed, "session_id": session_id}


def test_an_open_continuing_a_session_is_checked_against_its_item_and_what_follows_it_waits_in_order(aws: Aws) -> None:
    old, new, stranger = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    other_conversation = "6f0c7a44-3c55-4a3e-9d3c-0b8a6f1c2e77"

    async def scenario() -> dict[str, Any]:
        async with quick_relay(relay_service(aws)) as relay:
            ws_old = await open_socket(relay, old)
            await ws_old.send(json.dumps(message(old, "open", 1, 0, open_parameters(*CALL_IDS))))
            assert (await receive(ws_old))["type"] == "opened"
            continued = {"continuedSessions": [{"id": old, "serverseq": 1, "clientseq": 1}]}
            ws_new = await open_socket(relay, new)
            # The open, then audio and a ping at once: applied after the lookup, in this order.
            await ws_new.send(json.dumps(message(new, "open", 1, 0, open_parameters(*CALL_IDS) | continued)))
            await ws_new.send(frame(1))
            await ws_new.send(json.dumps(message(new, "ping", 2, 1)))
            answers = [await receive(ws_new), await receive(ws_new)]
            ws_stranger = await open_socket(relay, stranger)
            await ws_stranger.send(json.dumps(message(
                stranger, "open", 1, 0, open_parameters(other_conversation, CALL_IDS[1]) | continued)))
            refused = await receive(ws_stranger)
            for ws in (ws_old, ws_new, ws_stranger):
                await ws.close()
            return {"answers": answers, "refused": refused}

    got = run(scenario())

    assert [(m["type"], m["seq"], m["clientseq"]) for m in got["answers"]] == [("opened", 1, 1), ("pong", 2, 2)]
    opened = next(r for r in lifecycle_of(session_records(aws, new)) if r.event == "opened")
    assert opened.data["continuedSessions"] == [{"id": old, "serverseq": 1, "clientseq": 1, "verified": True}]
    assert len(audio_of(session_records(aws, new))) == 1
    assert got["refused"] == {
        "version": "2", "type": "disconnect", "seq": 1, "clientseq": 1, "id": stranger,
        "parameters": {"reason": "error", "info": f"open.parameters.continuedSessions[0].id {old} belongs to "
                                                  f"conversation {CALL_IDS[0]}, not {other_conversation}"}}
