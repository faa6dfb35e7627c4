"""The relay side by side with a read-only floor and the Genesys reference server, in one run.

Method: every server in turn runs as its own process pinned to CPU 0; the load runs on CPU 1
(client processes, plus the AWS stub the relay talks to). For each N, every server gets the
same load: N real-time stereo PCMU sessions (signed upgrade, ``open``/``opened``, a 3,200-byte
binary frame every 200 ms, a ``ping`` every 5 s, ``close``/``closed``), opened over a ramp;
once all are open and streaming (for the relay: once the session items the opens left to
write are written and its Kinesis queue is back under two seconds of audio), a steady window
of ``--seconds`` is measured. Servers:

- ``relay``: ``python -m audiohook.relay`` exactly as the container runs it (picows + uvloop),
  AWS answered by a local counting stub (DynamoDB and Secrets Manager answer success, Kinesis
  PutRecords acknowledges and counts audio frames and bytes and checks positions per session
  from each record's header alone, without parsing the body);
- ``floor``: a picows + uvloop server on the same library that only reads frames (it answers
  ``opened``, ``pong`` and ``closed`` with canned text so the client can run the same script);
- ``ref-loadtest`` and ``ref-recording``: the Genesys reference server's two endpoints
  (``../shared/peers/genesys-audiohook-reference``, when ``node`` and ``npm`` exist). The
  recording endpoint records only when ``RECORDING_S3_BUCKET`` is set (a WAV and a JSON sidecar
  per session, uploaded when the session ends): the bench sets it, checks the files were
  written, and removes them (the upload, after the window, fails here: S3 is unreachable).

``--rounds R`` runs every server R times per N, in turn (the order rotates each round), and
adds the median µs/frame and the median of the per-round ratios: this machine's speed drifts
by ±15 % from one minute to the next, which one round cannot tell from a difference.

Figures: server CPU from ``/proc/<pid>/stat`` over the steady window divided by the frames sent
in it (µs per frame); ratios against the floor and the reference's recording endpoint; sessions
per core at 80 % CPU (derived from µs/frame); open->opened and ping->pong p50/p99 under the load
(pongs over the whole run, ramp included, and "steady pong": pings sent in the steady window);
the client's send lag (how late frames left against real time: the load must keep pace); and
for the relay: frame->Kinesis acknowledgement p50/p99 over the whole run, ramp included (relay's
/metrics), zero loss once its queue is empty (every frame in the stub, no gap, nothing dropped,
no position hole) and memory per session (RSS growth / N).

Quick: python bench/relay_bench.py --sessions 250 --seconds 10
Full:  python bench/relay_bench.py --sessions 1000,2000 --seconds 20 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import heapq
import json
import math
import multiprocessing
import os
import re
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "peers" / "genesys-audiohook-reference" / "run.sh"
# run.sh writes recordings here. The recording endpoint records (a WAV and a JSON sidecar per session) only when
# RECORDING_S3_BUCKET is set; it uploads them when the session ends, after the measured window, and keeps them here
# when the upload fails (S3 is unreachable from this machine), so the bench counts and then removes them.
REFERENCE_RECORDINGS = Path(os.environ.get("AUDIOHOOK_REFERENCE_BUILD", "/tmp/audiohook-reference-build")) / "recordings"
RECORDING_BUCKET = "bench-recordings"
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

SERVER_CPU, LOAD_CPU = 0, 1
FRAME_BYTES = 3200  # 200 ms, stereo PCMU
FRAME_S = 0.2
PING_S = 5.0
API_KEY = "bench-key"
CLIENT_SECRET = base64.b64encode(b"relay-bench-client-secret-000001").decode()
ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"
SESSIONS_PER_CLIENT_PROCESS = 1000
OPENS_PER_SECOND = 500  # the ramp
BUSY_CPU = 0.80


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], percent: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * percent / 100) - 1))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode})")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


# --------------------------------------------------------------------------- counting AWS stub
_AUDIO_HEADER = struct.Struct("<4sBH16sQIIHBB2s")
_DATA = re.compile(rb'"Data":"([A-Za-z0-9+/]{60})')


class StubState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.calls: Counter[str] = Counter()
        self.records = self.audio_records = self.frames = self.audio_bytes = self.holes = 0
        self.next_position: dict[bytes, int] = {}

    def put_records(self, body: bytes) -> int:
        """Count one PutRecords body without parsing it: records by their partition keys, audio
        records by the base64 of their 45-byte header (the first 60 characters of ``Data``)."""
        records = body.count(b'"PartitionKey":')
        audio = frames = size = holes = 0
        with self.lock:
            for match in _DATA.finditer(body):
                head = base64.b64decode(match.group(1))
                if head[:4] != b"AHAU":
                    continue
                _, _, _, session, position, _, length, count, _, _, _ = _AUDIO_HEADER.unpack(head)
                audio += 1
                frames += count
                size += length
                holes += position != self.next_position.get(session, 0)
                self.next_position[session] = position + length // 2
            self.records += records
            self.audio_records += audio
            self.frames += frames
            self.audio_bytes += size
            self.holes += holes
        return records

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"calls": dict(self.calls), "records": self.records, "audio_records": self.audio_records,
                    "frames": self.frames, "audio_bytes": self.audio_bytes, "holes": self.holes}


def serve_stub(port: int, ready: Any) -> None:
    pin(LOAD_CPU)
    raise_fd_limit()
    state = StubState()
    secret = json.dumps({API_KEY: CLIENT_SECRET})

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, body: bytes, content_type: str = "application/x-amz-json-1.1") -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/stats":
                self._answer(json.dumps(state.snapshot()).encode(), "application/json")
            elif self.path == "/reset":
                with state.lock:
                    state.reset()
                self._answer(b"{}", "application/json")
            else:
                self._answer(b"{}", "application/json")

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
            with state.lock:
                state.calls[operation] += 1
            if operation == "PutRecords":
                records = state.put_records(body)
                ok = b'{"SequenceNumber":"49590338271490256608559692538361571095921575989136588898",' \
                     b'"ShardId":"shardId-000000000000"}'
                self._answer(b'{"FailedRecordCount":0,"Records":[' + b",".join([ok] * records) + b"]}")
            elif operation == "GetSecretValue":
                self._answer(json.dumps({
                    "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:bench-AbCdEf", "Name": "bench",
                    "VersionId": "v1", "SecretString": secret, "VersionStages": ["AWSCURRENT"],
                    "CreatedDate": 1700000000}).encode())
            else:  # DynamoDB PutItem / UpdateItem (conditions always hold: one writer per item)
                self._answer(b"{}", "application/x-amz-json-1.0")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    ready.set()
    server.serve_forever()


# --------------------------------------------------------------------------- the floor server
def floor_server(port: int) -> None:
    """picows + uvloop, reading frames and nothing else (canned answers to open/ping/close)."""
    import uvloop
    from picows import WSListener, WSMsgType, WSTransport, ws_create_server

    canned = {"open": "opened", "ping": "pong", "close": "closed"}

    class Reader(WSListener):  # type: ignore[misc]
        frames = 0

        def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
            if frame.msg_type is WSMsgType.BINARY:
                Reader.frames += 1
            elif frame.msg_type is WSMsgType.TEXT:
                message = json.loads(frame.get_payload_as_bytes())
                reply = canned.get(message.get("type"))
                if reply:
                    transport.send(WSMsgType.TEXT, json.dumps({
                        "version": "2", "type": reply, "seq": message["seq"], "clientseq": message["seq"],
                        "id": message["id"], "parameters": {}}).encode())
            elif frame.msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    async def main() -> None:
        from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

        def route(request: Any) -> Any:
            if request.path.startswith(b"/health"):
                return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok\n"), None)
            return Reader()

        server = await ws_create_server(route, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


# --------------------------------------------------------------------------- load: Genesys-like clients
class StartLine:
    """Every client process says it is ready, then all run from one ``t0``. The parent opens
    the steady window once every session is open (``opened``), and ends the run (``end``)."""

    def __init__(self, processes: int) -> None:
        self.ready = multiprocessing.Queue()
        self.go = multiprocessing.Event()
        self.t0 = multiprocessing.Value("d", 0.0)
        self.opened = multiprocessing.Value("i", 0)
        self.tried = multiprocessing.Value("i", 0)
        self.window = multiprocessing.Array("d", [math.inf, math.inf])
        self.end = multiprocessing.Value("d", math.inf)
        self.processes = processes

    def release(self, lead_s: float = 1.0) -> float:
        for _ in range(self.processes):
            self.ready.get(timeout=120)
        self.t0.value = time.time() + lead_s
        self.go.set()
        return float(self.t0.value)


def client_process(url: str, first: int, count: int, total: int, ramp_s: float,
                   start: StartLine, results: Any) -> None:
    pin(LOAD_CPU)
    raise_fd_limit()
    try:
        import uvloop

        results.put(uvloop.run(_clients(url, first, count, total, ramp_s, start)))
    except Exception as error:  # pragma: no cover - reported by the parent
        results.put({"error": repr(error)})


async def _clients(url: str, first: int, count: int, total: int, ramp_s: float,
                   start: StartLine) -> dict[str, Any]:
    """Sessions ``first..first+count`` of ``total``: session k opens at t0 + ramp_s * k / total and
    streams from then on, frames on a 200 ms grid spread over the sessions; one sender loop
    ticks every 5 ms and sends what is due (cheap enough to keep pace at thousands of sessions)."""
    from picows import WSListener, WSMsgType, WSTransport, ws_connect

    from audiohook.tools.client import upgrade_headers

    loop = asyncio.get_running_loop()
    frame = bytes(range(256)) * (FRAME_BYTES // 256) + bytes(FRAME_BYTES % 256)
    opens: list[float] = []
    rtts: list[float] = []
    steady_rtts: list[float] = []  # pings sent inside the steady window
    lags: list[float] = []
    failures: list[str] = []

    class Session(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.waiting: asyncio.Future[dict[str, Any]] | None = None
            self.pings: dict[int, float] = {}
            self.seq = 1
            self.serverseq = 0

        def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
            if frame.msg_type is not WSMsgType.TEXT:
                return
            message = json.loads(frame.get_payload_as_bytes())
            self.serverseq = message["seq"]
            if message["type"] == "pong":
                sent = self.pings.pop(message["clientseq"], None)
                if sent is not None:
                    sent_at, in_window = sent
                    rtts.append(time.monotonic() - sent_at)
                    if in_window:
                        steady_rtts.append(rtts[-1])
            elif self.waiting is not None and not self.waiting.done():
                self.waiting.set_result(message)

        async def reply(self) -> dict[str, Any]:
            self.waiting = loop.create_future()
            return await asyncio.wait_for(self.waiting, 60)

    def text(session_id: str, kind: str, seq: int, serverseq: int, parameters: dict[str, Any]) -> bytes:
        return json.dumps({"version": "2", "id": session_id, "type": kind, "seq": seq, "serverseq": serverseq,
                           "position": "PT0S", "parameters": parameters}).encode()

    await loop.run_in_executor(None, start.ready.put, count)
    await loop.run_in_executor(None, start.go.wait)
    t0 = float(start.t0.value)
    sent_in_window = 0
    streaming: list[tuple[float, WSTransport, Session, str]] = []  # (first due, transport, listener, id)
    due_heap: list[tuple[float, int]] = []  # (next due, index in streaming)

    async def open_one(k: int) -> None:
        try:
            await open_session(k)
        finally:
            with start.tried.get_lock():
                start.tried.value += 1

    async def open_session(k: int) -> None:
        at = t0 + ramp_s * k / total
        await asyncio.sleep(max(0.0, at - time.time()))
        session_id = str(uuid.uuid4())
        began = time.monotonic()
        headers = upgrade_headers(url, API_KEY, CLIENT_SECRET, organization_id=ORG_ID, session_id=session_id,
                                  correlation_id=str(uuid.uuid4()), now=time.time())
        transport, listener = await ws_connect(Session, url, extra_headers=headers, websocket_handshake_timeout=60)
        transport.send(WSMsgType.TEXT, text(session_id, "open", 1, 0, {
            "organizationId": ORG_ID, "conversationId": str(uuid.uuid4()),
            "participant": {"id": str(uuid.uuid4()), "ani": "", "aniName": "", "dnis": ""},
            "media": [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}],
            "language": "en-US"}))
        opened = await listener.reply()
        if opened["type"] != "opened":
            raise RuntimeError(f"open answered {opened['type']}: {opened.get('parameters')}")
        opens.append(time.monotonic() - began)
        with start.opened.get_lock():
            start.opened.value += 1
        phase = FRAME_S * k / total
        due = t0 + phase + FRAME_S * math.ceil((time.time() - t0 - phase) / FRAME_S)
        streaming.append((due, transport, listener, session_id))
        heapq.heappush(due_heap, (due, len(streaming) - 1))

    async def sender() -> None:
        """Sends what is due every 5 ms, taking sessions from a heap ordered by their next due
        time (so a tick costs what it sends, not a pass over every session)."""
        nonlocal sent_in_window
        next_ping: dict[int, float] = {}
        while True:
            now = time.time()
            end = start.end.value
            window = tuple(start.window)
            if now >= end:
                return
            while due_heap and due_heap[0][0] <= now:
                due, index = due_heap[0]
                _, transport, listener, session_id = streaming[index]
                while due <= now and due < end:
                    if window[0] <= due <= window[1]:
                        lags.append(now - due)
                        sent_in_window += 1
                    transport.send(WSMsgType.BINARY, frame)
                    due += FRAME_S
                heapq.heapreplace(due_heap, (due, index))
                ping_at = next_ping.setdefault(index, due + PING_S * (hash(session_id) % 1000) / 1000)
                if due >= ping_at:
                    listener.seq += 1
                    listener.pings[listener.seq] = (time.monotonic(), window[0] <= now <= window[1])
                    transport.send(WSMsgType.TEXT, text(session_id, "ping", listener.seq, listener.serverseq, {}))
                    next_ping[index] = ping_at + PING_S
            await asyncio.sleep(0.005)

    opening = asyncio.gather(*(open_one(k) for k in range(first, first + count)), return_exceptions=True)
    _, outcomes = await asyncio.gather(sender(), opening)
    failures += [repr(o) for o in outcomes if isinstance(o, BaseException)]

    async def close(transport: WSTransport, listener: Session, session_id: str) -> None:
        listener.seq += 1
        transport.send(WSMsgType.TEXT, text(session_id, "close", listener.seq, listener.serverseq, {"reason": "end"}))
        closed = await listener.reply()
        if closed["type"] != "closed":
            failures.append(f"close answered {closed['type']}")
        transport.send_close()
        transport.disconnect()

    closes = await asyncio.gather(*(close(t, li, s) for _, t, li, s in streaming), return_exceptions=True)
    failures += [f"at close: {o!r}" for o in closes if isinstance(o, BaseException)]
    return {"opened": len(streaming), "sent_in_window": sent_in_window, "failures": failures[:3],
            "failed": len(failures), "opens": opens, "rtts": rtts,
            "steady_rtts": steady_rtts, "lags": lags}


# --------------------------------------------------------------------------- servers
def start_server(kind: str, port: int, stub_url: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """The server process, its WebSocket URL and its health URL."""
    def preexec() -> None:
        pin(SERVER_CPU)
        raise_fd_limit()

    if kind == "relay":
        env = os.environ | {
            "AWS_ENDPOINT_URL": stub_url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_SESSION_TOKEN": "bench", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
            "SESSIONS_TABLE": "bench-sessions", "AUDIO_STREAM": "bench-audio", "API_KEYS_SECRET": "bench",
            "RELAY_PORT": str(port), "RELAY_DRAIN_S": "0", "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "audiohook.relay"]
        url, health = f"ws://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/health"
    elif kind == "floor":
        env = dict(os.environ)
        command = [sys.executable, __file__, "--floor-server", str(port)]
        url, health = f"ws://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/health"
    else:
        env = dict(os.environ) | ({"RECORDING_S3_BUCKET": RECORDING_BUCKET} if kind == "ref-recording" else {})
        command = ["bash", str(REFERENCE), str(port), API_KEY, CLIENT_SECRET]
        path = "/api/v1/loadtest/ws" if kind == "ref-loadtest" else "/api/v1/audiohook/ws"
        url, health = f"ws://127.0.0.1:{port}{path}", f"http://127.0.0.1:{port}/health/check"
    process = subprocess.Popen(command, env=env, preexec_fn=preexec, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_http(health, process)
    return process, url, health


def clear_recordings() -> dict[str, int]:
    """Remove the reference's recordings, saying how many WAV files and bytes it had written."""
    wavs = list(REFERENCE_RECORDINGS.glob("*.wav"))
    recorded = {"recorded_wavs": len(wavs), "recorded_bytes": sum(path.stat().st_size for path in wavs)}
    for path in REFERENCE_RECORDINGS.glob("*"):
        path.unlink()
    return recorded


def run_one(kind: str, sessions: int, seconds: float, stub_url: str) -> dict[str, Any]:
    port = free_port()
    http_json(stub_url + "/reset")
    if kind == "ref-recording":
        clear_recordings()
    process, url, _ = start_server(kind, port, stub_url)
    try:
        time.sleep(0.5)
        idle_rss = rss_bytes(process.pid)
        ramp_s = max(1.0, sessions / OPENS_PER_SECOND)
        processes = math.ceil(sessions / SESSIONS_PER_CLIENT_PROCESS)
        start = StartLine(processes)
        results: Any = multiprocessing.Queue()
        workers = []
        for k in range(processes):
            first = k * sessions // processes
            count = (k + 1) * sessions // processes - first
            worker = multiprocessing.Process(target=client_process,
                                             args=(url, first, count, sessions, ramp_s, start, results))
            worker.start()
            workers.append(worker)
        t0 = start.release()
        deadline = t0 + ramp_s + 120
        while start.tried.value < sessions and time.time() < deadline and all(w.is_alive() for w in workers):
            time.sleep(0.1)
        if kind == "relay":  # steady: the opens' session items written and their Kinesis backlog sent
            settle_deadline = time.time() + 120
            steady_bytes = 2 * sessions * FRAME_BYTES / FRAME_S  # two seconds of audio queued at most
            while time.time() < settle_deadline:
                metrics = http_json(f"http://127.0.0.1:{port}/metrics")
                if metrics["dynamodb_saves"] >= start.opened.value and metrics["buffered_bytes"] <= steady_bytes:
                    break
                time.sleep(0.2)
        window = (time.time() + 2.0, time.time() + 2.0 + seconds)  # steady: every session open and streaming
        start.window[0], start.window[1] = window
        start.end.value = window[1] + 0.5
        time.sleep(max(0.0, window[0] - time.time()))
        cpu_start = cpu_seconds(process.pid)
        time.sleep(max(0.0, window[1] - time.time()))
        cpu_used = cpu_seconds(process.pid) - cpu_start
        rss = rss_bytes(process.pid)
        loads = [results.get(timeout=180) for _ in workers]
        for worker in workers:
            worker.join(30)
        metrics: dict[str, Any] = {}
        if kind == "relay":  # every frame acknowledged (or 60 s passed) before the count
            drain_deadline = time.time() + 60
            while time.time() < drain_deadline:
                time.sleep(0.5)
                metrics = http_json(f"http://127.0.0.1:{port}/metrics")
                if metrics["buffered_bytes"] == 0:
                    break
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    recorded = clear_recordings() if kind == "ref-recording" else {}
    errors = [load["error"] for load in loads if "error" in load]
    loads = [load for load in loads if "error" not in load]
    frames = sum(load["sent_in_window"] for load in loads)
    opens = [x for load in loads for x in load["opens"]]
    rtts = [x for load in loads for x in load["rtts"]]
    steady_rtts = [x for load in loads for x in load["steady_rtts"]]
    lags = [x for load in loads for x in load["lags"]]
    window_s = seconds
    result = {
        "server": kind, "sessions": sessions, "opened": sum(load["opened"] for load in loads),
        "failed": sum(load["failed"] for load in loads) + len(errors),
        "failures": errors + [f for load in loads for f in load["failures"]][:3],
        "cpu_busy": cpu_used / window_s, "us_per_frame": cpu_used / frames * 1e6 if frames else float("nan"),
        "open_p50_ms": percentile(opens, 50) * 1000, "open_p99_ms": percentile(opens, 99) * 1000,
        "pong_p50_ms": percentile(rtts, 50) * 1000, "pong_p99_ms": percentile(rtts, 99) * 1000,
        "steady_pong_p50_ms": percentile(steady_rtts, 50) * 1000,
        "steady_pong_p99_ms": percentile(steady_rtts, 99) * 1000,
        "lag_p99_ms": percentile(lags, 99) * 1000, "lag_max_ms": max(lags, default=0.0) * 1000,
        "rss_per_session_kib": (rss - idle_rss) / sessions / 1024,
    } | recorded
    if kind == "relay":
        stub = http_json(stub_url + "/stats")
        result |= {
            "frames_received": metrics.get("frames"), "frames_in_kinesis": stub["frames"],
            "zero_loss": (stub["frames"] == metrics.get("frames") and stub["holes"] == 0
                          and metrics.get("gaps") == 0 and metrics.get("dropped") == 0),
            "kinesis_p50_ms": metrics["delay_ms"]["p50"], "kinesis_p99_ms": metrics["delay_ms"]["p99"],
            "put_records_calls": stub["calls"].get("PutRecords", 0), "audio_records": stub["audio_records"],
            "dynamodb_calls": sum(v for k, v in stub["calls"].items() if k in ("PutItem", "UpdateItem", "GetItem")),
        }
    return result


# --------------------------------------------------------------------------- report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1000,2000", help="comma-separated N")
    parser.add_argument("--seconds", type=float, default=20.0, help="streaming time after the ramp")
    parser.add_argument("--servers", default="relay,floor,ref-recording,ref-loadtest")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every server per N, in turn")
    parser.add_argument("--floor-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_server:
        floor_server(args.floor_server)
        return
    pin(LOAD_CPU)
    raise_fd_limit()
    servers = args.servers.split(",")
    if not (shutil.which("node") and shutil.which("npm") and REFERENCE.exists()):
        servers = [s for s in servers if not s.startswith("ref-")]
        print("reference server skipped: node/npm or ../shared/peers not found")
    print(f"machine: {os.cpu_count()} CPUs; each server pinned to CPU {SERVER_CPU}; load clients and the AWS stub "
          f"on CPU {LOAD_CPU}; load: real-time stereo PCMU, {FRAME_BYTES}-byte frames every {FRAME_S * 1000:.0f} ms, "
          f"a ping every {PING_S:g} s; sessions opened at {OPENS_PER_SECOND}/s, then {args.seconds:g} s streamed")

    stub_port = free_port()
    ready = multiprocessing.Event()
    stub = multiprocessing.Process(target=serve_stub, args=(stub_port, ready), daemon=True)
    stub.start()
    ready.wait(10)
    stub_url = f"http://127.0.0.1:{stub_port}"
    try:
        for sessions in (int(s) for s in args.sessions.split(",")):
            rounds = []
            for index in range(args.rounds):
                order = servers[index % len(servers):] + servers[:index % len(servers)]
                rows = {kind: run_one(kind, sessions, args.seconds, stub_url) for kind in order}
                report(sessions, {kind: rows[kind] for kind in servers},
                       f" (round {index + 1} of {args.rounds})" if args.rounds > 1 else "")
                rounds.append(rows)
            if len(rounds) > 1:
                report_rounds(sessions, servers, rounds)
    finally:
        stub.terminate()


def report_rounds(sessions: int, servers: list[str], rounds: list[dict[str, dict[str, Any]]]) -> None:
    print(f"\nN = {sessions} sessions, {len(rounds)} rounds: median µs/frame (each round's)")
    for kind in servers:
        figures = [rows[kind]["us_per_frame"] for rows in rounds]
        print(f"{kind:14} {statistics.median(figures):>6.1f}  ({', '.join(f'{x:.1f}' for x in figures)})")
    if "relay" not in servers:
        return
    for kind in servers:
        if kind != "relay":
            ratios = [rows["relay"]["us_per_frame"] / rows[kind]["us_per_frame"] for rows in rounds]
            print(f"relay / {kind}: median {statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"relay: zero loss in every round: {'yes' if all(rows['relay']['zero_loss'] for rows in rounds) else 'NO'}; "
          f"steady pong p99 at most {max(rows['relay']['steady_pong_p99_ms'] for rows in rounds):.1f} ms")


def report(sessions: int, rows: dict[str, dict[str, Any]], label: str = "") -> None:
    print(f"\nN = {sessions} sessions{label}")
    header = (f"{'server':14} {'CPU':>5} {'µs/frame':>9} {'sess/core@80%':>13} {'open p50/p99 ms':>16} "
              f"{'pong p50/p99 ms':>16} {'steady pong':>13} {'lag p99 ms':>10} {'KiB/sess':>8} {'failed':>6}")
    print(header)
    print("-" * len(header))
    for kind, row in rows.items():
        per_core = int(BUSY_CPU * 1e6 / (row["us_per_frame"] / FRAME_S)) if row["us_per_frame"] == row["us_per_frame"] else 0
        print(f"{kind:14} {row['cpu_busy']:>5.0%} {row['us_per_frame']:>9.1f} {per_core:>13,} "
              f"{row['open_p50_ms']:>7.0f}/{row['open_p99_ms']:<8.0f} {row['pong_p50_ms']:>7.1f}/{row['pong_p99_ms']:<8.1f}"
              f" {row['steady_pong_p50_ms']:>5.1f}/{row['steady_pong_p99_ms']:<7.1f}"
              f" {row['lag_p99_ms']:>10.1f} {row['rss_per_session_kib']:>8.1f} {row['failed']:>6}")
        if row["failures"]:
            print(f"    failures: {row['failures']}")
    if "recorded_wavs" in rows.get("ref-recording", {}):
        recording = rows["ref-recording"]
        print(f"ref-recording: wrote {recording['recorded_wavs']} WAV files, "
              f"{recording['recorded_bytes'] / 1e6:.1f} MB (RECORDING_S3_BUCKET set; upload to S3 fails here)")
    relay = rows.get("relay")
    if relay is None:
        return
    print(f"relay: zero loss {'yes' if relay['zero_loss'] else 'NO'} ({relay['frames_in_kinesis']} frames in "
          f"Kinesis of {relay['frames_received']} received), frame->Kinesis ack p50 {relay['kinesis_p50_ms']} ms, "
          f"p99 {relay['kinesis_p99_ms']} ms; {relay['put_records_calls']} PutRecords calls, "
          f"{relay['audio_records']} audio records; {relay['dynamodb_calls']} DynamoDB calls")
    for kind in ("floor", "ref-recording", "ref-loadtest"):
        if kind in rows:
            print(f"relay / {kind}: {relay['us_per_frame'] / rows[kind]['us_per_frame']:.2f}x µs per frame")


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    main()
