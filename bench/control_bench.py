"""Control path on the API Gateway front: latency of each action (call -> message posted to the
connection) and the AWS calls it makes, beside a client ping through ``$default`` in the same run
(the baseline: the same store, the same post).

AWS is moto in-process, so the times are our code plus moto's, for ratios only; the AWS call
counts are what a deployed stack makes.

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    rounds = parser.parse_args().rounds

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
