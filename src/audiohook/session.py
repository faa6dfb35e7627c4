"""The AudioHook session state machine, without I/O.

``receive_text`` and ``receive_audio`` take a :class:`Session` (mutated in place) and the
inbound data and return an :class:`Outcome`: the server messages to send, in ``seq``
order, and the lifecycle records to emit. Server-originated messages are inputs too:
:func:`act` takes a :data:`ServerAction` (``Pause``, ``Resume``, ``SendEvent``,
``Disconnect``, ``Reconnect``) and returns the outbound message and its records, or a
:class:`Refused` that changed nothing. Every server message is numbered here, so ``seq``
counts every message we send and ``clientseq`` is always the last client seq we
received. Time is passed in; nothing here reads a clock.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Sequence, Union

from audiohook.media import BYTES_PER_SAMPLE, FrameGeometry, Preference, select_media
from audiohook.protocol import (
    EMPTY_PARAMETERS,
    MAX_TEXT_BYTES,
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
    ReconnectParameters,
    Resumed,
    ServerMessage,
    ServerParameters,
    ServerType,
    Update,
    Violation,
    duration_seconds,
    parse_client_message,
    server_message,
    validate_entities,
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


@dataclass(frozen=True, slots=True)
class ContinuedSessionInfo:
    """What the front knows of a session an ``open`` says it continues (``continuedSessions``).

    The front looks the previous session up (it may live on another connection, another
    relay task) and passes this in; the core decides whether the continuation is acceptable.
    """

    session_id: str
    organization_id: str | None
    conversation_id: str | None
    seq: int  # the last server seq that session sent
    clientseq: int  # the last client seq it received
    state: str


# session id (any case) -> what the front found; None: the front found no such session.
ContinuedLookup = Mapping[str, "ContinuedSessionInfo | None"]


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
    # Pause/resume bookkeeping: ``server_paused`` from our ``pause`` until our ``resume`` (the
    # client's ``paused`` may still be on its way); ``paused_by`` who started the pause now in
    # effect ("server" or "client"); ``resume_sent`` from our ``resume`` until ``resumed``.
    server_paused: bool = False
    paused_by: str | None = None
    resume_sent: bool = False
    reconnect_seq: int | None = None  # the seq of the reconnect we sent, once sent
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


def receive_text(
    session: Session, text: str | bytes, policy: Policy, now: float, continued: ContinuedLookup | None = None,
) -> Outcome:
    return receive(session, parse_client_message(text), policy, now, continued)


def continued_session_ids(message: ClientMessage | Violation) -> list[str]:
    """The session ids an ``open`` continues: what a front must look up before :func:`receive`."""
    if type(message) is Open and message.parameters.continuedSessions:
        return [entry.id for entry in message.parameters.continuedSessions]
    return []


def receive(
    session: Session, message: ClientMessage | Violation, policy: Policy, now: float,
    continued: ContinuedLookup | None = None,
) -> Outcome:
    """Apply one parsed client message (see :func:`audiohook.protocol.parse_client_message`).

    ``continued``: for an ``open`` with ``continuedSessions``, what the front found for each
    listed id (see :func:`continued_session_ids`); None when the front did not look them up
    (the ``opened`` record then marks the links as unverified).
    """
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
        if type(message) is Close:
            return _close(session, message, now)
        return _ignored(message)
    if session.session_id is None and type(message) is Open:
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
    return _dispatch(session, message, policy, now, continued)


def _dispatch(session: Session, message: Any, policy: Policy, now: float, continued: ContinuedLookup | None) -> Outcome:
    # Exact types, not isinstance: the models' metaclass makes isinstance an ABC check, and a
    # ping every 5 s per call comes through here.
    state = session.state
    if type(message) is Open:
        if state is not State.PREPARING:
            return protocol_error(session, f"unexpected open: the session is already {state.value}")
        return _open(session, message, policy, now, continued)
    if type(message) is Close:
        return _close(session, message, now)
    if state is State.PREPARING:
        return protocol_error(session, f"unexpected {message.type} before open")
    if type(message) is ClientError:
        return Outcome(lifecycle=[Lifecycle("client_error", message.parameters.model_dump(exclude_none=True))])
    if type(message) is Ping:
        return Outcome([_reply(session, "pong")])
    if type(message) is Update:
        session.language = message.parameters.language
        return Outcome([_reply(session, "updated")], [Lifecycle("updated", {"language": session.language})])
    if type(message) is Paused:
        if state is not State.ACTIVE:
            return _ignored(message)  # pause is idempotent: a repeated confirmation is harmless
        session.state = State.PAUSED
        session.paused_by = "server" if session.server_paused else "client"
        return Outcome(lifecycle=[Lifecycle("paused", {"initiator": session.paused_by})])
    if type(message) is Resumed:
        if state is not State.PAUSED:
            return _ignored(message)
        session.state = State.ACTIVE
        record = _skip_discarded(session, message) | {
            "initiator": "server" if session.resume_sent else "client", "pausedBy": session.paused_by,
        }
        if session.server_paused and not session.resume_sent:
            # The client lifted a pause we asked for and never resumed: accepted (ending the call
            # would be worse), but said plainly, so a secure pause that did not hold is visible.
            record["serverPauseLifted"] = True
        session.server_paused = False
        session.paused_by = None
        session.resume_sent = False
        return Outcome(lifecycle=[Lifecycle("resumed", record)])
    if type(message) is Discarded:
        return Outcome(lifecycle=[Lifecycle("discarded", _skip_discarded(session, message))])
    if type(message) in (Dtmf, PlaybackStarted, PlaybackCompleted):
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


def _check_continued(session: Session, message: Open, continued: ContinuedLookup) -> str | None:
    """Why the sessions this open continues cannot be continued here, or None."""
    parameters = message.parameters
    found = {key.lower(): value for key, value in continued.items()}
    for index, entry in enumerate(parameters.continuedSessions or []):
        where = f"open.parameters.continuedSessions[{index}]"
        if entry.id.lower() == message.id.lower():
            return f"{where}.id {entry.id} is this session's own id"
        info = found.get(entry.id.lower())
        if info is None:
            return f"{where}.id {entry.id} is not a session this server knows"
        if (info.organization_id or "").lower() != parameters.organizationId.lower():
            return (f"{where}.id {entry.id} belongs to organization {info.organization_id}, "
                    f"not {parameters.organizationId}")
        if (info.conversation_id or "").lower() != parameters.conversationId.lower():
            return (f"{where}.id {entry.id} belongs to conversation {info.conversation_id}, "
                    f"not {parameters.conversationId}")
        if entry.serverseq > info.seq:
            return f"{where}.serverseq is {entry.serverseq} but that session's last server seq was {info.seq}"
    return None


def _continued_links(message: Open, continued: ContinuedLookup | None) -> list[dict[str, Any]]:
    links = []
    for entry in message.parameters.continuedSessions or []:
        link = entry.model_dump()
        link["verified"] = continued is not None
        links.append(link)
    return links


def _open(session: Session, message: Open, policy: Policy, now: float, continued: ContinuedLookup | None) -> Outcome:
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
    if parameters.continuedSessions and continued is not None:
        problem = _check_continued(session, message, continued)
        if problem is not None:
            return protocol_error(session, problem)
    offers = [entry.as_offer() for entry in parameters.media]
    session.media = select_media(offers, policy.media_preference)
    session.organization_id = parameters.organizationId
    session.conversation_id = parameters.conversationId
    session.participant_id = parameters.participant.id
    session.probe = parameters.conversationId == NULL_UUID and parameters.participant.id == NULL_UUID
    session.language = parameters.language
    session.opened_at = now
    session.state = State.PAUSED if policy.start_paused else State.ACTIVE
    if policy.start_paused:
        session.server_paused, session.paused_by = True, "server"
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
        "continuedSessions": _continued_links(message, continued),
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
            accept_audio(session, size, 1)
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


def streaming_sample_bytes(session: Session) -> int:
    """Bytes per sample frame while any frame of a whole number of samples is simply accepted
    (ACTIVE, with media); 0 otherwise, when each frame must go through :func:`receive_audio`.

    A front that reads a stream in order may hold such frames and account them later, in
    arrival order, with :func:`accept_audio`, as long as it does so before applying anything
    else to the session (but see :func:`pending_audio_may_wait`); the relay's per-frame path
    (``audiohook.relay.server``)."""
    media = session.media
    if session.state is State.ACTIVE and media is not None:
        return BYTES_PER_SAMPLE[media["format"]] * len(media["channels"])
    return 0


def pending_audio_may_wait(message: ClientMessage | Violation) -> bool:
    """Whether frames held for :func:`accept_audio` may be accounted after this message is
    received rather than before: a ``ping`` neither reads nor moves the position. If its outcome
    writes a record (it broke the protocol and ends the session), the frames must be accounted
    before that outcome is acted on, so the record follows their audio."""
    return type(message) is Ping


def accept_audio(session: Session, size: int, frames: int) -> None:
    """Account for ``frames`` consecutive frames of ``size`` bytes in all, each a non-empty
    whole number of samples received while :func:`streaming_sample_bytes` was not 0."""
    media = session.media
    assert media is not None
    session.position += size // (BYTES_PER_SAMPLE[media["format"]] * len(media["channels"]))
    session.frames += frames
    session.audio_bytes += size


def _sent_before_last_message(session: Session, media: dict[str, Any], size: int) -> bool:
    """Late audio: the client streamed it before the message (paused, close) that changed state.

    A front that runs invocations concurrently (API Gateway) may apply a frame after a later
    message; the client's own ``position`` in that message says the frame belongs before it.
    """
    if session.state not in (State.PAUSED, State.CLOSING, State.CLOSED):
        return False
    samples = size // (BYTES_PER_SAMPLE[media["format"]] * len(media["channels"]))
    return session.position + samples <= session.client_position


# --- server-originated messages ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Pause:
    """Ask the client to stop streaming (it confirms with ``paused``)."""

    name: Literal["pause"] = "pause"


@dataclass(frozen=True, slots=True)
class Resume:
    """Lift a pause we asked for (the client confirms with ``resumed``)."""

    name: Literal["resume"] = "resume"


@dataclass(frozen=True, slots=True)
class SendEvent:
    """Send entities (transcripts, agent assist results, ...) into the conversation."""

    entities: Sequence[Any]
    name: Literal["event"] = "event"


@dataclass(frozen=True, slots=True)
class Disconnect:
    """End the session; the client answers with a close transaction (reason ``disconnect``)."""

    reason: str = "completed"
    info: str | None = None
    name: Literal["disconnect"] = "disconnect"


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Ask the client to move the session to a new connection (``continuedSessions``)."""

    info: str | None = None
    name: Literal["reconnect"] = "reconnect"


ServerAction = Union[Pause, Resume, SendEvent, Disconnect, Reconnect]
RefusalCode = Literal["unknown_session", "wrong_state", "oversize_event", "bad_entity", "bad_request"]


@dataclass(frozen=True, slots=True)
class Refused:
    """A server action that cannot be taken; nothing was sent and the session is unchanged."""

    code: RefusalCode
    reason: str
    state: str | None = None


_OUTBOUND_RECORD = {"pause": "pausing", "resume": "resuming", "disconnect": "disconnecting",
                    "reconnect": "reconnecting", "event": "event"}


def _wrong_state(session: Session, action: str, why: str) -> Refused:
    return Refused("wrong_state", f"cannot {action}: {why}", session.state.value)


def _state_problem(session: Session, action: ServerAction) -> Refused | None:
    state = session.state
    if state is State.PREPARING:
        return _wrong_state(session, action.name, "the session is not opened yet (PREPARING)")
    if state not in OPEN_STATES:
        return _wrong_state(session, action.name, f"the session is {state.value}")
    if isinstance(action, Pause) and session.server_paused:
        return _wrong_state(session, "pause", "the server already paused the session")
    if isinstance(action, Resume) and not session.server_paused:
        by = " (the client paused it itself)" if state is State.PAUSED else ""
        return _wrong_state(session, "resume", f"the session is not paused by the server{by}")
    if isinstance(action, Reconnect) and session.reconnect_seq is not None:
        return _wrong_state(session, "reconnect", f"a reconnect was already sent (seq {session.reconnect_seq})")
    return None


def _parameters(action: ServerAction) -> ServerParameters | Refused:
    if isinstance(action, SendEvent):
        entities = validate_entities(list(action.entities) if isinstance(action.entities, tuple) else action.entities)
        if isinstance(entities, str):
            return Refused("bad_entity", entities)
        return EventParameters(entities=entities)
    if isinstance(action, Disconnect):
        if action.reason not in ("completed", "unauthorized", "error"):
            return Refused("bad_request", f"disconnect reason {action.reason!r} is not one of completed, "
                                          "unauthorized, error")
        return DisconnectParameters(reason=action.reason, info=action.info)  # type: ignore[arg-type]
    if isinstance(action, Reconnect):
        return ReconnectParameters(info=action.info)
    return EMPTY_PARAMETERS


def act(session: Session, action: ServerAction) -> Outcome | Refused:
    """Apply one server-originated action: the message to send (numbered with the next server
    seq, like every reply) and its lifecycle record, or why not (and nothing changed)."""
    problem = _state_problem(session, action)
    if problem is not None:
        return problem
    parameters = _parameters(action)
    if isinstance(parameters, Refused):
        return parameters
    assert session.session_id is not None
    message = server_message(action.name, session_id=session.session_id, seq=session.seq + 1,
                             clientseq=session.clientseq, parameters=parameters)
    if isinstance(action, SendEvent):
        size = len(message.to_json().encode("utf-8"))
        if size > MAX_TEXT_BYTES:
            return Refused("oversize_event", f"the event message would be {size} bytes; "
                                             f"the limit is {MAX_TEXT_BYTES}", session.state.value)
    session.seq += 1
    data: dict[str, Any] = {"seq": message.seq}
    if isinstance(action, Pause):
        session.server_paused = True
    elif isinstance(action, Resume):
        session.resume_sent = True
        session.server_paused = False
    elif isinstance(action, Disconnect):
        session.state = State.CLOSING
        data |= {"reason": action.reason, "info": action.info}
    elif isinstance(action, Reconnect):
        session.reconnect_seq = message.seq
        data |= {"info": action.info}
    elif isinstance(action, SendEvent):
        data |= {"entities": message.parameters.entities}  # type: ignore[union-attr]
    return Outcome([message], [Lifecycle(_OUTBOUND_RECORD[action.name], data)])


def action_message(session_id: str, action: ServerAction, seq: int, clientseq: int) -> ServerMessage:
    """The message :func:`act` sent for ``action`` as ``seq`` (rebuilt from what a front stored)."""
    parameters = _parameters(action)
    assert not isinstance(parameters, Refused)
    return server_message(action.name, session_id=session_id, seq=seq, clientseq=clientseq, parameters=parameters)


def disconnect(session: Session, reason: str, info: str | None = None) -> Outcome:
    """Server-initiated end of session (e.g. the relay draining); nothing once it is not open."""
    outcome = act(session, Disconnect(reason, info))
    return Outcome() if isinstance(outcome, Refused) else outcome


def send_event(session: Session, entities: Sequence[dict[str, Any]]) -> Outcome | Refused:
    return act(session, SendEvent(entities))


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
