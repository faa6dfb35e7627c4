"""The relay: the binary-capable AudioHook front, running the protocol core in-process.

API Gateway WebSocket APIs close the connection on the first binary frame, and Genesys sends
all audio as binary frames. The relay terminates Genesys' WebSocket itself (``picows``, a
Cython WebSocket library, on uvloop in production) and runs one task per connection:

- **upgrade**: a small HTTP gate (:class:`_UpgradeGate`) reads the request line and headers,
  answers ``GET /health`` and ``GET /metrics`` itself, and turns an upgrade into the
  ``$connect`` event (:mod:`audiohook.aws.apigw`) of ``service.on_connect``, the same code the
  Lambda runs (signature, nonce, session item), in a worker thread because boto3 blocks. Any
  answer but 200 is the HTTP answer to the upgrade, with a body (401, 409, 500, 503 while
  draining). Accepted, the socket is handed to picows, which completes the handshake. The
  signed ``@request-target`` is the request's own path plus query: the relay's "stage" is
  that target without its leading slash (``REQUEST_TARGET``, when set, still overrides it).
- **text frame**: applied in memory by the connection's own driver (:class:`_Link`):
  ``protocol.parse_client_message`` then ``session.receive``, replies written to the socket
  at once, in ``seq`` order. A single TCP stream cannot duplicate or reorder, so there is no
  sequencing between invocations here: a repeated or skipped ``seq`` is a protocol error
  like any other (the core's exact ``disconnect`` info).
- **binary frame** (the hot path): while the session streams (``session.streaming_sample_bytes``
  not 0: ACTIVE, with media), a frame of a whole number of samples (up to
  ``MAX_PENDING_FRAME_BYTES``) waits in ``_Link.pending``, unaccounted; the frames are handed
  to the core (``session.accept_audio``, one step for all) and to the connection's queue
  (:mod:`audiohook.relay.buffer`) at the next flush, before any other input of the connection
  (a text message, a frame off this path, a control action, the end of the socket, the
  shutdown's ``disconnect``) and once ``MAX_PENDING_FRAMES`` wait. A ping answered with a
  pong lets them wait; one that breaks the protocol takes them before its error is applied.
  Any other frame goes through ``session.receive_audio`` on its own. No event, no pydantic,
  no JSON, no base64, no thread hop and no AWS call per frame.
- **socket closed**: ``session.finish``; its final state is written to DynamoDB, then the
  ``disconnected`` record joins the queue, last: nothing of the session follows it.

State goes to the same DynamoDB item as on the Lambda path, written through off the reply
path: after a message that changes the session's state (one with a lifecycle record; a
ping only moves counters), the item is saved by a background task, one save at a time per
connection, coalescing what changed meanwhile; the final save comes before ``disconnected``.
Queues and state belong to the connection, never to a session id alone, so two connections
claiming one session id can never share anything.

Records go to the same Kinesis stream: every ``RELAY_FLUSH_MS`` a flusher takes the frames
that arrived and sends PutRecords batches across sessions (between ticks it only sends: when
memory runs high, or when a call returns and records wait). One record per session per tick
holds all its frames since the last one, so the per-record costs are shared by
``RELAY_FLUSH_MS / 200`` frames of a real-time stream (a tick sends as many calls as it
needs, each up to 500 records or 5 MiB); at most ``max_inflight`` calls at
once and one per session at a time, with request bodies built without botocore's per-record
serialisation (:class:`audiohook.relay.putrecords.PutRecordsClient`).

Memory is bounded by ``RELAY_MAX_BUFFER_BYTES``: above 3/4 of it the relay stops reading the
sockets that bring audio (TCP pushes back on the client) until the buffer is below 1/2; if
that takes longer than ``max_pause_s`` (Kinesis is down), reading goes on and frames that do
not fit are dropped, counted, logged and recorded as ``gap`` records. Audio Kinesis refuses
beyond the writer's retries is queued again ``max_requeues`` times, then recorded as a gap.

SIGTERM drains: health turns 503, new upgrades get 503, sessions have ``RELAY_DRAIN_S`` to
end, the rest get ``disconnect`` (completed, "server shutting down") and a short while to
close, then the audio is flushed and the process exits 0.

Run it with ``python -m audiohook.relay`` (settings from the environment, port ``RELAY_PORT``).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import gc
import json
import logging
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Self, TypeVar

from aws_lambda_powertools import Logger
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport
from picows.picows import WSProtocol  # type: ignore[import-not-found]

from audiohook import metrics as M
from audiohook.aws.apigw import Connection
from audiohook.aws.control import ControlResult, SessionDirectory
from audiohook.aws.iam_identity import sts_endpoint
from audiohook.aws.relay_control import CONTROL_PATH, serve_request
from audiohook.aws.service import AudioHookService, RecordWriter, RouteResult
from audiohook.aws.store import SessionStore, StoredSession
from audiohook.aws.stream import KinesisWriter, PutOutcome
from audiohook.config import Settings
from audiohook.protocol import parse_client_message
from audiohook.records import encode_lifecycle_record
from audiohook.relay.buffer import AudioBuffer, Batch, SessionAudio
from audiohook.relay.metrics import RelayMetrics
from audiohook.relay.putrecords import PutRecordsClient
from audiohook.session import (
    Outcome,
    Reconnect,
    Refused,
    ServerAction,
    Session,
    accept_audio,
    act,
    continued_session_ids,
    disconnect,
    finish,
    pending_audio_may_wait,
    receive,
    receive_audio,
    streaming_sample_bytes,
)

logger = Logger(service="audiohook")

HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
RELAY_API_ID = "relay"
# Text messages are at most 64 KiB (the core answers bigger ones with a protocol error, so
# they must get through); audio frames are a few KiB. A bigger frame closes the connection.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_REQUEST_HEAD_BYTES = 64 * 1024  # request line + headers of the upgrade
UPGRADE_TIMEOUT_S = 10.0  # to receive the upgrade request
MAX_UNSENT_BYTES = 1024 * 1024  # replies a client leaves unread beyond this: treated as gone
METRICS_LOG_INTERVAL_S = 60.0
SHUTDOWN_INFO = "server shutting down"
RECONNECT_INFO = "server task stopping: continue on a new connection"
# What a streaming connection holds before the next flush at most (a client sending faster
# than real time hands its frames over sooner, bigger frames take the ordinary path): 16
# real-time frames are 3.2 s of audio; 2,000 bursting connections hold 1 GiB at most.
MAX_PENDING_FRAMES = 16
MAX_PENDING_FRAME_BYTES = 32 * 1024
GC_THRESHOLDS = (20_000, 10, 10)  # gc.set_threshold for the relay process (see serve_relay)
TAKE_SLICE = 200  # links whose pending frames a flush takes before letting the loop run
MAX_CONTROL_REQUEST_BYTES = 256 * 1024  # an event is at most 64 KiB; its JSON request a little more
CONTROL_APPLY_TIMEOUT_S = 5.0

_T = TypeVar("_T")


# --------------------------------------------------------------------------- session store
class CachedSessionStore(SessionStore):
    """The session store of a front that owns its connections: ``$connect`` goes through it
    (nonce, item creation) and the created item stays in memory for the connection's driver;
    every other call runs on the wrapped store (same table, same item shape)."""

    def __init__(self, inner: SessionStore) -> None:
        # No super().__init__(): every DynamoDB call goes through ``inner``.
        self._inner = inner
        self._created: dict[str, StoredSession] = {}
        self.owner: str | None = None  # this task's control address, recorded in each session item

    def __getattr__(self, name: str) -> Any:
        if name in ("_inner", "_created", "owner"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property  # type: ignore[override]
    def calls(self) -> int:
        return self._inner.calls

    @calls.setter
    def calls(self, value: int) -> None:
        self._inner.calls = value

    def remember_nonce(self, nonce: str, expires_at: int, connection_id: str = "") -> bool:
        return self._inner.remember_nonce(nonce, expires_at, connection_id)

    def create(self, connection_id: str, session: Session, api_key: str | None, owner: str | None = None) -> None:
        self._inner.create(connection_id, session, api_key, owner=owner or self.owner)
        self._created[connection_id] = StoredSession(connection_id, session, version=1, delivered=0, api_key=api_key)

    def load(self, connection_id: str) -> StoredSession | None:
        return self._inner.load(connection_id)

    def save(self, stored: StoredSession) -> bool:
        return self._inner.save(stored)

    def mark_delivered(self, connection_id: str, seq: int) -> None:
        self._inner.mark_delivered(connection_id, seq)

    def take_created(self, connection_id: str) -> StoredSession | None:
        """The item ``$connect`` just created for this connection (once)."""
        return self._created.pop(connection_id, None)


# --------------------------------------------------------------------------- metrics
@dataclass(slots=True)
class RelayCounters:
    sessions_total: int = 0
    upgrades_rejected: int = 0
    upgrades_refused_draining: int = 0
    messages: int = 0
    frames: int = 0
    audio_bytes: int = 0
    frames_ignored: int = 0  # audio after the session ended or failed (the core ignores it)
    protocol_errors: int = 0
    kinesis_calls: int = 0
    kinesis_retries: int = 0
    kinesis_throttles: int = 0
    kinesis_failed_entries: int = 0
    dynamodb_saves: int = 0
    backpressure_pauses: int = 0
    errors: int = 0  # unexpected exceptions (each one is logged)


# --------------------------------------------------------------------------- HTTP side of the upgrade
@dataclass(slots=True)
class _Request:
    method: str
    target: str  # path and query, as sent
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str:
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), "")


def _parse_request(head: bytes) -> _Request | None:
    """Request line and headers of an HTTP/1.1 request (the upgrade). None: not HTTP/1.1.

    Hand-written (a dozen lines) because the gate must read the headers before picows sees
    the request: the decision needs ``$connect``, which is asynchronous.
    """
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return None
        headers.append((name, value.strip()))
    return _Request(parts[0], parts[1], headers)


def _http_answer(status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    data = body.encode()
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Rejected"
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n").encode() + data


class _UpgradeGate(asyncio.Protocol):
    """Reads one HTTP request, lets the relay decide, then hands the socket to picows."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._head = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._deciding = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self._relay._gates.add(self)
        self._timer = asyncio.get_running_loop().call_later(UPGRADE_TIMEOUT_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._deciding:
            self._head += data
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_REQUEST_HEAD_BYTES:
                self.answer(_http_answer(431, "Request header fields too large\n"))
            return
        self._deciding = True
        assert self.transport is not None
        self.transport.pause_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._relay._spawn(self._relay._upgrade(self, bytes(self._head), end))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
        self._relay._gates.discard(self)

    def answer(self, response: bytes) -> None:
        """Answer the request (not an upgrade) and close."""
        if self.transport is not None and not self.lost:
            self.transport.write(response)
            self.transport.close()

    def hand_over(self, link: _Link) -> None:
        """The upgrade is accepted: picows reads the same request and completes the handshake."""
        transport = self.transport
        assert transport is not None
        self._relay._gates.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        protocol = WSProtocol(None, None, False, lambda request: link, _PICOWS_LOGGER, True, UPGRADE_TIMEOUT_S,
                              False, 20.0, 20.0, _AUTO_PING_WHEN_IDLE, True, MAX_MESSAGE_BYTES, None, 16 * 1024)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data = memoryview(self._head)
        while data:
            buffer = protocol.get_buffer(len(data))
            n = min(len(buffer), len(data))
            buffer[:n] = data[:n]
            protocol.buffer_updated(n)
            data = data[n:]
        transport.resume_reading()


def _picows_auto_ping() -> Any:
    from picows import WSAutoPingStrategy

    return WSAutoPingStrategy.PING_WHEN_IDLE


_AUTO_PING_WHEN_IDLE = _picows_auto_ping()
_BINARY = WSMsgType.BINARY
_PICOWS_LOGGER = logging.getLogger("picows.server")


# --------------------------------------------------------------------------- connections
class _Link(WSListener):  # type: ignore[misc]
    """One accepted connection: its session, its queue for Kinesis, and its WebSocket."""

    def __init__(self, relay: Relay, connection: Connection, stored: StoredSession, audio: SessionAudio) -> None:
        super().__init__()
        self.relay = relay
        self.connection = connection
        self.id = connection.connection_id
        self.stored = stored
        self.session = stored.session
        self.audio = audio
        self.transport: WSTransport | None = None
        self.fragments: list[bytes] | None = None  # a fragmented message being reassembled
        self.fragment_type: WSMsgType | None = None
        self.close_status: tuple[int, str] | None = None
        self.finished = False
        self.dirty = False  # state changed since the last save began
        self.saver: asyncio.Task[None] | None = None
        # Frames that arrived while an ``open`` waits for its continued sessions' lookup,
        # applied after it in arrival order (None: no lookup running).
        self.backlog: list[tuple[bool, bytes]] | None = None
        # The per-frame path: while the session streams (``streaming_sample_bytes`` not 0),
        # audio frames wait here, unaccounted, until the next flush or the next other input
        # (Relay._take_pending), which hands them to the core and the buffer in one step.
        self.sample_bytes = 0
        self.pending: list[bytes] = []
        self.pending_since = 0.0  # when the first pending frame arrived

    def log(self) -> dict[str, Any]:
        return {"connection_id": self.id, "session_id": self.session.session_id,
                "conversation_id": self.session.conversation_id}

    # picows callbacks (on the event loop) -------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.relay._connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        sample_bytes = self.sample_bytes
        if sample_bytes and frame.msg_type is _BINARY and frame.fin:
            size = frame.payload_size
            if size and not size % sample_bytes and size <= MAX_PENDING_FRAME_BYTES:  # the hot path
                pending = self.pending
                if not pending:
                    self.pending_since = self.relay._filling(self)
                pending.append(frame.get_payload_as_bytes())
                if len(pending) >= MAX_PENDING_FRAMES:
                    self.relay._take_pending(self)
                return
        self._frame(transport, frame)

    def _frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.BINARY and frame.fin:
            self.relay._audio(self, frame.get_payload_as_bytes())
        elif kind is WSMsgType.TEXT and frame.fin:
            self.relay._text(self, frame.get_payload_as_bytes())
        elif kind is WSMsgType.CLOSE:
            self._closed_by_client(transport, frame)
        elif kind in (WSMsgType.TEXT, WSMsgType.BINARY):  # first fragment of a message
            self.fragments, self.fragment_type = [frame.get_payload_as_bytes()], kind
        elif kind is WSMsgType.CONTINUATION and self.fragments is not None:
            self.fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), None
                if len(data) > MAX_MESSAGE_BYTES:
                    transport.send_close(WSCloseCode.MESSAGE_TOO_BIG)
                    transport.disconnect()
                elif self.fragment_type is WSMsgType.BINARY:
                    self.relay._audio(self, data)
                else:
                    self.relay._text(self, data)

    def _closed_by_client(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.close_status is None:
            if frame.payload_size >= 2:
                code = int(frame.get_close_code())
                self.close_status = (code, f"Client-side close frame status set to '{code}'")
                transport.send_close(frame.get_close_code())
            else:
                self.close_status = (1005, "Client-side close frame status not set")
                transport.send_close(WSCloseCode.OK)
        transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.sample_bytes = 0
        self.relay._spawn(self.relay._finish(self, self.close_status or (1006, "Connection lost")))

    # sending -------------------------------------------------------------------------------
    def send_texts(self, texts: list[str]) -> bool:
        """Write server messages in order; False: the connection is gone (or stopped reading)."""
        transport = self.transport
        if transport is None or transport.is_disconnected or transport.is_close_frame_sent:
            return False
        if transport.underlying_transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            logger.warning("client does not read our messages; treated as gone", extra=self.log())
            transport.disconnect(graceful=False)
            return False
        for text in texts:
            transport.send(WSMsgType.TEXT, text.encode())
        return True

    def close(self, code: WSCloseCode, reason: str) -> None:
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        if self.close_status is None:
            self.close_status = (code.value, f"Server-side close: {reason}")
        if not transport.is_close_frame_sent:
            transport.send_close(code, reason.encode())
        transport.disconnect()


# --------------------------------------------------------------------------- control listener
class _ControlGate(asyncio.Protocol):
    """One HTTP/1.1 request on the control port (``POST /control``), answered, then closed."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._data = bytearray()
        self.transport: asyncio.Transport | None = None
        self._taken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        self._timer = asyncio.get_running_loop().call_later(UPGRADE_TIMEOUT_S, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._taken:
            return
        self._data += data
        end = self._data.find(b"\r\n\r\n")
        if end < 0:
            if len(self._data) > MAX_REQUEST_HEAD_BYTES:
                self.answer(413, {"code": "bad_request", "reason": "request head too large"})
            return
        request = _parse_request(bytes(self._data[:end]))
        if request is None:
            self.answer(400, {"code": "bad_request", "reason": "not an HTTP/1.1 request"})
            return
        try:
            length = int(request.header("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_CONTROL_REQUEST_BYTES:
            self.answer(413, {"code": "bad_request", "reason": f"the body must be 0..{MAX_CONTROL_REQUEST_BYTES} bytes"})
            return
        if len(self._data) < end + 4 + length:
            return
        self._taken = True
        self._timer.cancel()
        if request.method != "POST" or request.target.partition("?")[0] != CONTROL_PATH:
            self.answer(404, {"code": "bad_request", "reason": f"POST {CONTROL_PATH} is the only request here"})
            return
        self._relay._spawn(self._relay._control(self, request, bytes(self._data[end + 4:end + 4 + length])))

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()

    def answer(self, status: int, document: dict[str, Any]) -> None:
        self._taken = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_http_answer(status, json.dumps(document), "application/json"))
            self.transport.close()


# --------------------------------------------------------------------------- the relay
class Relay:
    """The relay server. ``async with Relay(service, host="127.0.0.1", port=0) as relay: relay.url``.

    ``service`` is built as for the Lambdas (e.g. ``wiring.build_service``); the relay runs its
    ``on_connect`` (through a store that keeps the created item in memory), its policy, clock
    and metrics, and sends the records through its record writer (``service.records``, a
    KinesisWriter). Unset options come from ``service.settings`` (``RELAY_*``).
    """

    def __init__(
        self,
        service: AudioHookService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        flush_ms: int | None = None,
        max_buffer_bytes: int | None = None,
        drain_s: float | None = None,
        close_wait_s: float = 10.0,
        max_pause_s: float = 1.0,
        max_inflight: int = 4,
        max_requeues: int = 3,
        workers: int = 16,
        final_flush_s: float = 15.0,
        metrics_interval_s: float | None = None,
        control_port: int | None = None,
        control_roles: frozenset[str] | None = None,
        control_address: str | None = None,
        sts_url: str | None = None,
        metadata_uri: str | None = None,
        metadata_poll_s: float | None = None,
        directory: SessionDirectory | None = None,
    ) -> None:
        settings = service.settings
        self.host = host
        self._port = port
        self._flush_s = (settings.relay_flush_ms if flush_ms is None else flush_ms) / 1000
        if self._flush_s <= 0:
            raise ValueError("the flush interval must be positive")
        self.drain_s = float(settings.relay_drain_s if drain_s is None else drain_s)
        self._close_wait_s = close_wait_s
        self._max_pause_s = max_pause_s
        self._max_inflight = max_inflight
        self._workers = workers
        self._final_flush_s = final_flush_s
        self._writer: RecordWriter = service.records
        if isinstance(self._writer, KinesisWriter):
            self._writer = self._writer.using(PutRecordsClient(self._writer.client))
        self.store = CachedSessionStore(service.store)
        self.buffer = AudioBuffer(
            settings.relay_max_buffer_bytes if max_buffer_bytes is None else max_buffer_bytes,
            max_requeues=max_requeues, wall_clock=service.clock,
        )
        self.counters = RelayCounters()
        self.service = copy.copy(service)
        self.service.store = self.store
        # CloudWatch metrics (EMF on stdout): the service's counts plus the relay's, per interval.
        self.emf = RelayMetrics(settings.metrics_namespace)
        self.service.metrics = self.emf
        self._metrics_interval_s = float(settings.relay_metrics_s if metrics_interval_s is None else metrics_interval_s)
        self._policy = service.policy
        self._clock = service.clock
        self._links: dict[str, _Link] = {}
        self._gates: set[_UpgradeGate] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._kinesis_pool: ThreadPoolExecutor | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._paused: list[_Link] = []  # links not read while the buffer makes room
        self._filled: list[_Link] = []  # links with pending frames (the per-frame path)
        self._pause_timer: asyncio.TimerHandle | None = None
        self._no_links = asyncio.Event()
        self._drained = asyncio.Event()
        self._overflowing = False
        self._backlog = False  # records were left queued because max_inflight calls were out
        self._stopping = False
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None
        # Control listener (docs/control.md): on when some role may act on this task's sessions.
        self.control_roles = settings.control_roles if control_roles is None else control_roles
        self._control_port = settings.relay_control_port if control_port is None else control_port
        self._control_address = control_address or settings.relay_control_host
        endpoint = settings.aws_endpoint_url
        self.sts_url = sts_url or (endpoint.rstrip("/") + "/" if endpoint else sts_endpoint(_region()))
        self._control_server: asyncio.Server | None = None
        # ECS: the task's address, and DesiredStatus STOPPED as the earliest sign of a stop.
        self._metadata_uri = settings.ecs_metadata_uri if metadata_uri is None else metadata_uri
        self._metadata_poll_s = (settings.relay_metadata_poll_ms / 1000 if metadata_poll_s is None
                                 else metadata_poll_s)
        # continuedSessions are looked up in the sessions table (the old session's item).
        self.directory = directory or SessionDirectory(service.store._client, settings.sessions_table)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="relay")
        self._kinesis_pool = ThreadPoolExecutor(self._max_inflight, thread_name_prefix="relay-kinesis")
        self._no_links.set()
        self._server = await self._loop.create_server(lambda: _UpgradeGate(self), self.host, self._port,
                                                      reuse_address=True, backlog=4096)
        if self.control_roles:
            self._control_server = await self._loop.create_server(lambda: _ControlGate(self), self.host,
                                                                  self._control_port, reuse_address=True)
            self.store.owner = await self._owner_address()
        if self._metadata_uri:
            self._spawn(self._watch_task_metadata())
        self._flusher = self._spawn(self._flush_loop())
        self._spawn(self._log_metrics())
        self._spawn(self.emf.run(self, self._metrics_interval_s))
        logger.info("relay listening", extra={"url": self.url, "flush_ms": self._flush_s * 1000,
                                             "max_buffer_bytes": self.buffer.max_bytes, "drain_s": self.drain_s,
                                             "control": self.control_address})
        return self

    async def _owner_address(self) -> str:
        """``ip:port`` other components reach the control port at (recorded as ``owner``)."""
        assert self._control_server is not None
        port = int(self._control_server.sockets[0].getsockname()[1])
        host = self._control_address
        if not host and self._metadata_uri:
            from audiohook.relay.ecs import task_address

            host = await self._call(task_address, self._metadata_uri)
        if not host:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{port}"

    @property
    def control_address(self) -> str | None:
        """This task's control listener (``ip:port``), None when control is off."""
        return self.store.owner

    async def stop(self) -> None:
        """Drain with no grace period (sessions still open get ``disconnect`` at once)."""
        if self._server is not None:
            await self.drain(grace_s=0)
        self._shutdown_pools()

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            self._shutdown_pools()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def request_drain(self) -> None:
        """Start draining (the SIGTERM handler); a second call changes nothing."""
        if self._drain_task is None:
            logger.info("drain requested")
            self._drain_task = self._spawn(self._drain(self.drain_s))

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop taking sessions, let them end within ``grace_s`` (default RELAY_DRAIN_S), then
        ``disconnect`` the rest, close the sockets, flush the records and stop serving."""
        if self._drain_task is None:
            self._drain_task = self._spawn(self._drain(self.drain_s if grace_s is None else grace_s))
        await asyncio.shield(self._drain_task)

    async def wait_drained(self) -> None:
        await self._drained.wait()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the relay is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"ws://{host}:{self.port}/"

    def sessions(self) -> int:
        return len(self._links)

    def session_ids(self) -> list[str]:
        """The ids of the sessions this relay holds (opened or not yet)."""
        return [link.session.session_id for link in self._links.values() if link.session.session_id]

    def metrics(self) -> dict[str, Any]:
        c, b = self.counters, self.buffer.counters
        latency = self.buffer.latency
        return {
            "status": "draining" if self.draining else "serving",
            "sessions": len(self._links),
            "sessions_total": c.sessions_total,
            "upgrades_rejected": c.upgrades_rejected,
            "upgrades_refused_draining": c.upgrades_refused_draining,
            "messages": c.messages,
            "frames": c.frames,
            "bytes": c.audio_bytes,
            "frames_ignored": c.frames_ignored,
            "frames_delivered": b.frames_delivered,
            "records": b.audio_records + b.lifecycle_records,
            "audio_records": b.audio_records,
            "lifecycle_records": b.lifecycle_records,
            "records_requeued": b.requeued,
            "kinesis_calls": c.kinesis_calls,
            "kinesis_retries": c.kinesis_retries,
            "kinesis_failed_entries": c.kinesis_failed_entries,
            "dynamodb_calls": self.store.calls,
            "dynamodb_saves": c.dynamodb_saves,
            "gaps": b.gaps,
            "dropped": b.frames_dropped,
            "dropped_bytes": b.bytes_dropped,
            "dropped_samples": b.samples_dropped,
            "lifecycle_dropped": b.lifecycle_dropped,
            "buffered_bytes": self.buffer.buffered,
            "max_buffer_bytes": self.buffer.max_bytes,
            "backpressure_pauses": c.backpressure_pauses,
            "protocol_errors": c.protocol_errors,
            "errors": c.errors,
            "delay_ms": {"count": latency.count, "p50": latency.percentile(50), "p99": latency.percentile(99)},
        }

    # ------------------------------------------------------------------ helpers
    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run blocking service code (boto3) in the worker pool."""
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, _with_fresh_log_keys, function, *args)

    def _shutdown_pools(self) -> None:
        for pool in (self._executor, self._kinesis_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._executor = self._kinesis_pool = None

    # ------------------------------------------------------------------ upgrade
    async def _upgrade(self, gate: _UpgradeGate, head: bytes, end: int) -> None:
        try:
            answer = await self._decide(gate, _parse_request(head[:end]))
        except Exception:
            logger.exception("upgrade failed")
            self.counters.errors += 1
            answer = _http_answer(500, "Internal Server Error\n")
        if isinstance(answer, _Link):
            if gate.lost:  # the client left while $connect ran
                await self._finish(answer, (1006, "WebSocket handshake failed"))
            else:
                gate.hand_over(answer)
        else:
            gate.answer(answer)

    async def _decide(self, gate: _UpgradeGate, request: _Request | None) -> bytes | _Link:
        """The answer to one HTTP request: bytes to send, or the accepted connection."""
        if request is None:
            return _http_answer(400, "Bad request\n")
        path = request.target.partition("?")[0]
        if path == HEALTH_PATH:
            return _http_answer(503, "draining\n") if self.draining else _http_answer(200, "ok\n")
        if path == METRICS_PATH:
            return _http_answer(200, json.dumps(self.metrics()) + "\n", "application/json")
        if self.draining:
            self.counters.upgrades_refused_draining += 1
            return _http_answer(503, "Server is shutting down\n")
        if (request.method != "GET" or request.header("Upgrade").lower() != "websocket"
                or not request.header("Sec-WebSocket-Key")):
            return _http_answer(426, "WebSocket upgrade required\n")
        if request.header("Sec-WebSocket-Version") != "13":
            return _http_answer(400, "Sec-WebSocket-Version must be 13\n")
        forwarded = request.header("X-Forwarded-For")  # behind the load balancer
        peer = gate.transport.get_extra_info("peername") if gate.transport is not None else None
        connection = Connection(
            domain_name=request.header("Host"), stage=request.target.partition("?")[0][1:], api_id=RELAY_API_ID,
            source_ip=forwarded.split(",")[0].strip() if forwarded else (str(peer[0]) if peer else ""),
            user_agent=request.header("User-Agent"),
        )
        event = connection.connect(request.headers, query=request.target.partition("?")[2])
        try:
            result: RouteResult = await self._call(self.service.on_connect, event)
            status = int(result.response.get("statusCode", 200))
        except Exception:
            logger.exception("$connect failed", extra={"connection_id": connection.connection_id})
            self.counters.errors += 1
            result, status = RouteResult({"statusCode": 500}), 500
        stored = self.store.take_created(connection.connection_id)
        if status != HTTPStatus.OK or result.session is None or stored is None:
            self.counters.upgrades_rejected += 1
            phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Rejected"
            return _http_answer(status, f"{phrase}\n")
        key = stored.session.session_id or connection.connection_id
        return _Link(self, connection, stored, self.buffer.open_session(key))

    def _connected(self, link: _Link) -> None:
        self._links[link.id] = link
        self._no_links.clear()
        self.counters.sessions_total += 1
        logger.info("session connected", extra=link.log())

    # ------------------------------------------------------------------ the connection's driver
    def _filling(self, link: _Link) -> float:
        """A link's first pending frame since its last take: remember the link; the time."""
        self._filled.append(link)
        return self._loop.time()  # type: ignore[union-attr]

    def _take_pending(self, link: _Link) -> None:
        """The link's pending frames go to the core (one step for all) and to its queue."""
        frames = link.pending
        if not frames:
            return
        link.pending = []
        session = link.session
        start = session.position
        size = sum(map(len, frames))
        accept_audio(session, size, len(frames))
        counters = self.counters
        counters.frames += len(frames)
        counters.audio_bytes += size
        self._queue_audio(link, start, frames, size, link.pending_since)

    async def _take_all_pending(self) -> None:
        """Every link's pending frames, a slice at a time: between slices the loop answers
        what arrived meanwhile (a flush of 2,000 sessions in one go would hold it ~20 ms)."""
        filled, self._filled = self._filled, []
        for start in range(0, len(filled), TAKE_SLICE):
            if start:
                await asyncio.sleep(0)
            for link in filled[start:start + TAKE_SLICE]:
                self._take_pending(link)

    def _queue_audio(self, link: _Link, start: int, frames: list[bytes], size: int, first: float) -> None:
        audio = link.audio
        session = link.session
        if audio.encoder is None:
            assert session.media is not None
            audio.bind(session.media, session.probe)
        buffer = self.buffer
        assert self._loop is not None
        buffer.append_frames(audio, start, session.position, frames, size, first, self._loop.time())
        if buffer.buffered >= buffer.high_watermark and not self._overflowing:
            self._pause(link)

    def _audio(self, link: _Link, frame: bytes) -> None:
        """An audio frame off the per-frame path: applied by the core on its own (a protocol
        error, audio after the end, an empty frame, a frame while ``open`` waits)."""
        if link.backlog is not None:
            link.backlog.append((False, frame))
            return
        self._take_pending(link)
        session = link.session
        start = session.position
        problem = receive_audio(session, len(frame))
        if problem is not None:
            if not problem.replies and not problem.lifecycle:
                self.counters.frames_ignored += 1
            else:
                self._apply(link, problem)
            return
        counters = self.counters
        counters.frames += 1
        counters.audio_bytes += len(frame)
        assert self._loop is not None
        self._queue_audio(link, start, [frame], len(frame), self._loop.time())

    def _text(self, link: _Link, data: bytes) -> None:
        if link.backlog is not None:
            link.backlog.append((True, data))
            return
        self.counters.messages += 1
        try:
            message = parse_client_message(data)
            waits = pending_audio_may_wait(message)
            if not waits:
                self._take_pending(link)
            continued = continued_session_ids(message)
            if continued:
                self._look_up_continued(link, message, continued)
                return
            outcome = receive(link.session, message, self._policy, self._clock())
            if waits and outcome.lifecycle:
                self._take_pending(link)
        except Exception:
            logger.exception("message failed", extra=link.log())
            self.counters.errors += 1
            return
        self._apply(link, outcome)

    def _look_up_continued(self, link: _Link, message: Any, session_ids: list[str]) -> None:
        """An ``open`` continuing other sessions: they are looked up (off the loop) before it is
        applied; what arrives meanwhile waits, in order, and the socket is not read."""
        link.backlog = []
        link.sample_bytes = 0
        if link.transport is not None:
            link.transport.underlying_transport.pause_reading()
        self._spawn(self._open_continued(link, message, session_ids))

    async def _open_continued(self, link: _Link, message: Any, session_ids: list[str]) -> None:
        try:
            found: Any = await self._call(self.directory.continued, session_ids)
        except Exception:  # applied unverified: the opened record says so
            logger.exception("continued sessions not looked up", extra=link.log() | {"continued": session_ids})
            self.counters.errors += 1
            found = None
        if not link.finished:
            self._apply(link, receive(link.session, message, self._policy, self._clock(), found))
        backlog, link.backlog = link.backlog or [], None
        for is_text, data in backlog:
            if link.backlog is not None:  # another lookup started: the rest waits behind it
                link.backlog.append((is_text, data))
            elif is_text:
                self._text(link, data)
            else:
                self._audio(link, data)
        if link.backlog is None and link.transport is not None and not link.transport.is_disconnected:
            link.sample_bytes = streaming_sample_bytes(link.session)
            link.transport.underlying_transport.resume_reading()

    def _apply(self, link: _Link, outcome: Outcome) -> bool:
        """Send the replies (in seq order), queue the lifecycle records, save the session.
        False: there were replies and the connection was gone."""
        session = link.session
        if link.backlog is None and not link.finished:
            link.sample_bytes = streaming_sample_bytes(session)
        if outcome.violation:
            # With a reply it is the session's one protocol error; without, input after the end.
            self.counters.protocol_errors += 1
            log = logger.warning if outcome.replies else logger.info
            log("protocol error" if outcome.replies else "input ignored",
                extra=link.log() | {"info": outcome.violation})
        self.service.count_outcome(session, outcome)
        sent = True
        if outcome.replies:
            sent = link.send_texts([reply.to_json() for reply in outcome.replies])
            if not sent:
                logger.info("connection gone; replies dropped", extra=link.log())
                self.service.metric(M.GONE_CONNECTIONS)
        if outcome.lifecycle:
            self._queue_records(link, outcome)
            self._persist(link)
        elif outcome.replies and session.reconnect_seq is not None:
            # The session is moving: the continuing session's open is checked against the seq
            # in the item, so every reply from now on is written through (a pong included).
            self._persist(link)
        return sent

    # ------------------------------------------------------------------ control
    async def _control(self, gate: _ControlGate, request: _Request, body: bytes) -> None:
        """One control request: verified with STS and parsed in a worker thread, applied here."""
        assert self._loop is not None
        loop = self._loop
        address = self.control_address or ""

        def apply(session_id: str, action: ServerAction) -> ControlResult:  # worker thread
            future = asyncio.run_coroutine_threadsafe(self._act_now(session_id, action), loop)
            return future.result(CONTROL_APPLY_TIMEOUT_S)

        try:
            status, document = await self._call(functools.partial(
                serve_request, body, dict(request.headers), audience=address, allowed_roles=self.control_roles,
                endpoint=self.sts_url, now=datetime.fromtimestamp(self._clock(), UTC), apply=apply))
        except Exception:
            logger.exception("control request failed")
            self.counters.errors += 1
            status, document = 500, {"code": "error", "reason": "the relay task failed to apply the request"}
        if status == 403:
            logger.warning("control request refused", extra={"reason": document.get("reason")})
        gate.answer(status, document)

    async def _act_now(self, session_id: str, action: ServerAction) -> ControlResult:
        return self.apply_action(session_id, action)

    def apply_action(self, session_id: str, action: ServerAction) -> ControlResult:
        """Apply a server-originated action to a session of this task, in the connection's own
        order (on the event loop, between two client messages), and write it to the socket."""
        wanted = session_id.lower()
        link = next((link for link in self._links.values()
                     if not link.finished and (link.session.session_id or "").lower() == wanted), None)
        if link is None:
            return ControlResult(action.name, session_id, False, "unknown_session",
                                 f"no live session {session_id} on relay task {self.control_address}")
        self._take_pending(link)
        outcome = act(link.session, action)
        if isinstance(outcome, Refused):
            return ControlResult(action.name, session_id, False, outcome.code, outcome.reason,
                                 outcome.state or link.session.state.value)
        message = json.loads(outcome.replies[0].to_json())
        logger.info("control action", extra=link.log() | {"action": action.name, "seq": message["seq"]})
        if not self._apply(link, outcome):
            return ControlResult(action.name, session_id, False, "gone",
                                 "the connection closed before the message could be written",
                                 link.session.state.value, message)
        return ControlResult(action.name, session_id, True, "delivered", "written to the client's socket",
                             link.session.state.value, message)

    # ------------------------------------------------------------------ ECS task metadata
    async def _watch_task_metadata(self) -> None:
        """Drain as soon as ECS wants the task STOPPED (before deregistration ends and SIGTERM)."""
        from audiohook.relay.ecs import desired_status

        assert self._metadata_uri
        failing = False
        while self._drain_task is None:
            try:
                status = await self._call(desired_status, self._metadata_uri)
                failing = False
            except Exception as error:
                if not failing:
                    logger.warning("ECS task metadata not readable", extra={"error": str(error)})
                failing = True
                status = ""
            if status == "STOPPED":
                logger.info("ECS is stopping this task (DesiredStatus STOPPED)")
                self.request_drain()
                return
            await asyncio.sleep(self._metadata_poll_s)

    def _queue_records(self, link: _Link, outcome: Outcome) -> None:
        session = link.session
        at = datetime.fromtimestamp(self._clock(), UTC)
        key = link.audio.key
        self.buffer.add_records(link.audio, [
            encode_lifecycle_record(key, item.event, at, session.position, session.probe, item.data)
            for item in outcome.lifecycle])
        if self._stopping:
            self._wake.set()

    # ------------------------------------------------------------------ DynamoDB write-through
    def _persist(self, link: _Link) -> asyncio.Task[None]:
        """Save the session in the background: one save at a time per connection, in order;
        what changes meanwhile goes in the next save."""
        link.dirty = True
        if link.saver is None or link.saver.done():
            link.saver = self._spawn(self._save_loop(link))
        return link.saver

    async def _save_loop(self, link: _Link) -> None:
        while link.dirty:
            link.dirty = False
            snapshot = StoredSession(link.id, dataclasses.replace(link.session), link.stored.version,
                                     link.session.seq, api_key=link.stored.api_key)
            try:
                saved = await self._call(self._save, snapshot, link.finished)
            except Exception:
                logger.exception("session item not saved", extra=link.log())
                self.counters.errors += 1
                continue
            link.stored.version = snapshot.version
            if not saved:
                logger.error("session item changed behind the relay's back; not saved", extra=link.log())

    def _save(self, snapshot: StoredSession, final: bool) -> bool:
        """Worker thread: the session item; the final save also sets its delivered mark (every
        reply was written to the socket as it was made)."""
        self.counters.dynamodb_saves += 1
        if not self.store.save(snapshot):
            return False
        if final and snapshot.session.seq:
            self.store.mark_delivered(snapshot.connection_id, snapshot.session.seq)
        return True

    # ------------------------------------------------------------------ backpressure
    def _pause(self, link: _Link) -> None:
        """Stop reading this socket until the flusher has made room (at most ``max_pause_s``)."""
        if link.transport is None:
            return
        self.counters.backpressure_pauses += 1
        link.transport.underlying_transport.pause_reading()
        self._paused.append(link)
        self._wake.set()
        if self._pause_timer is None:
            assert self._loop is not None
            self._pause_timer = self._loop.call_later(self._max_pause_s, self._overflow)

    def _overflow(self) -> None:
        self._pause_timer = None
        if not self._overflowing:
            logger.warning("Kinesis is not keeping up: reading resumes and audio beyond the buffer "
                           "limit is dropped and recorded as gaps",
                           extra={"buffered_bytes": self.buffer.buffered, "max_bytes": self.buffer.max_bytes})
        self._overflowing = True
        self._resume_reading()

    def _resume_reading(self) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        paused, self._paused = self._paused, []
        for link in paused:
            if link.transport is not None and not link.transport.is_disconnected:
                link.transport.underlying_transport.resume_reading()

    # ------------------------------------------------------------------ end of a connection
    async def _finish(self, link: _Link, status: tuple[int, str]) -> None:
        """The socket is gone: the final state is saved, then ``disconnected`` is queued, last."""
        if link.finished:
            return
        self._take_pending(link)
        link.finished = True
        link.sample_bytes = 0
        self._links.pop(link.id, None)
        code, reason = status
        outcome = finish(link.session, self._clock(), code, reason)
        if outcome.lifecycle:
            logger.info("session finished", extra=link.log() | {"state": link.session.state.value})
            saver = self._persist(link)
            try:
                await asyncio.shield(saver)
            except Exception:  # pragma: no cover - _save_loop logs its own failures
                pass
            self._queue_records(link, outcome)
            if link.session.session_id:  # the session id may be used by a new connection
                try:
                    await self._call(self.store.release_session_id, link.session.session_id, link.id)
                except Exception:  # the marker's TTL ends it anyway
                    logger.exception("session id marker not released", extra=link.log())
        self.buffer.finish(link.audio)
        logger.info("session disconnected", extra=link.log() | {"status_code": code, "reason": reason})
        if not self._links:
            self._no_links.set()

    # ------------------------------------------------------------------ Kinesis
    async def _flush_loop(self) -> None:
        """Every ``flush_s``: take the pending frames, then send. A wake in between (a call
        returned with records left over, memory runs high) only sends: taking the frames of
        the interval so far would split every session's record of that interval in two."""
        buffer = self.buffer
        loop = self._loop
        assert loop is not None
        next_take = loop.time() + self._flush_s
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_take - loop.time()))
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping or loop.time() >= next_take:
                next_take = loop.time() + self._flush_s
                await self._take_all_pending()
            await self._dispatch()
            if self._stopping and buffer.idle:
                return

    async def _dispatch(self) -> None:
        """Send what is queued, ``max_inflight`` calls at most; what does not fit goes as soon
        as a call returns (``_backlog``), not at the next tick. The loop runs between two
        batches (each encodes up to 500 records)."""
        while self.buffer.inflight_batches < self._max_inflight:
            batch = self.buffer.take_batch()
            if batch is None:
                self._backlog = False
                return
            self._spawn(self._put(batch))
            await asyncio.sleep(0)
        self._backlog = bool(self.buffer.ready)

    async def _put(self, batch: Batch) -> None:
        assert self._loop is not None
        failures: dict[int, str]
        try:
            outcome: PutOutcome = await self._loop.run_in_executor(self._kinesis_pool, self._writer.put, batch.entries)
            failures = {entry.index: entry.error_code for entry in outcome.undelivered}
            self.counters.kinesis_calls += outcome.calls
            self.counters.kinesis_retries += outcome.retries
            self.counters.kinesis_throttles += outcome.throttled
        except Exception as error:  # the writer never raises for AWS errors; anything else is a bug
            logger.exception("Kinesis writer failed")
            self.counters.errors += 1
            failures = dict.fromkeys(range(len(batch.entries)), type(error).__name__)
        if failures:
            self.counters.kinesis_failed_entries += len(failures)
            codes: dict[str, int] = {}
            for code in failures.values():
                codes[code] = codes.get(code, 0) + 1
            logger.warning("Kinesis did not take every record after retries; they are queued again",
                           extra={"failed": len(failures), "of": len(batch.entries), "errors": codes})
        buffer = self.buffer
        buffer.settle(batch, failures, self._loop.time())
        if buffer.buffered < buffer.low_watermark:
            self._overflowing = False
            if self._paused:
                self._resume_reading()
        if self._stopping or self._backlog or buffer.buffered >= buffer.high_watermark:
            self._wake.set()

    async def _stop_flusher(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._flusher is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._flusher), self._final_flush_s)
        except TimeoutError:
            self._flusher.cancel()
            self.buffer.abandon(f"Kinesis did not take them within {self._final_flush_s:g} s of shutting down")

    async def _log_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_LOG_INTERVAL_S)
            logger.info("relay metrics", extra={"metrics": self.metrics()})

    # ------------------------------------------------------------------ drain
    async def _wait_no_links(self, timeout_s: float) -> None:
        if self._links and timeout_s > 0:
            try:
                await asyncio.wait_for(self._no_links.wait(), timeout_s)
            except TimeoutError:
                pass

    async def _drain(self, grace_s: float) -> None:
        self.draining = True
        logger.info("draining: new sessions refused", extra={"sessions": len(self._links), "grace_s": grace_s})
        if grace_s > 0:
            # Move the calls: each client opens a continuing session elsewhere (the load
            # balancer no longer sends anything here), then closes this one (reason reconnect).
            moving = 0
            for link in list(self._links.values()):
                session_id = link.session.session_id
                if session_id and self.apply_action(session_id, Reconnect(RECONNECT_INFO)).delivered:
                    moving += 1
            logger.info("reconnect sent", extra={"sessions": moving})
        await self._wait_no_links(grace_s)
        remaining = list(self._links.values())
        if remaining:
            logger.info("disconnecting the sessions still open", extra={"sessions": len(remaining)})
            for link in remaining:
                if not link.finished:
                    self._take_pending(link)
                    self._apply(link, disconnect(link.session, "completed", SHUTDOWN_INFO))
            await self._wait_no_links(self._close_wait_s)
        if self._server is not None:
            self._server.close()
        if self._control_server is not None:
            self._control_server.close()
            self._control_server = None
        for link in list(self._links.values()):  # the rest: closed, then finished
            link.close(WSCloseCode.GOING_AWAY, SHUTDOWN_INFO)
        await self._wait_no_links(self._close_wait_s)
        for link in list(self._links.values()):  # pragma: no cover - a socket that never closed
            await self._finish(link, (1001, "Going away"))
        for gate in list(self._gates):
            if gate.transport is not None:
                gate.transport.abort()
        while any(not task.done() and task.get_coro().__name__ in ("_upgrade", "_finish", "_save_loop")  # type: ignore[union-attr]
                  for task in self._tasks if task is not asyncio.current_task()):
            await asyncio.sleep(0.01)
        await self._stop_flusher()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._server = None
        self.emf.flush(self)  # the last interval, Kinesis' final answers included
        logger.info("relay drained", extra={"metrics": self.metrics()})
        self._drained.set()


def _region() -> str:
    from audiohook.aws.wiring import _botocore

    return str(_botocore().get_config_variable("region") or "us-east-1")


def _with_fresh_log_keys(function: Callable[..., _T], *args: Any) -> _T:
    """Run service code in a worker thread with no log keys of the session it worked for before."""
    logger.thread_safe_clear_keys()
    return function(*args)


# --------------------------------------------------------------------------- entry point
def build_relay_service(settings: Settings) -> AudioHookService:
    """The service with boto3 clients sized for a long-running server (pools for the workers)."""
    from botocore.config import Config

    from audiohook.aws.wiring import build_service, client

    dynamodb = client("dynamodb", Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2,
                                         read_timeout=5, max_pool_connections=64))
    # The Kinesis writer retries with its own backoff; botocore must not multiply it. Its
    # entries are well-formed by construction: botocore's validation of every record of
    # every PutRecords call would only cost CPU.
    kinesis = client("kinesis", Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10,
                                       max_pool_connections=16, parameter_validation=False))
    return build_service(settings, dynamodb=dynamodb, kinesis=kinesis)


async def serve_relay(settings: Settings | None = None, *, service: AudioHookService | None = None,
                      host: str = "0.0.0.0", port: int | None = None, handle_signals: bool = True) -> int:
    """Serve until SIGTERM/SIGINT, drain, return the exit status (0)."""
    settings = settings or Settings.from_env()
    relay = Relay(service or build_relay_service(settings), host=host,
                  port=settings.relay_port if port is None else port)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    async with relay:
        # What exists now (modules, botocore's models, the clients) lives as long as the
        # process: the collector need not walk it again on every full collection. Young
        # collections are rarer too: nearly everything the relay allocates dies by reference
        # count (frames, records, replies); in back-to-back runs at 2,000 sessions (bench/relay_bench.py), CPython's default
        # (700) cost 5-15% more CPU and 2-3x the steady ping->pong p99.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        for signum in signals:
            loop.add_signal_handler(signum, relay.request_drain)
        try:
            await relay.wait_drained()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
    return 0


def main() -> None:
    import uvloop  # the relay's event loop in production: its sockets cost less CPU than asyncio's

    sys.exit(uvloop.run(serve_relay()))


if __name__ == "__main__":
    main()
