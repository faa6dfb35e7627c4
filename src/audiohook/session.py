"""The AudioHook session state machine, without I/O.

``receive_text`` and ``receive_audio`` take a :class:`Session` (mutated in place) and the
inbound data and return an :class:`Outcome`: the server messages to send, in ``seq``
order, and the lifecycle records to emit. Every server message is numbered here, so
``seq`` counts every message we send and ``clientseq`` is always the last client seq we
received. Time is passed in; nothing here reads a clock.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from audiohook.media import BYTES_PER_SAMPLE, FrameGeometry, Preference, select_media
from audiohook.protocol import (
    NULL_UUID,
    ClientError,
    ClientMessage,
    Close,
    ClosedParameters,
    Discarded,
    DisconnectParameters,
    Dtmf,
    EventParameters,
    Open,
    OpenedParameters,
    Paused,
    Ping,
    PlaybackCompleted,
    PlaybackStarted,
    Resumed,
    ServerMessage,
    ServerParameters,
    ServerType,
    Update,
    Violation,
    duration_seconds,
    parse_client_message,
    server_message,
)


class State(str, enum.Enum):
    PREPARING = "PREPARING"  # upgraded, waiting for open
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    CLOSING = "CLOSING"  # we sent disconnect; waiting for the client's close
    CLOSED = "CLOSED"
    ERROR = "ERROR"  # we sent disconnect(error); only close is answered
    UNAUTHORIZED = "UNAUTHORIZED"  # we sent disconnect(unauthorized); only close is answered


OPEN_STATES = (State.ACTIVE, State.PAUSED)


@dataclass(frozen=True, slots=True)
class Policy:
    """Server choices the protocol leaves to us."""

    media_preference: tuple[Preference, ...]
    supported_languages: tuple[str, ...] = ()
    start_paused: bool = False


@dataclass(slots=True)
class Session:
    session_id: str | None = None  # from the Audiohook-Session-Id header; open.id must match
    organization_id: str | None = None  # from the Audiohook-Organization-Id header
    state: State = State.PREPARING
    seq: int = 0  # last server seq sent
    clientseq: int = 0  # last client seq received
    media: dict[str, Any] | None = None
    conversation_id: str | None = None
    participant_id: str | None = None
    probe: bool = False
    language: str | None = None
    position: int = 0  # samples per channel: received plus discarded by the client
    client_position: int = 0  # samples per channel the client says it had streamed (its latest `position`)
    frames: int = 0
    audio_bytes: int = 0
    empty_frames: int = 0  # 0-byte binary frames: ignored, only counted
    error_info: str | None = None
    opened_at: float | None = None
    closed_at: float | None = None
    disconnected_at: float | None = None  # the socket is gone; the final record was emitted

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Session":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known["state"] = State(known.get("state", State.PREPARING.value))
        return cls(**known)


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A lifecycle record to emit; the adapter adds the session id, time and position."""

    event: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    replies: list[ServerMessage] = field(default_factory=list)
    lifecycle: list[Lifecycle] = field(default_factory=list)
    violation: str | None = None  # set when this input was a protocol error


def _reply(session: Session, type: ServerType, parameters: ServerParameters | None = None) -> ServerMessage:
    session.seq += 1
    assert session.session_id is not None
    return server_message(
        type, session_id=session.session_id, seq=session.seq, clientseq=session.clientseq, parameters=parameters
    )


def protocol_error(session: Session, info: str) -> Outcome:
    """One ``disconnect`` with reason error, then ERROR; later errors are only recorded."""
    lifecycle = [Lifecycle("error", {"info": info, "state": session.state.value})]
    if session.state in (State.ERROR, State.UNAUTHORIZED, State.CLOSING, State.CLOSED) or not session.session_id:
        return Outcome(lifecycle=lifecycle, violation=info)
    message = _reply(session, "disconnect", DisconnectParameters(reason="error", info=info))
    session.state = State.ERROR
    session.error_info = info
    return Outcome([message], lifecycle, violation=info)


def _check_envelope(session: Session, message: Any) -> str | None:
    expected = session.clientseq + 1
    if message.seq != expected:
        return (
            f"{message.type}.seq is {message.seq} but the previous client seq was {session.clientseq}; "
            f"expected {expected}"
        )
    if session.session_id is not None and message.id.lower() != session.session_id.lower():
        return f"{message.type}.id {message.id} does not match the session id {session.session_id}"
    if message.serverseq > session.seq:
        return f"{message.type}.serverseq is {message.serverseq} but the last server seq sent was {session.seq}"
    return None


def receive_text(session: Session, text: str | bytes, policy: Policy, now: float) -> Outcome:
    return receive(session, parse_client_message(text), policy, now)


def receive(session: Session, message: ClientMessage | Violation, policy: Policy, now: float) -> Outcome:
    """Apply one parsed client message (see :func:`audiohook.protocol.parse_client_message`)."""
    if isinstance(message, Violation):
        if message.seq == session.clientseq + 1:
            session.clientseq = message.seq
        if session.session_id is None:
            return Outcome(violation=message.info)
        return protocol_error(session, message.info)
    if session.state is State.CLOSED:
        return _ignored(message)
    if session.state in (State.ERROR, State.UNAUTHORIZED):
        # The session is over; only the client's close transaction is still answered, whatever
        # its seq: the message we refused may have had no readable seq (invalid JSON, over
        # 64 KiB) or may itself have broken the numbering, and the client must get its closed.
        session.clientseq = max(session.clientseq, message.seq)
        if isinstance(message, Close):
            return _close(session, message, now)
        return _ignored(message)
    if session.session_id is None and isinstance(message, Open):
        session.session_id = message.id
    problem = _check_envelope(session, message)
    if message.seq == session.clientseq + 1:
        # Received in order (even if refused for its id or serverseq): the reply, disconnect
        # included, names it in clientseq. A seq out of order leaves clientseq where it was.
        session.clientseq = message.seq
    if problem is not None:
        return protocol_error(session, problem)
    if session.media is not None:
        stated = round(message.position_seconds * session.media["rate"])
        session.client_position = max(session.client_position, stated)
    return _dispatch(session, message, policy, now)


def _dispatch(session: Session, message: Any, policy: Policy, now: float) -> Outcome:
    state = session.state
    if isinstance(message, Open):
        if state is not State.PREPARING:
            return protocol_error(session, f"unexpected open: the session is already {state.value}")
        return _open(session, message, policy, now)
    if isinstance(message, Close):
        return _close(session, message, now)
    if state is State.PREPARING:
        return protocol_error(session, f"unexpected {message.type} before open")
    if isinstance(message, ClientError):
        return Outcome(lifecycle=[Lifecycle("client_error", message.parameters.model_dump(exclude_none=True))])
    if isinstance(message, Ping):
        return Outcome([_reply(session, "pong")])
    if isinstance(message, Update):
        session.language = message.parameters.language
        return Outcome([_reply(session, "updated")], [Lifecycle("updated", {"language": session.language})])
    if isinstance(message, Paused):
        if state is not State.ACTIVE:
            return _ignored(message)  # pause is idempotent: a repeated confirmation is harmless
        session.state = State.PAUSED
        return Outcome(lifecycle=[Lifecycle("paused")])
    if isinstance(message, Resumed):
        if state is not State.PAUSED:
            return _ignored(message)
        session.state = State.ACTIVE
        return Outcome(lifecycle=[Lifecycle("resumed", _skip_discarded(session, message))])
    if isinstance(message, Discarded):
        return Outcome(lifecycle=[Lifecycle("discarded", _skip_discarded(session, message))])
    if isinstance(message, (Dtmf, PlaybackStarted, PlaybackCompleted)):
        return Outcome(lifecycle=[Lifecycle(message.type, message.parameters if isinstance(message.parameters, dict)
                                            else message.parameters.model_dump(exclude_none=True))])
    return protocol_error(session, f"unexpected {message.type} in state {state.value}")  # pragma: no cover


def _ignored(message: Any) -> Outcome:
    return Outcome(lifecycle=[Lifecycle("ignored", {"type": message.type, "seq": message.seq})])


def _skip_discarded(session: Session, message: Resumed | Discarded) -> dict[str, Any]:
    """The client dropped audio: the stream position moves on by that much."""
    discarded_s = duration_seconds(message.parameters.discarded)
    samples = round(discarded_s * session.media["rate"]) if session.media else 0
    session.position += samples
    return {"start": message.parameters.start, "discarded": message.parameters.discarded, "samples": samples}


def _open(session: Session, message: Open, policy: Policy, now: float) -> Outcome:
    parameters = message.parameters
    if session.organization_id and parameters.organizationId.lower() != session.organization_id.lower():
        info = (
            f"open.parameters.organizationId {parameters.organizationId} does not match the "
            f"Audiohook-Organization-Id header {session.organization_id}"
        )
        reply = _reply(session, "disconnect", DisconnectParameters(reason="unauthorized", info=info))
        session.state = State.UNAUTHORIZED
        session.error_info = info
        return Outcome([reply], [Lifecycle("error", {"info": info, "state": State.PREPARING.value})], violation=info)
    offers = [entry.as_offer() for entry in parameters.media]
    session.media = select_media(offers, policy.media_preference)
    session.organization_id = parameters.organizationId
    session.conversation_id = parameters.conversationId
    session.participant_id = parameters.participant.id
    session.probe = parameters.conversationId == NULL_UUID and parameters.participant.id == NULL_UUID
    session.language = parameters.language
    session.opened_at = now
    session.state = State.PAUSED if policy.start_paused else State.ACTIVE
    languages = list(policy.supported_languages) if parameters.supportedLanguages else None
    reply = _reply(session, "opened", OpenedParameters(
        startPaused=policy.start_paused, media=[session.media] if session.media else [], supportedLanguages=languages,
    ))
    record = {
        "organizationId": parameters.organizationId,
        "conversationId": parameters.conversationId,
        "participant": parameters.participant.model_dump(),
        "media": session.media,
        "offers": offers,
        "language": parameters.language,
        "customConfig": parameters.customConfig,
        "inputVariables": parameters.inputVariables,
        "continuedSessions": [c.model_dump() for c in parameters.continuedSessions or []],
    }
    return Outcome([reply], [Lifecycle("opened", record)])


def _close(session: Session, message: Close, now: float) -> Outcome:
    reply = _reply(session, "closed", ClosedParameters())
    previous = session.state
    session.state = State.CLOSED
    session.closed_at = now
    return Outcome([reply], [Lifecycle("closed", {"reason": message.parameters.reason, "from": previous.value})])


def receive_audio(session: Session, size: int) -> Outcome | None:
    """Account for one binary frame of ``size`` bytes. None: accepted (position advanced).

    An empty frame carries no samples: it is counted and ignored (an empty ``Outcome``, so
    nothing is recorded for it), never a protocol error. This is the per-frame hot path (the
    relay calls it for every 200 ms frame), so it does no allocation on success.
    """
    if not size:
        session.empty_frames += 1
        return Outcome()
    media = session.media
    if media is not None and (session.state is State.ACTIVE or _sent_before_last_message(session, media, size)):
        sample_frame = BYTES_PER_SAMPLE[media["format"]] * len(media["channels"])
        if size % sample_frame == 0:
            session.position += size // sample_frame
            session.frames += 1
            session.audio_bytes += size
            return None
        geometry = FrameGeometry.of(media)
        layout = "stereo" if len(geometry.channels) == 2 else "mono"
        return protocol_error(session, (
            f"audio frame of {size} bytes is not a whole number of samples: "
            f"{layout} {geometry.format} needs a multiple of {sample_frame} bytes"
        ))
    if session.state in (State.ERROR, State.UNAUTHORIZED, State.CLOSED, State.CLOSING):
        return Outcome(violation=f"audio frame ignored in state {session.state.value}")
    if session.state is State.ACTIVE:
        return protocol_error(session, "audio frame received but opened selected no media")
    if session.state is State.PREPARING:
        return protocol_error(session, "audio frame received before open")
    return protocol_error(session, f"audio frame received while {session.state.value}")


def _sent_before_last_message(session: Session, media: dict[str, Any], size: int) -> bool:
    """Late audio: the client streamed it before the message (paused, close) that changed state.

    A front that runs invocations concurrently (API Gateway) may apply a frame after a later
    message; the client's own ``position`` in that message says the frame belongs before it.
    """
    if session.state not in (State.PAUSED, State.CLOSING, State.CLOSED):
        return False
    samples = size // (BYTES_PER_SAMPLE[media["format"]] * len(media["channels"]))
    return session.position + samples <= session.client_position


def disconnect(session: Session, reason: str, info: str | None = None) -> Outcome:
    """Server-initiated end of session (e.g. the relay draining); the client then closes."""
    if session.state not in OPEN_STATES:
        return Outcome()
    reply = _reply(session, "disconnect", DisconnectParameters(reason=reason, info=info))  # type: ignore[arg-type]
    session.state = State.CLOSING
    return Outcome([reply], [Lifecycle("disconnecting", {"reason": reason, "info": info})])


def send_event(session: Session, entities: Sequence[dict[str, Any]]) -> Outcome:
    if session.state not in OPEN_STATES:
        return Outcome()
    return Outcome([_reply(session, "event", EventParameters(entities=list(entities)))])


def finish(session: Session, now: float, status_code: int | None, reason: str | None) -> Outcome:
    """The socket is gone. Idempotent: a finished session yields nothing."""
    if session.disconnected_at is not None:
        return Outcome()
    ended = "closed" if session.state is State.CLOSED else "abandoned"
    previous = session.state
    session.disconnected_at = now
    session.state = State.CLOSED
    counters = {
        "outcome": ended, "state": previous.value, "statusCode": status_code, "reason": reason,
        "frames": session.frames, "audioBytes": session.audio_bytes, "emptyFrames": session.empty_frames,
        "position": session.position,
        "seq": session.seq, "clientseq": session.clientseq, "error": session.error_info,
    }
    return Outcome(lifecycle=[Lifecycle("disconnected", counters)])
