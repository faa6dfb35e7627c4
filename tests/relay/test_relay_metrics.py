"""The relay's CloudWatch metrics: one EMF document per interval (never one per frame), the
per-task gauges the scaling policy tracks, delay percentiles, Kinesis throttling."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config
from websockets.asyncio.client import connect

from audiohook.aws.stream import KinesisWriter
from audiohook.aws.wiring import build_service, poster_for_endpoint
from audiohook.relay.metrics import DELAY_QUANTILES, quantiles
from audiohook.relay.server import Relay
from audiohook.tools.client import upgrade_headers
from conftest import API_KEY, CLIENT_SECRET, ORG_ID, REGION, Aws, open_parameters
from faults import Faults

FRAME = 3200  # 200 ms of stereo PCMU


def test_quantiles_are_the_ranked_delays_of_the_interval() -> None:
    buckets = [0] * 300
    buckets[9], buckets[199] = 90, 10  # 90 delays of 9.x ms, 10 of 199.x ms
    values = quantiles(buckets)
    assert len(values) == len(DELAY_QUANTILES) == 99
    assert values == [10.0] * 90 + [200.0] * 9
    assert quantiles([0] * 300) == []


def emf(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


def values(documents: list[dict[str, Any]], name: str) -> list[float]:
    found: list[float] = []
    for document in documents:
        if name in document and "Kind" not in document and "Reason" not in document and "Action" not in document:
            value = document[name]
            found.extend(value if isinstance(value, list) else [value])
    return found


def message(session_id: str, seq: int, type: str, parameters: dict[str, Any] | None = None) -> str:
    return json.dumps({"version": "2", "id": session_id, "type": type, "seq": seq, "serverseq": 0,
                       "position": "PT0S", "parameters": parameters or {}})


async def call(relay: Relay, frames: int, during: Any = None) -> None:
    session_id = str(uuid.uuid4())
    headers = upgrade_headers(relay.url, API_KEY, CLIENT_SECRET, organization_id=ORG_ID, session_id=session_id,
                              correlation_id=str(uuid.uuid4()), now=time.time())
    async with connect(relay.url, additional_headers=headers) as socket:
        await socket.send(message(session_id, 1, "open", open_parameters(str(uuid.uuid4()), str(uuid.uuid4()))))
        assert json.loads(await socket.recv())["type"] == "opened"
        for _ in range(frames):
            await socket.send(os.urandom(FRAME))
            await asyncio.sleep(0.01)
        if during is not None:
            await during()
        await socket.send(message(session_id, 2, "close", {"reason": "end"}))
        assert json.loads(await socket.recv())["type"] == "closed"


def test_the_relay_publishes_per_interval_with_its_active_sessions(aws: Aws, capsys: pytest.CaptureFixture) -> None:
    service = build_service(aws.settings, dynamodb=aws.dynamodb, kinesis=aws.kinesis)

    async def scenario() -> list[dict[str, Any]]:
        async with Relay(service, flush_ms=20, metrics_interval_s=0.1) as relay:
            async def while_connected() -> None:
                deadline = time.monotonic() + 5
                while 1.0 not in values(emf(capsys.readouterr().out), "ActiveSessions"):
                    assert time.monotonic() < deadline, "no interval published the open session"
                    await asyncio.sleep(0.05)
            await call(relay, 30, during=while_connected)
        return emf(capsys.readouterr().out)

    after = asyncio.run(scenario())
    # The drain publishes the last interval: no session left, nothing buffered.
    assert values(after, "ActiveSessions")[-1] == 0.0 and values(after, "BufferedBytes")[-1] == 0.0
    assert after[-1]["Front"] == "relay" and after[-1]["service"] == "audiohook"


def test_frames_are_counted_per_interval_never_one_line_per_frame(aws: Aws, capsys: pytest.CaptureFixture) -> None:
    service = build_service(aws.settings, dynamodb=aws.dynamodb, kinesis=aws.kinesis)

    async def scenario() -> None:
        async with Relay(service, flush_ms=20, metrics_interval_s=0.2) as relay:
            await call(relay, 40)

    asyncio.run(scenario())
    documents = emf(capsys.readouterr().out)
    assert sum(values(documents, "AudioFrames")) == 40 and sum(values(documents, "AudioBytes")) == 40 * FRAME
    assert len([doc for doc in documents if "AudioFrames" in doc]) < 10
    delays = values(documents, "AudioAckDelay")
    assert delays and all(0 < delay < 10_000 for delay in delays)
    assert all(len(doc.get("AudioAckDelay", [])) <= 99 for doc in documents)


def test_kinesis_throttling_is_published(aws: Aws, capsys: pytest.CaptureFixture) -> None:
    kinesis = boto3.client("kinesis", region_name=REGION, config=Config(retries={"total_max_attempts": 1}))
    Faults(call_error=lambda call: ("ProvisionedThroughputExceededException", 400) if call <= 2 else None,
           ).install(kinesis)
    poster_for_endpoint.cache_clear()
    service = build_service(aws.settings, dynamodb=aws.dynamodb, kinesis=kinesis)
    service.records = KinesisWriter(kinesis, aws.settings.audio_stream, max_attempts=2, base_delay_s=0.001)

    async def scenario() -> None:
        async with Relay(service, flush_ms=20, metrics_interval_s=60) as relay:
            await call(relay, 5)

    asyncio.run(scenario())
    documents = emf(capsys.readouterr().out)
    assert sum(values(documents, "KinesisThrottles")) >= 2
    assert sum(values(documents, "KinesisRetries")) >= 1
    assert not values(documents, "AudioGaps") and not values(documents, "RecordsUndelivered")
