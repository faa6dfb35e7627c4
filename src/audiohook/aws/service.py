"""The three routes, shared by every front (Lambda handlers, local gateway, relay).

Each route takes an API Gateway WebSocket event, runs the sans-I/O core and maps its
outcome to adapter calls: the session store (DynamoDB), the connection poster
(@connections or a socket) and the Kinesis writer. Nothing here raises out of a route:
AWS faults are logged, counted and recorded, and the route still answers.

API Gateway runs ``$default`` invocations concurrently and unordered, so every input goes
through the session's mailbox: the invocation holding the lease applies it and every parked
successor (:func:`audiohook.sequencing.drain`), posts the replies in ``seq`` order and
releases; the others park and return at once (docs/sequencing.md). The relay applies its
connections' inputs itself, in order (:mod:`audiohook.relay.server`), and uses only
``on_connect``, the metrics and the record helpers here.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Mapping, Protocol

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent

from audiohook import auth, sequencing
from audiohook import metrics as M
from audiohook.aws.store import PARKED, Held, SessionStore, StoredSession, keep_results
from audiohook.aws.stream import PutOutcome
from audiohook.config import Settings
from audiohook.media import parse_preference
from audiohook.records import AudioRecord, AudioRecordEncoder, decode_record, encode_lifecycle_record, gap_data
from audiohook.sequencing import Entry
from audiohook.session import (
    ContinuedSessionInfo,
    Outcome,
    Policy,
    ServerAction,
    Session,
)

logger = Logger(service="audiohook")

OK = {"statusCode": 200}
UNAUTHORIZED = {"statusCode": 401}
CONFLICT = {"statusCode": 409}
# A lease holder starts no new round of applying after this many per-call timeouts (2 s in
# AWS; inputs parked meanwhile stay for the next holder), so one invocation's work stays
# bounded (docs/architecture.md). In proportion to the call timeout because a round's worst
# case is: the local stack, whose moto server queues calls, scales both.
DRAIN_BUDGET_CALLS = 2.0


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
    parked: bool = False  # the input waits in the mailbox; the lease holder applies it
    dropped: bool = False  # a control action found the mailbox full: nothing was parked
    # Control actions this invocation applied, by token: code, reason, state, delivered, seq, clientseq
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)


_NO_EVENT = APIGatewayWebSocketEvent({})  # a control action has no API Gateway event


def _connection_id(event: APIGatewayWebSocketEvent) -> str:
    return event.request_context.connection_id


def _request_epoch_s(event: APIGatewayWebSocketEvent, clock: Callable[[], float]) -> float:
    """API Gateway's own receipt time of the request: trusted, and replayable from events/."""
    epoch_ms = event.request_context.get("requestTimeEpoch")
    return epoch_ms / 1000 if isinstance(epoch_ms, (int, float)) else clock()


# Characters a query component may carry as they are (RFC 3986 pchar, "/" and "?"), except
# the delimiters "&" "=" and "+", which are percent-encoded when they are part of a value.
_QUERY_SAFE = "-._~!$'()*,;:@/?"


def request_target(event: APIGatewayWebSocketEvent) -> str:
    """``/<stage>`` plus the query of the upgrade URL, rebuilt from the ``$connect`` event.

    API Gateway passes the query decoded, as ``multiValueQueryStringParameters`` (every value
    of each name, in order) and ``queryStringParameters`` (the last value of each name);
    the raw query string is not in the event. Rebuilt as ``name=value`` pairs, names in the
    event's order, each value percent-encoded only where it must be (docs/architecture.md).
    """
    from urllib.parse import quote

    target = f"/{event.request_context.stage}"
    multi = event.get("multiValueQueryStringParameters") or {}
    single = event.get("queryStringParameters") or {}
    pairs = [(name, value) for name, values in multi.items() for value in values] if multi else list(single.items())
    if not pairs:
        return target
    return target + "?" + "&".join(
        f"{quote(name, safe=_QUERY_SAFE)}={quote(value, safe=_QUERY_SAFE)}" for name, value in pairs)


class AudioHookService:
    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        records: RecordWriter,
        poster_for: Callable[[APIGatewayWebSocketEvent], Poster],
        client_secrets: Callable[[], Mapping[str, str]],
        clock: Callable[[], float] = time.time,
        metrics: MetricSink | None = None,
    ):
        self.settings = settings
        self.store = store
        self.records = records
        self.poster_for = poster_for
        self.client_secrets = client_secrets
        self.clock = clock
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
        target = self.settings.request_target or request_target(event)
        try:
            secrets_map = self.client_secrets()
        except Exception:
            logger.exception("cannot read the API key map", extra={"connection_id": connection_id})
            return RouteResult({"statusCode": 500})
        verdict = auth.verify_upgrade(
            dict(event.headers), target, secrets_map, now=_request_epoch_s(event, self.clock),
            max_age_s=self.settings.signature_max_age_s, clock_skew_s=self.settings.signature_clock_skew_s,
        )
        log = {"connection_id": connection_id, "session_id": verdict.session_id}
        logger.thread_safe_append_keys(**{key: value for key, value in log.items() if value is not None})
        if verdict.nonce is not None and verdict.ok and not self.store.remember_nonce(
                verdict.nonce, verdict.nonce_expires_at or 0, connection_id):
            verdict = dataclasses.replace(verdict, ok=False, reason="signature nonce was already used (replay)")
        if not verdict.ok:
            logger.warning("upgrade rejected", extra=log | {"reason": verdict.reason, "target": target})
            self.metric(M.UPGRADES_REJECTED, by=M.upgrade_rejection_class(verdict.reason))
            return RouteResult(UNAUTHORIZED)
        if verdict.session_id:
            holder = self.store.claim_session_id(verdict.session_id, connection_id)
            if holder is not None:
                logger.warning("upgrade refused: the session id is live on another connection",
                               extra=log | {"holder_connection_id": holder})
                self.metric(M.SESSION_ID_CONFLICTS)
                return RouteResult(CONFLICT)
        session = Session(session_id=verdict.session_id, organization_id=verdict.organization_id)
        try:
            self.store.create(connection_id, session, verdict.api_key)
        except Exception:
            if verdict.session_id:  # a refused connection keeps no state
                self.store.release_session_id(verdict.session_id, connection_id)
            raise
        logger.info("upgrade accepted", extra=log)
        self.metric(M.CONNECTIONS)
        return RouteResult(OK, session)

    # --- $default ---------------------------------------------------------------------

    def on_message(self, raw_event: dict[str, Any]) -> RouteResult:
        event = APIGatewayWebSocketEvent(raw_event)
        connection_id = _connection_id(event)
        body = event.body or ""
        binary = bool(event.get("isBase64Encoded"))
        # When it reached the mailbox (not API Gateway's receipt): a front that queued the
        # invocation for a while does not eat into the predecessor's time to arrive.
        at_ms = int(self.clock() * 1000)
        entry = Entry.of_audio(base64.b64decode(body), at_ms) if binary else Entry.of_text(body, at_ms)
        return self._through_mailbox(event, connection_id, entry)

    # Lambda path ---------------------------------------------------------------------

    def control(self, connection_id: str, action: ServerAction, token: str) -> RouteResult:
        """A control action through the connection's mailbox, in order with the client's inputs.

        Holding the lease, this call applies it (and everything waiting) and ``actions[token]``
        is its result; parked (``parked``), the holder applies it and writes its result into the
        item under ``token`` (:meth:`SessionStore.action_result`)."""
        entry = Entry.of_action(action, int(self.clock() * 1000), token)
        return self._through_mailbox(_NO_EVENT, connection_id, entry, token)

    def _through_mailbox(self, event: APIGatewayWebSocketEvent, connection_id: str, entry: Entry,
                         owner: str | None = None) -> RouteResult:
        """Park ``entry``, or take the lease and apply everything waiting (docs/sequencing.md)."""
        owner = owner or secrets.token_hex(8)
        entry = entry.model_copy(update={"token": owner})  # no two entries are equal (retried PARKs)
        held = self.store.enter(
            connection_id, entry.to_json(), owner=owner, now_ms=int(self.clock() * 1000),
            lease_ms=self.settings.lease_ms, limit_bytes=self.settings.mailbox_bytes,
            full_entry="" if entry.kind == "action" else Entry.of_full(entry).to_json(),
        )
        if held is None:
            logger.warning("input for an unknown connection ignored", extra={"connection_id": connection_id})
            return RouteResult(OK)
        if not isinstance(held, Held):
            if held != PARKED:
                logger.warning("mailbox full: input dropped", extra={"connection_id": connection_id})
                self.metric(M.INPUTS_DROPPED)
                if entry.kind == "action":
                    return RouteResult(OK, dropped=True)
            return RouteResult(OK, parked=True)
        return self._hold(event, held, entry)

    def _hold(self, event: APIGatewayWebSocketEvent, held: Held, mine: Entry) -> RouteResult:
        """Apply the mailbox, post, record, release; again while inputs were parked meanwhile."""
        result = RouteResult(OK, held.session)
        started = self.clock()
        budget_s = DRAIN_BUDGET_CALLS * self.settings.aws_call_timeout_s  # then what waits stays for the next holder
        log = self._log(held)
        self._bind(held)
        pending = [Entry.from_json(raw) for raw in held.mailbox]
        seen = len(held.mailbox)
        kept: list[str] = []
        reconnect_at_s = (None if held.connected_at_ms is None
                          else held.connected_at_ms / 1000 + self.settings.reconnect_after_s)
        while True:
            ids = sequencing.continued_ids(held.session, pending)
            drained = sequencing.drain(held.session, held.recent, pending, self.policy, self.clock(),
                                       gap_wait_ms=self.settings.predecessor_wait_ms,
                                       limit_bytes=self.settings.mailbox_bytes,
                                       continued=self.continued(ids) if ids else None,
                                       reconnect_at_s=reconnect_at_s)
            held.recent = drained.recent
            kept = [entry.to_json() for entry in drained.remaining]
            self._effects(event, held, drained, mine, result, log)
            # For the callers that parked their action (this invocation's own caller has it).
            new = {token: value for token, value in result.actions.items()
                   if token not in held.results and token != mine.token}
            if new:
                held.results = keep_results(held.results, new, int(self.clock() * 1000))
                held.new_results = True
            answer = self.store.release(held, mailbox=kept, seen=seen)
            if answer is True:
                if any(step.entry.kind == "end" and step.outcome.lifecycle for step in drained.steps):
                    self._finished(held.connection_id, held.session)
                return result
            if answer is False:
                logger.error("lease lost before release: the session was taken over", extra=log)
                self.metric(M.LEASES_LOST)
                return result
            arrived = [Entry.from_json(raw) for raw in answer.mailbox[seen:]]
            seen = len(answer.mailbox)
            if self.clock() - started > budget_s:
                # Out of time for this invocation: keep everything for the next holder.
                kept += [entry.to_json() for entry in arrived]
                while (answer := self.store.release(held, mailbox=kept, seen=seen)) not in (True, False):
                    assert isinstance(answer, Held)
                    kept += answer.mailbox[seen:]
                    seen = len(answer.mailbox)
                logger.warning("mailbox left for the next holder", extra=log | {"waiting": len(kept)})
                return result
            pending = list(drained.remaining) + arrived

    def _effects(self, event: APIGatewayWebSocketEvent, held: Held, drained: sequencing.Drained, mine: Entry,
                 result: RouteResult, log: dict[str, Any]) -> None:
        """Post the replies in seq order, then write the records in the order they happened."""
        session = held.session
        replies: list[str] = []
        records: list[bytes] = []
        encoder: AudioRecordEncoder | None = None
        actions: dict[str, dict[str, Any]] = {}  # this round's control actions, by token
        for step in drained.steps:
            if step.entry == mine:
                result.duplicate = step.duplicate
            if step.entry.kind == "action":
                self._action_step(step, session, actions, log)
            if step.refused:
                continue
            if step.duplicate:
                logger.info("duplicate message ignored", extra=log | {"seq": step.entry.seq})
                self.metric(M.DUPLICATE_MESSAGES)
                continue
            if step.after_end:
                logger.info("input after the end of the connection ignored", extra=log | {"kind": step.entry.kind})
                continue
            outcome = step.outcome
            self._account(held.connection_id, session, outcome, log)
            result.outcome.replies += outcome.replies
            result.outcome.lifecycle += outcome.lifecycle
            result.outcome.violation = outcome.violation or result.outcome.violation
            replies += [reply.to_json() for reply in outcome.replies]
            if step.audio_position is not None and step.entry.audio is not None:
                media = session.media
                assert media is not None and session.session_id is not None
                encoder = encoder or AudioRecordEncoder(session.session_id, media["format"], media["rate"],
                                                        media["channels"])
                records.append(encoder.encode(step.audio_position, step.entry.audio))
                self.metric(M.AUDIO_FRAMES)
                self.metric(M.AUDIO_BYTES, len(step.entry.audio))
                self.metric(M.AUDIO_ACK_DELAY, max(0.0, self.clock() * 1000 - step.entry.at_ms))
            records += [self._lifecycle(session, item.event, item.data) for item in outcome.lifecycle]
        posted = "gone"
        if replies and not drained.ended:
            posted = self._post(event, held.connection_id, replies, log)
            result.gone = posted == "gone"
        elif replies:
            logger.info("connection gone; replies dropped", extra=log | {"count": len(replies)})
        for value in actions.values():
            if value["code"] == "delivered" and posted == "gone":
                value |= {"code": "gone", "delivered": False,
                          "reason": "the connection closed before the message could be posted"}
            elif value["code"] == "delivered" and posted == "failed":
                value |= {"code": "post_failed", "delivered": False,
                          "reason": "posting to the connection failed (see the function's log)"}
        result.actions |= actions
        if records:
            self._write(session, records)

    @staticmethod
    def _action_step(step: sequencing.Step, session: Session, actions: dict[str, dict[str, Any]],
                     log: dict[str, Any]) -> None:
        """The result of one control action, for its caller (see :meth:`control`)."""
        token = step.entry.token
        state = session.state.value
        if step.refused is not None:
            value = {"code": step.refused.code, "reason": step.refused.reason, "delivered": False,
                     "state": step.refused.state or state}
        elif step.after_end:
            value = {"code": "gone", "reason": "the connection closed before the action was applied",
                     "delivered": False, "state": state}
        else:
            message = step.outcome.replies[0]
            value = {"code": "delivered", "reason": "posted to the client", "delivered": True, "state": state,
                     "seq": message.seq, "clientseq": message.clientseq}
        logger.info("control action applied", extra=log | {"action": (step.entry.action or {}).get("name"),
                                                            "code": value["code"]})
        if token is not None and token != sequencing.LIMIT_TOKEN:
            actions[token] = value

    def continued(self, session_ids: list[str]) -> dict[str, ContinuedSessionInfo | None] | None:
        """What an ``open`` with ``continuedSessions`` needs checked, from the sessions table:
        each listed session's identity and numbering, or None when no live session has the id
        (None for all: the table could not be read)."""
        found: dict[str, ContinuedSessionInfo | None] = {}
        for session_id in session_ids:
            try:
                session = self.store.session_by_id(session_id)
            except Exception:  # the open is accepted unverified (its opened record says so)
                logger.exception("cannot look up a continued session", extra={"continued": session_id})
                return None
            found[session_id] = None if session is None else ContinuedSessionInfo(
                session_id=session.session_id or session_id, organization_id=session.organization_id,
                conversation_id=session.conversation_id, seq=session.seq, clientseq=session.clientseq,
                state=session.state.value)
        return found

    def _post(self, event: APIGatewayWebSocketEvent, connection_id: str, texts: list[str],
              log: dict[str, Any]) -> Literal["posted", "gone", "failed"]:
        """Post in order; "gone": the connection is closed. A failure is logged, never raised."""
        try:
            delivered = self.poster_for(event).post_all(connection_id, texts)
        except Exception:
            logger.exception("posting to the connection failed", extra=log)
            self.metric(M.POST_FAILURES)
            return "failed"
        if not delivered:
            logger.info("connection gone; replies dropped", extra=log)
            self.metric(M.GONE_CONNECTIONS)
        return "posted" if delivered else "gone"

    def _account(self, connection_id: str, session: Session, outcome: Outcome, log: dict[str, Any]) -> None:
        if outcome.violation:
            # With a reply it is the session's one protocol error; without, input after the end.
            report = logger.warning if outcome.replies else logger.info
            # The session as it is now: an open applied in the same round has named the conversation.
            now = {"session_id": session.session_id, "conversation_id": session.conversation_id}
            report("protocol error" if outcome.replies else "input ignored",
                   extra=log | now | {"info": outcome.violation})
        self.count_outcome(session, outcome)

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

    def metric(self, metric: M.Metric, value: float = 1, by: str | None = None) -> None:
        """Count ``value`` of one of :mod:`audiohook.metrics`' metrics; ``by``: its breakdown value."""
        breakdown = (metric.breakdown, by) if by is not None and metric.breakdown else None
        self.metrics.add_metric(metric.name, metric.unit, value, breakdown)

    @classmethod
    def _bind(cls, stored: StoredSession | Held) -> None:
        """Every later log line of this invocation (thread) names the session (the fronts clear
        these keys before each route call)."""
        logger.thread_safe_append_keys(**{key: value for key, value in cls._log(stored).items() if value is not None})

    @staticmethod
    def _log(stored: StoredSession | Held) -> dict[str, Any]:
        return {
            "connection_id": stored.connection_id, "session_id": stored.session.session_id,
            "conversation_id": stored.session.conversation_id,
        }

    # --- $disconnect ------------------------------------------------------------------

    def on_disconnect(self, raw_event: dict[str, Any]) -> RouteResult:
        event = APIGatewayWebSocketEvent(raw_event)
        connection_id = _connection_id(event)
        context = event.request_context
        # Through the mailbox like any input: applied after everything parked before it.
        end = Entry.of_end(int(self.clock() * 1000), context.disconnect_status_code, context.disconnect_reason)
        return self._through_mailbox(event, connection_id, end)

    def _finished(self, connection_id: str, session: Session) -> None:
        """The final record is written: the session id may be used by a new connection."""
        logger.info("session finished", extra={"connection_id": connection_id, "session_id": session.session_id,
                                               "conversation_id": session.conversation_id,
                                               "state": session.state.value})
        if session.session_id:
            self.store.release_session_id(session.session_id, connection_id)
