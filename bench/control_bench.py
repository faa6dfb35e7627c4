"""Control path on the API Gateway front, beside a client ping in the same run.

1. Over real sockets (the local stack: API Gateway emulator running the Lambda handlers, moto
   as an HTTP server): a control action's latency from the call to the message arriving on the
   client's socket, p50/p99, and a client ping's round trip (ping sent -> pong received).
2. In-process (moto mocked): the AWS calls per action (what a deployed stack makes: the
   session lookup, the mailbox TAKE and RELEASE, the post, the record) beside a ping's.

Times are our code plus moto's, for ratios only.

Run: python bench/control_bench.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]
os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_SESSION_TOKEN="bench",
                  AWS_DEFAULT_REGION="us-east-1", POWERTOOLS_LOG_LEVEL="WARNING")


class Counted:
    """Counts every API call of a boto3 client."""

    def __init__(self, client: Any, calls: Counter[str]) -> None:
        self._client, self._calls = client, calls
        self.exceptions, self.meta = client.exceptions, client.meta

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls[name] += 1
            return method(*args, **kwargs)

        return call


def percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(percent / 100 * len(ordered)) - 1)]


def measure(rounds: int, step: Callable[[], object], calls: Counter[str]) -> tuple[list[float], Counter[str]]:
    calls.clear()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1000)
    return times, Counter({name: count / rounds for name, count in calls.items()})


def over_sockets(rounds: int) -> None:
    """Call -> message on the client's socket, through the local API Gateway emulator."""
    import asyncio
    import json
    import uuid

    import websockets

    from audiohook.aws.control import build_controller
    from audiohook.config import Settings
    from audiohook.local.gateway import LocalStack
    from audiohook.tools.client import call_open_parameters, upgrade_headers

    async def run() -> list[tuple[str, list[float], Counter[str]]]:
        async with LocalStack(REPO / "template.yaml", stack_name=f"bench-{uuid.uuid4().hex[:8]}") as stack:
            demo, org, sid = stack.demo, str(uuid.uuid4()), str(uuid.uuid4())
            headers = upgrade_headers(stack.url, demo.api_key, demo.client_secret, organization_id=org,
                                      session_id=sid, correlation_id=str(uuid.uuid4()), now=time.time())
            calls: Counter[str] = Counter()
            settings = Settings(sessions_table=stack.aws.resources.table_name,
                                audio_stream=stack.aws.resources.stream_name,
                                connections_endpoint=stack.connections_endpoint)
            from audiohook.aws.poster import ConnectionPoster
            from audiohook.aws.wiring import client

            poster = ConnectionPoster(Counted(client("apigatewaymanagementapi",
                                                     endpoint_url=stack.connections_endpoint), calls))
            controller = build_controller(settings, dynamodb=Counted(stack.aws.client("dynamodb"), calls),
                                          kinesis=Counted(stack.aws.client("kinesis"), calls), poster=poster)
            async with websockets.connect(stack.url, additional_headers=headers) as ws:
                seq = 0
                serverseq = 0

                async def send(kind: str, parameters: dict[str, Any]) -> None:
                    nonlocal seq
                    seq += 1
                    await ws.send(json.dumps({"version": "2", "id": sid, "type": kind, "seq": seq,
                                              "serverseq": serverseq, "position": "PT0S",
                                              "parameters": parameters}))

                async def receive(kind: str) -> None:
                    nonlocal serverseq
                    message = json.loads(await ws.recv())
                    assert message["type"] == kind, message
                    serverseq = message["seq"]

                await send("open", call_open_parameters(org, str(uuid.uuid4()), (
                    {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000},), None))
                await receive("opened")
                pings, events = [], []
                entities = [{"type": "note", "data": {"text": "x" * 200}}]
                for _ in range(rounds):
                    started = time.perf_counter()
                    await send("ping", {})
                    await receive("pong")
                    pings.append((time.perf_counter() - started) * 1000)
                calls.clear()
                for _ in range(rounds):
                    started = time.perf_counter()
                    acting = asyncio.create_task(asyncio.to_thread(controller.send_event, sid, entities))
                    await receive("event")
                    events.append((time.perf_counter() - started) * 1000)
                    assert (await acting).delivered
                per_action = Counter({name: count / rounds for name, count in calls.items()})
                await send("close", {"reason": "end"})
                await receive("closed")
        return [("client ping -> pong on the socket (baseline)", pings, Counter()),
                ("event: control call -> event on the socket", events, per_action)]

    rows = asyncio.run(run())
    baseline = statistics.median(rows[0][1])
    print(f"control path, API Gateway front over real sockets (local emulator + moto server), {rounds} rounds")
    for name, times, per_call in rows:
        counts = ", ".join(f"{api} {count:g}" for api, count in sorted(per_call.items()))
        print(f"  {name}: p50 {statistics.median(times):.2f} ms, p99 {percentile(times, 99):.2f} ms "
              f"({statistics.median(times) / baseline:.2f}x the ping)" + (f"; AWS calls {counts}" if counts else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    rounds = parser.parse_args().rounds
    over_sockets(rounds)

    from dataclasses import replace

    import boto3
    from moto import mock_aws

    from audiohook.aws.control import build_controller
    from audiohook.aws.wiring import build_service
    from conftest import API_KEY, CLIENT_SECRET, DOMAIN, STAGE, Client, embedded_aws, open_parameters

    with mock_aws():
        aws = embedded_aws({API_KEY: CLIENT_SECRET})
        calls: Counter[str] = Counter()
        dynamodb, kinesis = Counted(aws.dynamodb, calls), Counted(aws.kinesis, calls)
        service = build_service(aws.settings, dynamodb=dynamodb, kinesis=kinesis)
        management = Counted(boto3.client("apigatewaymanagementapi", endpoint_url=f"https://{DOMAIN}/{STAGE}"), calls)
        from audiohook.aws.poster import ConnectionPoster

        poster = ConnectionPoster(management)
        service.poster_for = lambda _event: poster
        settings = replace(aws.settings, connections_endpoint=f"https://{DOMAIN}/{STAGE}")
        controller = build_controller(settings, dynamodb=dynamodb, kinesis=kinesis, poster=poster)
        client = Client(service)
        assert client.connect()["statusCode"] == 200
        client.send(client.message("open", open_parameters("090eaa2f-72fa-480a-83e0-8667ff89c0ec")))
        sid = client.session_id

        def ping() -> None:
            client.send(client.message("ping"))

        entities = [{"type": "note", "data": {"text": "x" * 200}}]
        rows = [("client ping (baseline, $default)", *measure(rounds, ping, calls)),
                ("event (control)", *measure(rounds, lambda: controller.send_event(sid, entities), calls))]
        pause_times: list[float] = []
        calls.clear()
        for _ in range(rounds):
            started = time.perf_counter()
            assert controller.pause(sid).delivered
            pause_times.append((time.perf_counter() - started) * 1000)
            client.send(client.message("paused"))
            assert controller.resume(sid).delivered
            client.send(client.message("resumed", {"start": "PT0S", "discarded": "PT0S"}))
        rows.append(("pause (control; with resume and the client's answers in the counts)", pause_times,
                     Counter({name: count / rounds for name, count in calls.items()})))
        baseline = statistics.median(rows[0][1])
        print(f"control path, API Gateway front, moto in-process, {rounds} rounds")
        for name, times, per_call in rows:
            print(f"  {name}: p50 {statistics.median(times):.2f} ms, p99 {percentile(times, 99):.2f} ms "
                  f"({statistics.median(times) / baseline:.2f}x the ping); AWS calls "
                  + ", ".join(f"{api} {count:g}" for api, count in sorted(per_call.items())))


if __name__ == "__main__":
    main()
