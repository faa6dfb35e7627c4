"""The three routes, shared by every front (Lambda handlers, local gateway, relay).

Each route takes an API Gateway WebSocket event, runs the sans-I/O core and maps its
outcome to adapter calls: the session store (DynamoDB), the connection poster
(@connections or a socket) and the Kinesis writer. Nothing here raises out of a route:
AWS faults are logged, counted and recorded, and the route still answers.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent

from audiohook import auth, sequencing
from audiohook import metrics as M
from audiohook.aws.store import SessionStore, StoredSession
from audiohook.aws.stream import PutOutcome
from audiohook.config import Settings
from audiohook.media import parse_preference
from audiohook.protocol import parse_client_message
from audiohook.records import AudioRecord, AudioRecordEncoder, decode_record, encode_lifecycle_record, gap_data
from audiohook.session import Outcome, Policy, Session, State, finish, receive, receive_audio

logger = Logger(service="audiohook")

OK = {"statusCode": 200}
UNAUTHORIZED = {"statusCode": 401}


class Poster(Protocol):
    calls: int

    def post_all(self, connection_id: str, texts: list[str]) -> bool: ...


class MetricSink(Protocol):
    """Takes the metrics of :mod:`audiohook.metrics`. ``breakdown`` = (dimension, value): the
    value also counts under that dimension, besides the total."""

    def add_metric(self, name: str, unit: str, value: float, breakdown: tuple[str, str] | None = None) -> None: ...


class Counters:
    """Metric sink that only counts (fronts without CloudWatch); ``counts`` is readable,
    ``breakdowns`` holds the per-value counts keyed (name, dimension, value)."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}
        self.breakdowns: dict[tuple[str, str, str], float] = {}

    def add_metric(self, name: str, unit: str, value: float, breakdown: tuple[str, str] | None = None) -> None:
        self.counts[name] = self.counts.get(name, 0) + value
        if breakdown is not None:
            key = (name, *breakdown)
            self.breakdowns[key] = self.breakdowns.get(key, 0) + value


class RecordWriter(Protocol):
    def put(self, entries: list[tuple[str, bytes]]) -> PutOutcome: ...


@dataclass
class RouteResult:
    """What one invocation did, for tests, benchmarks and fronts that keep sessions in memory."""

    response: dict[str, Any]
    session: Session | None = None
    outcome: Outcome = field(default_factory=Outcome)
    duplicate: bool = False
    gone: bool = False


def _connection_id(event: APIGatewayWebSocketEvent) -> str:
    return event.request_context.connection_id


def _request_epoch_s(event: APIGatewayWebSocketEvent, clock: Callable[[], float]) -> float:
    """API Gateway's own receipt time of the request: trusted, and replayable from events/."""
    epoch_ms = event.request_context.get("requestTimeEpoch")
    return epoch_ms / 1000 if isinstance(epoch_ms, (int, float)) else clock()


class AudioHookService:
    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        records: RecordWriter,
        poster_for: Callable[[APIGatewayWebSocketEvent], Poster],
        client_secrets: Callable[[], Mapping[str, str]],
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        metrics: MetricSink | None = None,
    ):
        self.settings = settings
        self.store = store
        self.records = records
        self.poster_for = poster_for
        self.client_secrets = client_secrets
        self.clock = clock
        self.sleep = sleep
        self.metrics: MetricSink = metrics if metrics is not None else Counters()
        self.policy = Policy(
            media_preference=parse_preference(settings.media_preference),
            supported_languages=tuple(filter(None, (code.strip() for code in settings.supported_languages.split(",")))),
            start_paused=settings.start_paused,
        )

    # --- $connect ---------------------------------------------------------------------

    def on_connect(self, raw_event: dict[str, Any]) -> RouteResult:
        event = APIGatewayWebSocketEvent(raw_event)
        connection_id = _connection_id(event)
        target = self.settings.request_target or f"/{event.request_context.stage}"
        try:
            secrets = self.client_secrets()
        except Exception:
            logger.exception("cannot read the API key map", extra={"connection_id": connection_id})
            return RouteResult({"statusCode": 500})
        verdict = auth.verify_upgrade(
            dict(event.headers), target, secrets, now=_request_epoch_s(event, self.clock),
            max_age_s=self.settings.signature_max_age_s, clock_skew_s=self.settings.signature_clock_skew_s,
        )
        log = {"connection_id": connection_id, "session_id": verdict.session_id}
        logger.thread_safe_append_keys(**{key: value for key, value in log.items() if value is not None})
        if verdict.nonce is not None and verdict.ok and not self.store.remember_nonce(
                verdict.nonce, verdict.nonce_expires_at or 0):
            verdict = dataclasses.replace(verdict, ok=False, reason="signature nonce was already used (replay)")
        if not verdict.ok:
            logger.warning("upgrade rejected", extra=log | {"reason": verdict.reason})
            self.metric(M.UPGRADES_REJECTED, by=M.upgrade_rejection_class(verdict.reason))
            return RouteResult(UNAUTHORIZED)
        session = Session(session_id=verdict.session_id, organization_id=verdict.organization_id)
        self.store.create(connection_id, session, verdict.api_key)
        logger.info("upgrade accepted", extra=log)
        self.metric(M.CONNECTIONS)
        return RouteResult(OK, session)

    # --- $default ---------------------------------------------------------------------

    def on_message(self, raw_event: dict[str, Any]) -> RouteResult:
        event = APIGatewayWebSocketEvent(raw_event)
        connection_id = _connection_id(event)
        body = event.body or ""
        if event.get("isBase64Encoded"):
            return self._on_audio(event, connection_id, base64.b64decode(body))
        return self._on_text(event, connection_id, body)

    def _on_text(self, event: APIGatewayWebSocketEvent, connection_id: str, text: str) -> RouteResult:
        message = parse_client_message(text)
        seq = message.seq
        text_digest = sequencing.digest(text)
        deadline = self.clock() + self.settings.predecessor_wait_ms / 1000
        delay = 0.02
        while True:
            stored = self.store.load(connection_id)
            if stored is None:
                logger.warning("message for an unknown connection ignored", extra={"connection_id": connection_id})
                return RouteResult(OK)
            action = sequencing.decide(
                seq=seq, text_digest=text_digest, clientseq=stored.session.clientseq,
                seq_sent=stored.session.seq, delivered=stored.delivered, recent=stored.recent,
                budget_left=self.clock() < deadline,
                numbering_over=stored.session.state in (State.ERROR, State.UNAUTHORIZED),
            )
            if action is sequencing.Action.DUPLICATE:
                logger.info("duplicate message ignored", extra=self._log(stored) | {"seq": seq})
                self.metrics.add_metric("DuplicateMessages", "Count", 1)
                return RouteResult(OK, stored.session, duplicate=True)
            if action is sequencing.Action.WAIT:
                self.sleep(delay)
                delay = min(delay * 2, 0.2)
                continue
            outcome = receive(stored.session, message, self.policy, self.clock())
            if seq is not None and stored.session.clientseq == seq:
                stored.recent = sequencing.remember(stored.recent, seq, text_digest)
            if self.store.save(stored):
                return self.deliver(event, stored, outcome)

    def _on_audio(self, event: APIGatewayWebSocketEvent, connection_id: str, audio: bytes) -> RouteResult:
        while True:
            stored = self.store.load(connection_id)
            if stored is None:
                logger.warning("audio for an unknown connection ignored", extra={"connection_id": connection_id})
                return RouteResult(OK)
            position = stored.session.position
            problem = receive_audio(stored.session, len(audio))
            if self.store.save(stored):
                break
        if problem is not None:
            return self.deliver(event, stored, problem)
        media = stored.session.media
        assert media is not None and stored.session.session_id is not None
        encoder = AudioRecordEncoder(stored.session.session_id, media["format"], media["rate"], media["channels"])
        self._write(stored.session, [encoder.encode(position, audio)])
        self.metric(M.AUDIO_FRAMES)
        self.metric(M.AUDIO_BYTES, len(audio))
        self.metric(M.AUDIO_ACK_DELAY, max(0.0, self.clock() - _request_epoch_s(event, self.clock)) * 1000)
        return RouteResult(OK, stored.session)

    def deliver(self, event: APIGatewayWebSocketEvent, stored: StoredSession, outcome: Outcome) -> RouteResult:
        """Post the replies (in seq order), mark them delivered, emit the lifecycle records."""
        self._bind(stored)
        result = RouteResult(OK, stored.session, outcome)
        if outcome.violation:
            # With a reply it is the session's one protocol error; without, input after the end.
            log = logger.warning if outcome.replies else logger.info
            log("protocol error" if outcome.replies else "input ignored",
                extra=self._log(stored) | {"info": outcome.violation})
        self.count_outcome(stored.session, outcome)
        if outcome.replies:
            try:
                delivered = self.poster_for(event).post_all(
                    stored.connection_id, [reply.to_json() for reply in outcome.replies]
                )
            except Exception:
                logger.exception("posting to the connection failed", extra=self._log(stored))
                delivered = True  # do not stall later messages behind a post that will never succeed
            result.gone = not delivered
            if result.gone:
                logger.info("connection gone; replies dropped", extra=self._log(stored))
                self.metric(M.GONE_CONNECTIONS)
            self.store.mark_delivered(stored.connection_id, stored.session.seq)
        self._emit(stored.session, outcome)
        return result

    def _emit(self, session: Session, outcome: Outcome) -> None:
        if outcome.lifecycle:
            self._write(session, [self._lifecycle(session, item.event, item.data) for item in outcome.lifecycle])

    def _lifecycle(self, session: Session, event: str, data: dict[str, Any]) -> bytes:
        at = datetime.fromtimestamp(self.clock(), timezone.utc)
        assert session.session_id is not None
        return encode_lifecycle_record(session.session_id, event, at, session.position, session.probe, data)

    def _write(self, session: Session, records: list[bytes]) -> None:
        """Write records of one session; audio that cannot be delivered is recorded as a gap."""
        assert session.session_id is not None
        outcome = self.records.put([(session.session_id, record) for record in records])
        if outcome.retries:
            self.metric(M.KINESIS_RETRIES, outcome.retries)
        if outcome.throttled:
            self.metric(M.KINESIS_THROTTLES, outcome.throttled)
        if outcome.ok:
            return
        logger.error("records not delivered to Kinesis after retries",
                     extra={"session_id": session.session_id, "errors": outcome.error_codes})
        self.metric(M.RECORDS_UNDELIVERED, len(outcome.undelivered))
        gaps = []
        for entry in outcome.undelivered:
            lost = decode_record(entry.data)
            if isinstance(lost, AudioRecord):
                reason = f"Kinesis: {entry.error_code}"
                gaps.append(self._lifecycle(session, "gap", gap_data(
                    lost.position, lost.sample_count, lost.frame_count, reason)))
                self.metric(M.AUDIO_DROPPED_FRAMES, lost.frame_count)
                self.metric(M.AUDIO_DROPPED_BYTES, len(lost.audio))
        if gaps:
            self.metric(M.AUDIO_GAPS, len(gaps))
            self.records.put([(session.session_id, gap) for gap in gaps])

    def count_outcome(self, session: Session, outcome: Outcome) -> None:
        """The metrics of one applied input, the same on every front."""
        if outcome.violation:
            # With a reply it is the session's one protocol error; without, input after the end.
            if outcome.replies:
                self.metric(M.PROTOCOL_ERRORS, by=M.protocol_error_kind(outcome.violation))
            else:
                self.metric(M.INPUT_IGNORED)
        else:
            for reply in outcome.replies:  # server-initiated (a protocol error's disconnect is counted above)
                if reply.type in M.CONTROL_ACTION_VALUES:
                    self.metric(M.CONTROL_ACTIONS, by=reply.type)
        for item in outcome.lifecycle:
            if item.event == "opened":
                self.metric(M.PROBE_SESSIONS if session.probe else M.CALL_SESSIONS)
                if item.data.get("continuedSessions"):
                    self.metric(M.RECONNECTS)

    def metric(self, metric: M.Metric, value: float = 1, by: str | None = None) -> None:
        """Count ``value`` of one of :mod:`audiohook.metrics`' metrics; ``by``: its breakdown value."""
        breakdown = (metric.breakdown, by) if by is not None and metric.breakdown else None
        self.metrics.add_metric(metric.name, metric.unit, value, breakdown)

    @classmethod
    def _bind(cls, stored: StoredSession) -> None:
        """Every later log line of this invocation (thread) names the session (the fronts clear
        these keys before each route call)."""
        logger.thread_safe_append_keys(**{key: value for key, value in cls._log(stored).items() if value is not None})

    @staticmethod
    def _log(stored: StoredSession) -> dict[str, Any]:
        return {
            "connection_id": stored.connection_id, "session_id": stored.session.session_id,
            "conversation_id": stored.session.conversation_id,
        }

    # --- $disconnect ------------------------------------------------------------------

    def on_disconnect(self, raw_event: dict[str, Any]) -> RouteResult:
        event = APIGatewayWebSocketEvent(raw_event)
        connection_id = _connection_id(event)
        context = event.request_context
        while True:
            stored = self.store.load(connection_id)
            if stored is None:
                return RouteResult(OK)
            self._bind(stored)
            outcome = finish(stored.session, self.clock(), context.disconnect_status_code, context.disconnect_reason)
            if not outcome.lifecycle:
                return RouteResult(OK, stored.session)
            if self.store.save(stored):
                break
        logger.info("session finished", extra=self._log(stored) | {"state": stored.session.state.value})
        self._emit(stored.session, outcome)
        return RouteResult(OK, stored.session, outcome)
