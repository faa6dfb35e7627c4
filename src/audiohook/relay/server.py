"""The relay: the binary-capable AudioHook front, running the service in-process.

API Gateway WebSocket APIs close the connection on the first binary frame, and Genesys sends
all audio as binary frames. The relay terminates Genesys' WebSocket itself (``websockets``
asyncio server) and feeds the same service (:mod:`audiohook.aws.service`) the same API
Gateway-shaped events (:mod:`audiohook.aws.apigw`) the Lambda handlers get:

- **upgrade** -> ``$connect`` event -> ``service.on_connect`` (in a thread: boto3 blocks).
  Any answer but 200 is the HTTP answer to the upgrade (401) and nothing is kept. The
  signed ``@request-target`` is the upgrade request's own path: the relay's "stage" is that
  path without its leading slash, so the service derives ``/<stage>`` = the real path just as
  it does behind API Gateway (``REQUEST_TARGET``, when set, still overrides it).
- **text frame** -> ``$default`` event -> ``service.on_message``: one at a time per
  connection, in arrival order; the replies go straight to the socket, in ``seq`` order.
- **binary frame** -> the direct path: ``session.receive_audio`` on the session held in
  memory, then the frame joins its session's queue (:mod:`audiohook.relay.buffer`). No event,
  no pydantic, no JSON, no base64, no AWS call per frame. A protocol error (audio before
  ``open``, a bad frame length) goes out through the service's normal delivery.
- **socket closed** -> ``$disconnect`` event -> ``service.on_disconnect``, once.

The relay owns its connections, so it keeps each session item in memory
(:class:`CachedSessionStore`): reads come from memory, writes still go to the same
DynamoDB item. Lifecycle records join the session's queue behind its audio, so a session's
records reach Kinesis in order; a flusher sends PutRecords batches across sessions every
``RELAY_FLUSH_MS`` (or sooner when a batch is full), at most ``max_inflight`` calls at once
and one per session at a time.

Memory is bounded by ``RELAY_MAX_BUFFER_BYTES``: above 3/4 of it, readers stop reading audio
(TCP pushes back on the client) until the buffer is below 1/2; if that takes longer than
``max_pause_s`` (Kinesis is down), reading goes on and frames that do not fit are dropped,
counted, logged and recorded as ``gap`` records. Audio Kinesis refuses beyond the writer's
retries is queued again ``max_requeues`` times, then recorded as a gap.

HTTP ``GET /health`` (200 serving, 503 draining) and ``GET /metrics`` (JSON counters) are
answered on the same port. SIGTERM drains: health turns 503, new upgrades get 503, sessions
have ``RELAY_DRAIN_S`` to end, the rest get ``disconnect`` (completed, "server shutting
down") and a short while to close, then the audio is flushed and the process exits 0.

Run it with ``python -m audiohook.relay`` (settings from the environment, port ``RELAY_PORT``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self, TypeVar

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from audiohook.aws.apigw import Connection
from audiohook.aws.service import AudioHookService, RecordWriter, RouteResult
from audiohook.aws.store import SessionStore, StoredSession
from audiohook.aws.stream import MAX_BYTES_PER_CALL, MAX_RECORDS_PER_CALL, PutOutcome
from audiohook.config import Settings
from audiohook.relay.buffer import AudioBuffer, Batch, SessionAudio
from audiohook.session import Outcome, Session, disconnect, receive_audio

logger = Logger(service="audiohook")

HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
RELAY_API_ID = "relay"
# Text messages are at most 64 KiB (the core answers bigger ones with a protocol error, so
# they must get through); audio frames are a few KiB. Anything past this closes with 1009.
MAX_MESSAGE_BYTES = 1024 * 1024
SEND_TIMEOUT_S = 10.0  # a reply the client does not take within this is a gone connection
METRICS_LOG_INTERVAL_S = 60.0
SHUTDOWN_INFO = "server shutting down"

_T = TypeVar("_T")


# --------------------------------------------------------------------------- session store
class CachedSessionStore(SessionStore):
    """The session store of a front that owns its connections.

    ``load`` answers from memory after the first read; ``create``, ``save`` and
    ``mark_delivered`` write through to the wrapped store (same table, same item shape, same
    optimistic version). The audio path reads the cached session and never DynamoDB.
    """

    def __init__(self, inner: SessionStore) -> None:
        # No super().__init__(): every DynamoDB call goes through ``inner``.
        self._inner = inner
        self._cache: dict[str, StoredSession] = {}

    def __getattr__(self, name: str) -> Any:
        # Anything not overridden here (a store method added later) runs on the wrapped store.
        if name in ("_inner", "_cache"):
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

    def create(self, connection_id: str, session: Session, api_key: str | None) -> None:
        self._inner.create(connection_id, session, api_key)
        self._cache[connection_id] = StoredSession(connection_id, session, version=1, delivered=0, api_key=api_key)

    def load(self, connection_id: str) -> StoredSession | None:
        stored = self._cache.get(connection_id)
        if stored is None:
            stored = self._inner.load(connection_id)
            if stored is not None:
                self._cache[connection_id] = stored
        return stored

    def save(self, stored: StoredSession) -> bool:
        if self._inner.save(stored):
            return True
        # Somebody else wrote the item since (never expected here): read it again next time.
        self._cache.pop(stored.connection_id, None)
        logger.warning("session item changed behind the relay's back; reloading it",
                       extra={"connection_id": stored.connection_id, "session_id": stored.session.session_id})
        return False

    def mark_delivered(self, connection_id: str, seq: int) -> None:
        self._inner.mark_delivered(connection_id, seq)
        stored = self._cache.get(connection_id)
        if stored is not None and stored.delivered < seq:
            stored.delivered = seq

    def cached(self, connection_id: str) -> StoredSession | None:
        """The session in memory, without any I/O (the audio path)."""
        return self._cache.get(connection_id)

    def forget(self, connection_id: str) -> None:
        self._cache.pop(connection_id, None)


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
    kinesis_failed_entries: int = 0
    backpressure_pauses: int = 0
    errors: int = 0  # unexpected exceptions (each one is logged)


# --------------------------------------------------------------------------- connections
@dataclass(eq=False)
class _Link:
    """One accepted WebSocket connection and what the relay keeps about it."""

    connection: Connection
    ws: ServerConnection
    audio: SessionAudio
    lane: asyncio.Lock = field(default_factory=asyncio.Lock)  # one service call at a time
    finished: bool = False

    @property
    def id(self) -> str:
        return self.connection.connection_id

    def log(self) -> dict[str, Any]:
        return {"connection_id": self.id, "session_id": self.audio.key}


class _SocketPoster:
    """The service's poster: replies go to the connection's own socket."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self.calls = 0

    def post_all(self, connection_id: str, texts: Iterable[str]) -> bool:
        texts = list(texts)
        self.calls += len(texts)
        return self._relay._post(connection_id, texts)


class _QueueWriter:
    """The service's record writer: records join their session's queue behind its audio.

    ``delivered`` in the answer means "taken by the relay", which then delivers each record or
    records what it could not (see :mod:`audiohook.relay.buffer`).
    """

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def put(self, entries: Sequence[tuple[str, bytes]]) -> PutOutcome:
        entries = list(entries)
        if entries:
            self._relay._from_thread(self._relay._enqueue_records, entries)
        return PutOutcome(delivered=len(entries))


def _close_status(ws: ServerConnection) -> tuple[int, str]:
    """``disconnectStatusCode`` and ``disconnectReason`` in API Gateway's wording where it has one."""
    protocol = ws.protocol
    received, sent = protocol.close_rcvd, protocol.close_sent
    if received is not None and (sent is None or protocol.close_rcvd_then_sent):
        if received.code == 1005:
            return 1005, "Client-side close frame status not set"
        return received.code, f"Client-side close frame status set to '{received.code}'"
    if sent is not None:
        return sent.code, f"Server-side close: {sent.reason}" if sent.reason else "Server-side close"
    return 1006, "Connection lost"


def _source_ip(ws: ServerConnection, request: Request) -> str:
    forwarded = request.headers.get("X-Forwarded-For", "")  # behind the load balancer
    if forwarded:
        return forwarded.split(",")[0].strip()
    address = ws.remote_address
    return str(address[0]) if address else ""


# --------------------------------------------------------------------------- the relay
class Relay:
    """The relay server. ``async with Relay(service, host="127.0.0.1", port=0) as relay: relay.url``.

    ``service`` is built as for the Lambdas (e.g. ``wiring.build_service``); the relay runs a
    copy of it whose session store, poster and record writer are the relay's, and sends the
    records through the original record writer (``service.records``, a KinesisWriter). Unset
    options come from ``service.settings`` (``RELAY_*``).
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
        workers: int = 32,
        final_flush_s: float = 15.0,
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
        self.store = CachedSessionStore(service.store)
        self.buffer = AudioBuffer(
            settings.relay_max_buffer_bytes if max_buffer_bytes is None else max_buffer_bytes,
            max_requeues=max_requeues, wall_clock=service.clock,
        )
        self.counters = RelayCounters()
        self._poster = _SocketPoster(self)
        # The same service, with the relay's adapters. Messages are applied one at a time in
        # arrival order, so a missing predecessor is a real gap: never wait for it.
        self.service = copy.copy(service)
        self.service.settings = dataclasses.replace(settings, predecessor_wait_ms=0)
        self.service.in_order = True  # one input at a time per connection: no mailbox
        self.service.store = self.store
        self.service.records = _QueueWriter(self)
        self.service.poster_for = self._poster_for
        self._links: dict[str, _Link] = {}
        self._accepted: dict[ServerConnection, _Link] = {}  # upgrade accepted, handshake not done
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._kinesis_pool: ThreadPoolExecutor | None = None
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._no_links = asyncio.Event()
        self._drained = asyncio.Event()
        self._overflowing = False
        self._stopping = False
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="relay")
        self._kinesis_pool = ThreadPoolExecutor(self._max_inflight, thread_name_prefix="relay-kinesis")
        self._room.set()
        self._no_links.set()
        self._server = await serve(
            self._serve, self.host, self._port,
            process_request=self._on_request, process_response=self._on_response,
            compression=None,  # audio does not compress; inflating every frame would cost CPU
            max_size=MAX_MESSAGE_BYTES, max_queue=64,
            ping_interval=30, ping_timeout=30, close_timeout=5, server_header=None,
        )
        self._flusher = self._spawn(self._flush_loop())
        self._spawn(self._log_metrics())
        logger.info("relay listening", extra={"url": self.url, "flush_ms": self._flush_s * 1000,
                                             "max_buffer_bytes": self.buffer.max_bytes, "drain_s": self.drain_s})
        return self

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
        return await self._loop.run_in_executor(self._executor, function, *args)

    def _from_thread(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            callback(*args)
        else:
            self._loop.call_soon_threadsafe(callback, *args)

    def _shutdown_pools(self) -> None:
        for pool in (self._executor, self._kinesis_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._executor = self._kinesis_pool = None

    def _poster_for(self, event: APIGatewayWebSocketEvent) -> _SocketPoster:
        return self._poster

    # ------------------------------------------------------------------ HTTP side of the upgrade
    async def _on_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == HEALTH_PATH:
            if self.draining:
                return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return ws.respond(HTTPStatus.OK, "ok\n")
        if path == METRICS_PATH:
            response = ws.respond(HTTPStatus.OK, json.dumps(self.metrics()) + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        if self.draining:
            self.counters.upgrades_refused_draining += 1
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down\n")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return ws.respond(HTTPStatus.UPGRADE_REQUIRED, "WebSocket upgrade required\n")
        connection = Connection(
            domain_name=request.headers.get("Host", ""), stage=path[1:], api_id=RELAY_API_ID,
            source_ip=_source_ip(ws, request), user_agent=request.headers.get("User-Agent", ""),
        )
        event = connection.connect(
            list(request.headers.raw_items()),
            query=query,
        )
        try:
            result: RouteResult = await self._call(self.service.on_connect, event)
            status = int(result.response.get("statusCode", 200))
        except Exception:
            logger.exception("$connect failed", extra={"connection_id": connection.connection_id})
            self.counters.errors += 1
            result, status = RouteResult({"statusCode": 500}), 500
        if status != HTTPStatus.OK or result.session is None:
            self.counters.upgrades_rejected += 1
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Rejected"
            return ws.respond(status, f"{phrase}\n")
        key = result.session.session_id or connection.connection_id
        self._accepted[ws] = _Link(connection, ws, self.buffer.open_session(key))
        return None

    def _on_response(self, ws: ServerConnection, request: Request, response: Response) -> None:
        if response.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            link = self._accepted.pop(ws, None)
            if link is not None:  # $connect accepted it, but the handshake itself failed
                self._spawn(self._finish(link, (1006, "WebSocket handshake failed")))

    # ------------------------------------------------------------------ WebSocket side
    async def _serve(self, ws: ServerConnection) -> None:
        link = self._accepted.pop(ws, None)
        if link is None:  # pragma: no cover - every handshake that succeeds was accepted first
            return
        self._links[link.id] = link
        self._no_links.clear()
        self.counters.sessions_total += 1
        logger.info("session connected", extra=link.log())
        try:
            await self._read(link)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("relay connection failed", extra=link.log())
            self.counters.errors += 1
        finally:
            await self._finish(link)

    async def _read(self, link: _Link) -> None:
        buffer = self.buffer
        lane = link.lane
        async for message in link.ws:
            if isinstance(message, str):
                await self._text(link, message)
                continue
            if lane.locked():  # a server action (drain's disconnect) is under way: after it
                async with lane:
                    pass
            problem = self._audio(link, message)
            if problem is not None:
                await self._audio_problem(link, problem)
            if buffer.buffered >= buffer.high_watermark and not self._overflowing:
                await self._backpressure()

    def _audio(self, link: _Link, frame: bytes) -> Outcome | None:
        """The per-frame hot path: account the frame in the core, queue it for Kinesis."""
        stored = self.store.cached(link.id)
        if stored is None:  # pragma: no cover - cached from $connect until $disconnect
            self.counters.frames_ignored += 1
            return None
        session = stored.session
        start = session.position
        problem = receive_audio(session, len(frame))
        if problem is not None:
            return problem
        counters = self.counters
        counters.frames += 1
        counters.audio_bytes += len(frame)
        audio = link.audio
        if audio.encoder is None:
            assert session.media is not None
            audio.bind(session.media, session.probe)
        buffer = self.buffer
        assert self._loop is not None
        buffer.append(audio, start, session.position, frame, self._loop.time())
        if buffer.pending_records >= MAX_RECORDS_PER_CALL or buffer.pending_bytes >= MAX_BYTES_PER_CALL:
            self._wake.set()
        return None

    async def _audio_problem(self, link: _Link, problem: Outcome) -> None:
        if not problem.replies and not problem.lifecycle:
            self.counters.frames_ignored += 1
            return
        self.counters.protocol_errors += 1
        async with link.lane:
            await self._call(self._save_and_deliver, link, problem)

    async def _text(self, link: _Link, text: str) -> None:
        event = link.connection.message(text)
        async with link.lane:
            try:
                result: RouteResult = await self._call(self.service.on_message, event)
            except Exception:
                logger.exception("$default failed", extra=link.log())
                self.counters.errors += 1
                return
        self.counters.messages += 1
        if result.outcome.violation:
            self.counters.protocol_errors += 1

    def _save_and_deliver(self, link: _Link, outcome: Outcome) -> None:
        """Persist a session the relay changed itself, then send the outcome the service's way
        (replies in seq order, delivered mark, lifecycle records). Runs in a worker thread."""
        stored = self.store.load(link.id)
        if stored is None:
            return
        if not self.store.save(stored):
            logger.error("session item not saved; delivering anyway", extra=link.log())
        event = APIGatewayWebSocketEvent(link.connection.message(""))
        self.service.deliver(event, stored, outcome)

    def _post(self, connection_id: str, texts: list[str]) -> bool:
        """Send server messages in order on the connection's socket; False: gone. Worker threads only."""
        link = self._links.get(connection_id)
        if link is None or self._loop is None:
            return False
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("replies are posted from worker threads, never from the event loop")
        future = asyncio.run_coroutine_threadsafe(self._send(link, texts), self._loop)
        try:
            return future.result(timeout=SEND_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            logger.warning("client did not take our messages in time; treated as gone", extra=link.log())
            return False

    @staticmethod
    async def _send(link: _Link, texts: list[str]) -> bool:
        try:
            for text in texts:
                await link.ws.send(text)
        except ConnectionClosed:
            return False
        return True

    async def _backpressure(self) -> None:
        """Stop reading until the flusher has made room (at most ``max_pause_s``)."""
        self.counters.backpressure_pauses += 1
        self._room.clear()
        self._wake.set()
        try:
            await asyncio.wait_for(self._room.wait(), self._max_pause_s)
        except TimeoutError:
            if not self._overflowing:
                logger.warning("Kinesis is not keeping up: reading resumes and audio beyond the buffer "
                               "limit is dropped and recorded as gaps",
                               extra={"buffered_bytes": self.buffer.buffered, "max_bytes": self.buffer.max_bytes})
            self._overflowing = True

    async def _finish(self, link: _Link, status: tuple[int, str] | None = None) -> None:
        """The socket is gone: ``$disconnect``, once; the session's queue is forgotten once sent."""
        if link.finished:
            return
        link.finished = True
        self._links.pop(link.id, None)
        code, reason = status or _close_status(link.ws)
        async with link.lane:
            try:
                await self._call(self.service.on_disconnect, link.connection.disconnect(code, reason))
            except Exception:
                logger.exception("$disconnect failed", extra=link.log())
                self.counters.errors += 1
        self.store.forget(link.id)
        self.buffer.finish(link.audio.key)
        logger.info("session disconnected", extra=link.log() | {"status_code": code, "reason": reason})
        if not self._links:
            self._no_links.set()

    def _enqueue_records(self, entries: list[tuple[str, bytes]]) -> None:
        """Lifecycle records from the service (on the event loop), in order, per session."""
        start = 0
        for index in range(1, len(entries) + 1):
            if index == len(entries) or entries[index][0] != entries[start][0]:
                self.buffer.add_records(entries[start][0], [data for _, data in entries[start:index]])
                start = index
        if self._stopping:
            self._wake.set()

    # ------------------------------------------------------------------ Kinesis
    async def _flush_loop(self) -> None:
        buffer = self.buffer
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._flush_s)
            except TimeoutError:
                pass
            self._wake.clear()
            self._dispatch()
            if self._stopping and buffer.idle:
                return

    def _dispatch(self) -> None:
        while self.buffer.inflight_batches < self._max_inflight:
            batch = self.buffer.take_batch()
            if batch is None:
                return
            self._spawn(self._put(batch))

    async def _put(self, batch: Batch) -> None:
        assert self._loop is not None
        failures: dict[int, str]
        try:
            outcome: PutOutcome = await self._loop.run_in_executor(self._kinesis_pool, self._writer.put, batch.entries)
            failures = {entry.index: entry.error_code for entry in outcome.undelivered}
            self.counters.kinesis_calls += outcome.calls
            self.counters.kinesis_retries += outcome.retries
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
            self._room.set()
            self._overflowing = False
        if self._stopping or buffer.buffered >= buffer.high_watermark or buffer.pending_records >= MAX_RECORDS_PER_CALL:
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
        await self._wait_no_links(grace_s)
        remaining = list(self._links.values())
        if remaining:
            logger.info("disconnecting the sessions still open", extra={"sessions": len(remaining)})
            await asyncio.gather(*(self._server_disconnect(link) for link in remaining))
            await self._wait_no_links(self._close_wait_s)
        if self._server is not None:
            self._server.close(code=1001, reason=SHUTDOWN_INFO)  # the rest: closed, then $disconnect
            await self._server.wait_closed()
        for link in list(self._accepted.values()):
            await self._finish(link, (1001, "Going away"))
        self._accepted.clear()
        await self._stop_flusher()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._server = None
        logger.info("relay drained", extra={"metrics": self.metrics()})
        self._drained.set()

    async def _server_disconnect(self, link: _Link) -> None:
        async with link.lane:
            if link.finished:
                return
            try:
                await self._call(self._disconnect_session, link)
            except Exception:
                logger.exception("server disconnect failed", extra=link.log())
                self.counters.errors += 1

    def _disconnect_session(self, link: _Link) -> None:
        stored = self.store.load(link.id)
        if stored is None:
            return
        outcome = disconnect(stored.session, "completed", SHUTDOWN_INFO)
        if outcome.replies or outcome.lifecycle:
            self._save_and_deliver(link, outcome)


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
        for signum in signals:
            loop.add_signal_handler(signum, relay.request_drain)
        try:
            await relay.wait_drained()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
    return 0


def main() -> None:
    sys.exit(asyncio.run(serve_relay()))


if __name__ == "__main__":
    main()
