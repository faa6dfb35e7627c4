"""A relay scale-in moves calls instead of cutting them (the order of events on ECS,
docs/operations.md), over real sockets and real processes.

Two relay processes (`python -m audiohook.relay`) over one embedded AWS, behind the local load
balancer; calls with audio from the Genesys-like client through the balancer's one URL. Then,
as ECS does for a scale-in: the first relay's target is deregistered (no new connection goes
to it) and its task metadata turns `DesiredStatus: STOPPED` (a tiny local HTTP server plays
the ECS agent). The relay sends `reconnect` to every call; each client opens a continuing
session through the same URL, lands on the other relay, and closes the old session with reason
`reconnect`. Every conversation exported from the stream is bit-exact against what its client
sent; the stopped relay exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from audiohook.aws.stream import read_stream
from audiohook.local.balancer import Balancer
from audiohook.local.embedded_aws import EmbeddedAws
from audiohook.records import LifecycleRecord, decode_record
from audiohook.tools.client import CallReport, call
from audiohook.tools.export import rebuild_conversation
from audiohook.tools.wav import AudioSource, mulaw_decode
from conftest import REPO

CALLS = 4
SECONDS = 6.0
SPEED = 2.0


class TaskMetadata:
    """The ECS agent's task metadata endpoint v4, for one task: ``GET /`` (the container, with
    the task's address) and ``GET /task`` (``DesiredStatus``)."""

    def __init__(self) -> None:
        self.desired_status = "RUNNING"
        metadata = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.rstrip("/").endswith("/task"):
                    document: dict[str, Any] = {"DesiredStatus": metadata.desired_status, "KnownStatus": "RUNNING"}
                else:
                    document = {"Name": "relay", "Networks": [{"NetworkMode": "awsvpc",
                                                               "IPv4Addresses": ["127.0.0.1"]}]}
                data = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/v4/relay-a"


@pytest.fixture
def task_metadata() -> Iterator[TaskMetadata]:
    metadata = TaskMetadata()
    thread = threading.Thread(target=metadata.server.serve_forever, daemon=True)
    thread.start()
    yield metadata
    metadata.server.shutdown()
    metadata.server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


def start_relay(embedded: EmbeddedAws, port: int, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environment = os.environ | embedded.env() | {
        "RELAY_PORT": str(port), "RELAY_CONTROL_PORT": "0", "RELAY_CONTROL_HOST": "127.0.0.1",
        "CONTROL_ROLE_ARNS": "arn:aws:sts::123456789012:user/moto", "RELAY_DRAIN_S": "20",
        "RELAY_METADATA_POLL_MS": "100", "POWERTOOLS_LOG_LEVEL": "INFO", "POWERTOOLS_METRICS_DISABLED": "true",
        "PYTHONPATH": str(REPO / "layers" / "audiohook"),
    } | env
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "audiohook.relay"], env=environment, stdout=out,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not healthy(port):
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the relay did not come up"
        time.sleep(0.1)
    return process


def test_a_relay_told_to_stop_mid_call_moves_every_call_to_the_other_bit_exact_and_exits_0(
        tmp_path: Path, task_metadata: TaskMetadata) -> None:
    audio = AudioSource.tone(440.0, SECONDS, channels=2)
    with EmbeddedAws(REPO / "template.yaml", stack_name="scale-in") as embedded:
        ports = free_port(), free_port()
        stopping = start_relay(embedded, ports[0], tmp_path / "a.log",
                               ECS_CONTAINER_METADATA_URI_V4=task_metadata.uri)
        staying = start_relay(embedded, ports[1], tmp_path / "b.log")
        try:
            async def scenario() -> tuple[list[CallReport], dict[tuple[str, int], int], int | None]:
                async with Balancer([("127.0.0.1", port) for port in ports], interval_s=0.1) as balancer:
                    demo = embedded.demo
                    calls = [asyncio.create_task(call(balancer.url, demo.api_key, demo.client_secret, audio=audio,
                                                      speed=SPEED, ping_interval_s=1.0))
                             for _ in range(CALLS)]
                    await asyncio.sleep(SECONDS / SPEED / 3)  # mid-call
                    placed = dict(balancer.connections)
                    # ECS stops the task: its target is deregistered, its DesiredStatus turns STOPPED.
                    balancer.deregister(("127.0.0.1", ports[0]))
                    task_metadata.desired_status = "STOPPED"
                    reports = await asyncio.gather(*calls)
                    exited = await asyncio.to_thread(stopping.wait, 30)
                    return reports, placed, exited

            reports, placed, exited = asyncio.run(asyncio.wait_for(scenario(), 90))
        finally:
            for process in (stopping, staying):
                if process.poll() is None:
                    process.terminate()
            staying_exit = staying.wait(30)
            stopping.wait(30)
        records = [decode_record(data) for _, data in read_stream(embedded.client("kinesis"),
                                                                   embedded.resources.stream_name)]
        blobs = [data for _, data in read_stream(embedded.client("kinesis"), embedded.resources.stream_name)]

    logs = (tmp_path / "a.log").read_text()
    assert exited == 0, logs[-3000:]
    assert staying_exit == 0
    assert placed == {("127.0.0.1", ports[0]): CALLS // 2, ("127.0.0.1", ports[1]): CALLS // 2}
    for report in reports:
        assert report.passed, report.findings
    moved = [report for report in reports if report.continued_sessions]
    assert len(moved) == CALLS // 2  # the calls of the stopped relay, each once
    assert all(len(report.continued_sessions) == 1 for report in moved)
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    messages = [line.get("message") for line in lines]
    assert messages.index("ECS is stopping this task (DesiredStatus STOPPED)") < messages.index("reconnect sent")
    assert "disconnecting the sessions still open" not in messages  # every call moved in time

    sent = mulaw_decode(b"".join(audio.frames("PCMU", ["external", "internal"], 1600)))
    for report in reports:
        conversation = rebuild_conversation(blobs, report.conversation_id)
        assert [s.session_id for s in conversation.sessions] == [report.session_id, *report.continued_sessions]
        assert conversation.audio is not None
        assert [list(channel) for channel in conversation.audio.channels] == [list(sent[0::2]), list(sent[1::2])]
    for report in moved:
        old, new = report.session_id, report.continued_sessions[0]
        old_events = [r for r in records if isinstance(r, LifecycleRecord) and r.session_id == old]
        new_opened = next(r for r in records if isinstance(r, LifecycleRecord) and r.session_id == new
                          and r.event == "opened")
        assert [r.event for r in old_events] == ["opened", "reconnecting", "closed", "disconnected"]
        assert [(link["id"], link["verified"]) for link in new_opened.data["continuedSessions"]] == [(old, True)]
