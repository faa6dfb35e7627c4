"""Lambda path: per message type, the handler's own time (AWS calls excluded), the AWS API
calls it makes, and the cold import time of each handler module.

AWS is moto in-process; every client call is timed and counted by a proxy, and that time
is subtracted from the route's wall time, so the figure is our code (parsing, core,
serialisation, boto3 request building is *inside* the proxy and excluded too).

Run: python bench/lambda_bench.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "layers" / "audiohook"), str(REPO / "handlers"), str(REPO / "tests")]
os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")


class TimedClient:
    """Counts and times every call of a boto3 client."""

    def __init__(self, client: Any, ledger: "Ledger"):
        self._client, self._ledger = client, ledger
        self.exceptions = client.exceptions
        self.meta = client.meta

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._ledger.aws_seconds += time.perf_counter() - started
                self._ledger.calls[name] += 1

        return call


class Ledger:
    def __init__(self) -> None:
        self.aws_seconds = 0.0
        self.calls: Counter[str] = Counter()

    def reset(self) -> None:
        self.aws_seconds = 0.0
        self.calls.clear()


def measure_routes(rounds: int) -> list[tuple[str, float, str]]:
    import boto3
    from moto import mock_aws

    from audiohook.aws.poster import ConnectionPoster
    from audiohook.aws.service import AudioHookService
    from audiohook.aws.store import SessionStore
    from audiohook.aws.stream import KinesisWriter
    from conftest import API_KEY, CLIENT_SECRET, Client, embedded_aws, open_parameters

    ledger = Ledger()
    rows: dict[str, list[tuple[float, dict[str, int]]]] = {}
    with mock_aws():
        settings = embedded_aws({API_KEY: CLIENT_SECRET}).settings
        dynamodb = TimedClient(boto3.client("dynamodb"), ledger)
        kinesis = TimedClient(boto3.client("kinesis"), ledger)
        poster = ConnectionPoster(TimedClient(boto3.client(
            "apigatewaymanagementapi", endpoint_url="https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/prod"),
            ledger))
        service = AudioHookService(
            settings, SessionStore(dynamodb, settings.sessions_table, settings.session_ttl_s),
            KinesisWriter(kinesis, settings.audio_stream), poster_for=lambda event: poster,
            client_secrets=lambda: {API_KEY: CLIENT_SECRET},
        )

        def run(name: str, route: Any, event: dict[str, Any]) -> None:
            ledger.reset()
            started = time.perf_counter()
            route(event)
            own = time.perf_counter() - started - ledger.aws_seconds
            rows.setdefault(name, []).append((own, dict(ledger.calls)))

        call = open_parameters("4c3d4d4e-8f5a-4f43-9b0c-1a2b3c4d5e6f", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
        frame = bytes(3200)
        for _ in range(rounds):
            client = Client(service)
            run("$connect (signed)", service.on_connect, client.connect_event())
            c = client.connection
            run("open", service.on_message, c.message(json.dumps(client.message("open", call))))
            client.serverseq = 1
            run("audio frame (base64)", service.on_message, c.message(frame))
            run("ping", service.on_message, c.message(json.dumps(client.message("ping"))))
            run("update", service.on_message, c.message(json.dumps(client.message("update", {"language": "de-DE"}))))
            run("paused", service.on_message, c.message(json.dumps(client.message("paused"))))
            run("resumed", service.on_message, c.message(json.dumps(
                client.message("resumed", {"start": "PT0.2S", "discarded": "PT1S"}))))
            run("close", service.on_message, c.message(json.dumps(client.message("close", {"reason": "end"}))))
            run("$disconnect", service.on_disconnect, c.disconnect(1000, "Client-side close frame status set to '1000'"))
    table = []
    for name, samples in rows.items():
        median_us = statistics.median(own for own, _ in samples) * 1e6
        calls = samples[-1][1]
        table.append((name, median_us, ", ".join(f"{op} x{n}" for op, n in sorted(calls.items())) or "none"))
    return table


def cold_import_ms(module: str, repeats: int = 5) -> float:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "layers" / "audiohook"), str(REPO / "handlers")])}
    timings = []
    for _ in range(repeats):
        code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        timings.append(float(out.stdout.strip()) * 1000)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    table = measure_routes(args.rounds)
    baseline = next(us for name, us, _ in table if name == "ping")
    print(f"Lambda path, {args.rounds} sessions, median per message (AWS time excluded)")
    print(f"{'message':<22}{'own time':>12}{'vs ping':>9}  AWS API calls")
    for name, us, calls in table:
        print(f"{name:<22}{us:>9.0f} us{us / baseline:>8.2f}x  {calls}")
    print("\ncold import (fresh interpreter, median of 5)")
    base = cold_import_ms("json")
    for module in ("on_connect", "on_message", "on_disconnect"):
        ms = cold_import_ms(module)
        print(f"{module:<22}{ms:>9.1f} ms{ms / base:>8.0f}x json")


if __name__ == "__main__":
    main()
