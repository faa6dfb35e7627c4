"""Lambda path: AWS API calls and the handler's own time per message type, for this design
(the per-connection mailbox, docs/sequencing.md) side by side with the previous design
(GetItem + conditional UpdateItem + ``delivered`` mark, with waits: commit 295e967) in the
same run, plus the cold import time of each handler module.

Each design runs in its own interpreter: the previous one from ``git archive`` of its
commit, imported from a temporary directory. AWS is moto in-process; every client call is
counted and timed by a proxy and that time is subtracted from the route's wall time, so the
"own time" is our code only (parsing, core, serialisation).

Run: python bench/lambda_bench.py [--rounds 100] [--previous 295e967]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREVIOUS = "295e967"
SHORT = {"GetItem": "Get", "PutItem": "Put", "UpdateItem": "Update", "DeleteItem": "Delete",
         "PostToConnection": "post", "PutRecords": "Kinesis"}


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
                operation = self._client.meta.method_to_api_mapping.get(name, name)
                self._ledger.calls[operation] += 1

        return call


class Ledger:
    def __init__(self) -> None:
        self.aws_seconds = 0.0
        self.calls: Counter[str] = Counter()

    def reset(self) -> None:
        self.aws_seconds = 0.0
        self.calls.clear()


def worker(rounds: int) -> None:
    """Runs in a subprocess whose sys.path starts with the design's src/: prints JSON rows."""
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      POWERTOOLS_LOG_LEVEL="CRITICAL")
    sys.path.insert(1, str(REPO / "tests"))
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
    table = {name: {"own_us": statistics.median(own for own, _ in samples) * 1e6, "calls": samples[-1][1]}
             for name, samples in rows.items()}
    print(json.dumps(table))


def measure(src: Path, rounds: int) -> dict[str, Any]:
    env = os.environ | {"PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, __file__, "--worker", "--rounds", str(rounds)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def previous_src(commit: str, into: Path) -> Path:
    """The previous design's src/ from git (no worktree: an archive unpacked in a temp dir)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def cold_import_ms(module: str, repeats: int = 5) -> float:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "handlers")])}
    timings = []
    for _ in range(repeats):
        code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        timings.append(float(out.stdout.strip()) * 1000)
    return statistics.median(timings)


def describe(calls: dict[str, int]) -> tuple[str, int, int]:
    dynamodb = sum(n for op, n in calls.items() if op in ("GetItem", "PutItem", "UpdateItem", "DeleteItem"))
    posts = calls.get("PostToConnection", 0)
    text = " + ".join(f"{n} {SHORT.get(op, op)}" for op, n in sorted(calls.items())) or "none"
    return text, dynamodb, posts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--previous", default=PREVIOUS, help="commit of the previous design")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.rounds)
        return
    with tempfile.TemporaryDirectory() as temp:
        before = measure(previous_src(args.previous, Path(temp)), args.rounds)
    now = measure(REPO / "src", args.rounds)
    print(f"Lambda path, {args.rounds} sessions, no contention: AWS calls per message and our own time "
          "(median, AWS time excluded)")
    print(f"{'message':<22}{'DynamoDB':>9}{'posts':>6}  {'this design':<36}{'own':>8}   "
          f"{'DynamoDB':>9}{'posts':>6}  {'previous (' + args.previous + ')':<36}{'own':>8}")
    for name in now:
        new_text, new_db, new_posts = describe(now[name]["calls"])
        old_text, old_db, old_posts = describe(before.get(name, {}).get("calls", {}))
        print(f"{name:<22}{new_db:>9}{new_posts:>6}  {new_text:<36}{now[name]['own_us']:>6.0f}us   "
              f"{old_db:>9}{old_posts:>6}  {old_text:<36}{before.get(name, {}).get('own_us', 0):>6.0f}us")
    ping = now["ping"]["calls"]
    verdict = "met" if describe(ping)[1] <= 2 and describe(ping)[2] <= 1 else "MISSED"
    print(f"\ntarget: ping <= 2 DynamoDB calls + 1 post: {verdict}")
    print("\ncold import (fresh interpreter, median of 5)")
    base = cold_import_ms("json")
    for module in ("on_connect", "on_message", "on_disconnect"):
        ms = cold_import_ms(module)
        print(f"{module:<22}{ms:>9.1f} ms{ms / base:>8.0f}x json")


if __name__ == "__main__":
    main()
