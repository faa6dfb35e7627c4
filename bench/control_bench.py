"""Control path on both fronts, in one run: latency of each action and the AWS calls it makes,
each beside a client ping on the same front (the baseline).

- API Gateway front: call -> message posted to the connection, beside a client ping through
  ``$default`` (the same store, the same post). AWS is moto in-process.
- Relay front: call -> message read on the client's WebSocket, through the sessions table
  (the owner), the relay's control port and its STS check, beside a client ping -> pong on the
  same socket. AWS is the local stack's moto server (STS over HTTP), the relay in this process.

The times are our code plus moto's, for ratios only; the AWS call counts are what a deployed
stack makes.

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


def report(title: str, rows: list[tuple[str, list[float], Counter[str]]]) -> None:
    baseline = statistics.median(rows[0][1])
    print(title)
    for name, times, per_call in rows:
        print(f"  {name}: p50 {statistics.median(times):.2f} ms, p99 {percentile(times, 99):.2f} ms "
              f"({statistics.median(times) / baseline:.2f}x the ping); AWS calls "
              + (", ".join(f"{api} {count:g}" for api, count in sorted(per_call.items())) or "none"))


async def relay_rows(rounds: int) -> list[tuple[str, list[float], Counter[str]]]:
    """The relay front: a live session on the relay of `audiohook serve`'s stack."""
    import asyncio
    import json
    import uuid

    import websockets
    from botocore.credentials import Credentials

    import audiohook.relay.server as relay_server
    from audiohook.aws import iam_identity
    from audiohook.aws.control import Controller, SessionDirectory
    from audiohook.aws.relay_control import RelayFront
    from audiohook.local.gateway import LocalStack
    from audiohook.tools.client import upgrade_headers
    from conftest import ORG_ID, open_parameters

    calls: Counter[str] = Counter()

    def counted_post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        calls["sts:GetCallerIdentity (relay task)"] += 1
        return iam_identity._post(url, headers, body)

    serve = relay_server.serve_request
    relay_server.serve_request = lambda *a, **k: serve(  # type: ignore[assignment]
        *a, **k, verify=lambda *va, **vk: iam_identity.verify_identity(*va, **vk, post=counted_post))
    async with LocalStack(REPO / "template.yaml", stack_name=f"bench-{uuid.uuid4().hex[:8]}") as stack:
        aws, demo = stack.aws, stack.demo
        sid = str(uuid.uuid4())
        headers = upgrade_headers(stack.relay_url, demo.api_key, demo.client_secret, organization_id=ORG_ID,
                                  session_id=sid, correlation_id=str(uuid.uuid4()), now=time.time())
        controller = Controller(
            SessionDirectory(Counted(aws.client("dynamodb"), calls), aws.resources.table_name),
            api_gateway=None,  # type: ignore[arg-type]
            relay=RelayFront(lambda: Credentials("testing", "testing"), aws.region,
                             endpoint=aws.endpoint_url + "/"))
        async with websockets.connect(stack.relay_url, additional_headers=headers) as ws:
            seq = 0

            async def send(type: str, parameters: dict[str, Any] | None = None) -> None:
                nonlocal seq
                seq += 1
                await ws.send(json.dumps({"version": "2", "id": sid, "type": type, "seq": seq, "serverseq": 0,
                                          "position": "PT0S", "parameters": parameters or {}}))

            async def until(type: str) -> None:
                while json.loads(await ws.recv())["type"] != type:
                    pass

            await send("open", open_parameters("090eaa2f-72fa-480a-83e0-8667ff89c0ec"))
            await until("opened")

            async def timed(action: Callable[[], Any], answer: str) -> float:
                started = time.perf_counter()
                result = asyncio.ensure_future(asyncio.to_thread(action))
                await until(answer)
                elapsed = (time.perf_counter() - started) * 1000
                assert (await result).delivered
                return elapsed

            async def ping() -> float:
                started = time.perf_counter()
                await send("ping")
                await until("pong")
                return (time.perf_counter() - started) * 1000

            rows = []
            calls.clear()
            rows.append(("client ping (baseline, pong on the socket)", [await ping() for _ in range(rounds)],
                         Counter()))
            entities = [{"type": "note", "data": {"text": "x" * 200}}]
            calls.clear()
            times = [await timed(lambda: controller.send_event(sid, entities), "event") for _ in range(rounds)]
            rows.append(("event (control -> message on the client's socket)", times,
                         Counter({name: count / rounds for name, count in calls.items()})))
            calls.clear()
            times = []
            for _ in range(rounds):
                times.append(await timed(lambda: controller.pause(sid), "pause"))
                await send("paused")
                await timed(lambda: controller.resume(sid), "resume")
                await send("resumed", {"start": "PT0S", "discarded": "PT0S"})
            rows.append(("pause (control; resume in the counts)", times,
                         Counter({name: count / (2 * rounds) for name, count in calls.items()})))
    relay_server.serve_request = serve  # type: ignore[assignment]
    return rows


def main() -> None:
    import asyncio

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    rounds = parser.parse_args().rounds
    relay = asyncio.run(relay_rows(rounds))

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
        report(f"control path, API Gateway front, moto in-process, {rounds} rounds", rows)
    report(f"control path, relay front, moto server + relay in this process, {rounds} rounds; "
           "each action's record joins the relay's next PutRecords batch", relay)


if __name__ == "__main__":
    main()
