"""AudioHook v2 messages: pydantic models for both directions, parsing and serialisation.

The models are the single source of truth for message shapes. Client text is parsed into
a typed message or a :class:`Violation` whose ``info`` names the exact problem; server
messages are only ever produced by :func:`server_message`, so ``version``, ``id``,
``seq`` and ``clientseq`` come from the session and cannot be mistyped elsewhere.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, TypeAdapter, ValidationError

from audiohook import PROTOCOL_VERSION

MAX_TEXT_BYTES = 64 * 1024
NULL_UUID = "00000000-0000-0000-0000-000000000000"

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
Uuid = Annotated[str, Field(pattern=_UUID.pattern)]
# ASCII digits only (a regex \d also takes other scripts' digits, and which ones depends on the
# regex engine's Unicode version), at most 9 before the point: 31 years, so that a position or a
# discarded span, in samples, always fits the 64-bit fields of records.
_DURATION = re.compile(r"^PT([0-9]{1,9}(?:\.[0-9]+)?)S$")
Duration = Annotated[str, Field(pattern=_DURATION.pattern)]
Channel = Literal["external", "internal"]


def duration_seconds(value: str) -> float:
    """``PT12.34S`` -> 12.34 (the value has already been validated as a Duration)."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"not an AudioHook duration: {value!r}")
    return float(match.group(1))


def format_duration(seconds: float) -> str:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"PT{text}S"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Open(BaseModel):
    """Parameters Genesys may extend: unknown fields are kept, not refused."""

    model_config = ConfigDict(extra="allow", frozen=True)


class MediaEntry(_Open):
    type: Literal["audio"]
    format: str  # PCMU and L16 today; an unknown future format is skipped by selection, not refused
    channels: Annotated[list[Channel], Field(min_length=1, max_length=2)]
    rate: Annotated[StrictInt, Field(gt=0)]

    def as_offer(self) -> dict[str, Any]:
        """The entry exactly as offered (extra fields included), for echoing in ``opened``."""
        return self.model_dump(mode="json")


class Participant(_Open):
    id: Uuid
    ani: str = ""
    aniName: str = ""
    dnis: str = ""


class ContinuedSession(_Open):
    id: Uuid
    serverseq: StrictInt
    clientseq: StrictInt


class OpenParameters(_Open):
    organizationId: Uuid
    conversationId: Uuid
    participant: Participant
    media: list[MediaEntry]
    language: str | None = None
    supportedLanguages: StrictBool | None = None
    continuedSessions: list[ContinuedSession] | None = None
    customConfig: dict[str, Any] | None = None
    inputVariables: dict[str, Any] | None = None


class CloseParameters(_Open):
    reason: Literal["end", "error", "disconnect", "reconnect"]


class PingParameters(_Open):
    rtt: Duration | None = None


class UpdateParameters(_Open):
    language: str


class EmptyParameters(_Open):
    pass


class ResumedParameters(_Open):
    start: Duration
    discarded: Duration


class ErrorParameters(_Open):
    code: Literal[400, 405, 408, 409, 413, 415, 429, 500, 503]
    message: str
    retryAfter: Duration | None = None


class DtmfParameters(_Open):
    digit: str
    duration: Duration | None = None


class _ClientMessage(_Open):
    version: Literal["2"]
    id: Uuid
    seq: Annotated[StrictInt, Field(ge=1)]
    serverseq: Annotated[StrictInt, Field(ge=0)]
    position: Duration

    @property
    def position_seconds(self) -> float:
        return duration_seconds(self.position)


class Open(_ClientMessage):
    type: Literal["open"]
    parameters: OpenParameters


class Close(_ClientMessage):
    type: Literal["close"]
    parameters: CloseParameters


class Ping(_ClientMessage):
    type: Literal["ping"]
    parameters: PingParameters


class Update(_ClientMessage):
    type: Literal["update"]
    parameters: UpdateParameters


class Paused(_ClientMessage):
    type: Literal["paused"]
    parameters: EmptyParameters


class Resumed(_ClientMessage):
    type: Literal["resumed"]
    parameters: ResumedParameters


class Discarded(_ClientMessage):
    type: Literal["discarded"]
    parameters: ResumedParameters


class ClientError(_ClientMessage):
    type: Literal["error"]
    parameters: ErrorParameters


class Dtmf(_ClientMessage):
    type: Literal["dtmf"]
    parameters: DtmfParameters


class PlaybackStarted(_ClientMessage):
    type: Literal["playback_started"]
    parameters: dict[str, Any]


class PlaybackCompleted(_ClientMessage):
    type: Literal["playback_completed"]
    parameters: dict[str, Any]


ClientMessage = Annotated[
    Union[
        Open, Close, Ping, Update, Paused, Resumed, Discarded, ClientError, Dtmf, PlaybackStarted,
        PlaybackCompleted,
    ],
    Field(discriminator="type"),
]
CLIENT_TYPES = (
    "open", "close", "ping", "update", "paused", "resumed", "discarded", "error", "dtmf",
    "playback_started", "playback_completed",
)
_client_message = TypeAdapter(ClientMessage)


# --- server -> client -------------------------------------------------------------------

class OpenedParameters(_Model):
    startPaused: bool = False
    media: list[dict[str, Any]]
    discardTo: Duration | None = None
    supportedLanguages: list[str] | None = None


class DisconnectParameters(_Model):
    reason: Literal["completed", "unauthorized", "error"]
    info: str | None = None
    outputVariables: dict[str, Any] | None = None


class ClosedParameters(_Model):
    outputVariables: dict[str, Any] | None = None


class ReconnectParameters(_Model):
    info: str | None = None


class EventParameters(_Model):
    entities: list[dict[str, Any]]


# --- event entities (PROTOCOL.md 3a) ------------------------------------------------------
# The shapes of the entity types Genesys understands. They forbid unknown fields: an entity
# is our output, and a misspelt field ("channel" for "channelId") must be refused here rather
# than silently ignored by Genesys. Other entity types pass as opaque JSON objects.

Confidence = Annotated[float, Field(ge=0, le=1)]


class TranscriptToken(_Model):
    type: Literal["word"]
    value: str
    confidence: Confidence
    offset: Duration
    duration: Duration
    language: str | None = None


class TranscriptInterpretation(_Model):
    type: Literal["display"]
    transcript: str
    tokens: list[TranscriptToken] | None = None


class TranscriptAlternative(_Model):
    confidence: Confidence
    languages: list[str] | None = None
    interpretations: Annotated[list[TranscriptInterpretation], Field(min_length=1)]


class TranscriptData(_Model):
    id: Uuid
    channelId: Literal[0, 1]
    isFinal: StrictBool
    offset: Duration
    duration: Duration
    alternatives: Annotated[list[TranscriptAlternative], Field(min_length=1)]


class AgentAssistUtterance(_Model):
    id: str
    position: Duration
    duration: Duration | None = None
    text: str
    language: str
    confidence: Confidence
    channel: Channel
    isFinal: StrictBool


class FaqSuggestion(_Model):
    type: Literal["faq"]
    id: str
    confidence: Confidence
    position: Duration | None = None
    question: str
    answer: str


class ArticleSuggestion(_Model):
    type: Literal["article"]
    id: str
    confidence: Confidence
    position: Duration | None = None
    title: str
    excerpts: list[str]
    documentUri: str
    metadata: dict[str, Any] | None = None


class AgentAssistData(_Model):
    id: str
    utterances: list[AgentAssistUtterance] | None = None
    suggestions: list[Annotated[Union[FaqSuggestion, ArticleSuggestion], Field(discriminator="type")]] | None = None


class TranscriptEntity(_Model):
    type: Literal["transcript"]
    data: TranscriptData


class AgentAssistEntity(_Model):
    type: Literal["agentassist"]
    data: AgentAssistData


class OpaqueEntity(_Model):
    """Any other entity type: a name and a JSON object, passed through unchanged."""

    type: Annotated[str, Field(min_length=1)]
    data: dict[str, Any]


_KNOWN_ENTITIES: dict[str, type[BaseModel]] = {"transcript": TranscriptEntity, "agentassist": AgentAssistEntity}


def validate_entities(entities: Any) -> list[dict[str, Any]] | str:
    """The entities of an ``event`` as they go on the wire, or why they cannot be sent.

    Known types are checked against their model and re-serialised from it (absent optional
    fields stay absent); other types must be ``{type, data}`` with ``data`` a JSON object.
    """
    if not isinstance(entities, list) or not entities:
        return "entities must be a non-empty JSON array of {type, data} objects"
    checked: list[dict[str, Any]] = []
    for index, entity in enumerate(entities):
        if not isinstance(entity, dict):
            return f"entities[{index}] is not a JSON object but a JSON {_JSON_TYPE_NAMES.get(type(entity), 'value')}"
        kind = entity.get("type")
        model = _KNOWN_ENTITIES.get(kind, OpaqueEntity) if isinstance(kind, str) else OpaqueEntity
        try:
            parsed = model.model_validate(entity)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            location = ".".join(str(part) for part in first["loc"])
            label = f" ({kind})" if isinstance(kind, str) and kind else ""
            return f"entities[{index}]{label}: {location}: {first['msg']}"
        if model is OpaqueEntity:
            checked.append({"type": entity["type"], "data": entity["data"]})  # opaque: exactly as given
        else:
            checked.append(parsed.model_dump(mode="json", exclude_none=True))
    return checked


ServerType = Literal["opened", "closed", "pong", "updated", "pause", "resume", "event", "disconnect", "reconnect"]
ServerParameters = Union[
    OpenedParameters, ClosedParameters, DisconnectParameters, ReconnectParameters, EventParameters, EmptyParameters,
]


@dataclass(frozen=True, slots=True)
class ServerMessage:
    """A server message; field order matches what Genesys' own server emits.

    A plain dataclass rather than a model: every field comes from the session (numbers it
    keeps, an id :func:`server_message` checks is a UUID) or from a validated parameters model, and
    a ``pong`` is built for every client ``ping``, so validating the envelope again would only
    cost time. The parameters models still serialise themselves.
    """

    type: ServerType
    seq: int
    clientseq: int
    id: str
    parameters: ServerParameters
    version: str = PROTOCOL_VERSION

    def to_json(self) -> str:
        """The exact text frame to send: compact JSON, no envelope, no extra fields."""
        parameters = self.parameters
        body = "{}" if parameters is EMPTY_PARAMETERS else parameters.model_dump_json(exclude_none=True)
        return (f'{{"version":"{self.version}","type":"{self.type}","seq":{self.seq},"clientseq":{self.clientseq},'
                f'"id":"{self.id}","parameters":{body}}}')


EMPTY_PARAMETERS = EmptyParameters()


def server_message(
    type: ServerType, *, session_id: str, seq: int, clientseq: int, parameters: ServerParameters | None = None
) -> ServerMessage:
    # The envelope is written as text (ServerMessage.to_json): the id must be a UUID, not merely
    # 36 characters. Only an open's id is validated when the session begins; one taken from the
    # Audiohook-Session-Id header is not, and a reply may name it before any open (an error).
    if seq < 1 or clientseq < 0 or _UUID.fullmatch(session_id) is None:
        raise ValueError(f"not a server message: seq {seq}, clientseq {clientseq}, id {session_id!r}")
    return ServerMessage(type, seq, clientseq, session_id, EMPTY_PARAMETERS if parameters is None else parameters)


# --- parsing ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Violation:
    """A client message we cannot accept; ``info`` goes into ``disconnect.parameters.info``."""

    info: str
    seq: int | None = None  # the message's seq when it could be read, so clientseq stays right


def _describe(error: ValidationError, message_type: str) -> str:
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    # Discriminated unions prefix the location with the tag; drop it, we name the type ourselves.
    if location.startswith(message_type + "."):
        location = location[len(message_type) + 1:]
    return f"invalid {message_type} message: {location}: {first['msg']}"


# What json.loads returns, named as JSON names it (the info goes to the client).
_JSON_TYPE_NAMES = {
    list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null",
}


MAX_JSON_DEPTH = 100  # RFC 8259 lets a reader limit nesting; records and replies nest a few levels more


class _NotJson(ValueError):
    """What json.loads accepts but JSON (RFC 8259) does not, or what we do not read."""


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise _NotJson("a number is beyond the range of a double")
    return value


def _check_strings(values: list[Any]) -> None:
    """Every string among ``values`` and in their lists (objects are checked as they are read)
    is Unicode text: encoding raises UnicodeEncodeError on a lone surrogate."""
    for value in values:
        if type(value) is str:
            value.encode("utf-8")
        elif type(value) is list:
            _check_strings(value)


def _checked_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Every pair, before duplicate keys collapse (the last one wins, as in JavaScript): a value
    # that is dropped must still be JSON.
    _check_strings([part for pair in pairs for part in pair])
    return dict(pairs)


def _too_deep(value: Any) -> bool:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if type(item) is dict:
            item = list(item.values())
        elif type(item) is not list:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        pending.extend((child, depth + 1) for child in item)
    return False


def _read_json(text: str) -> Any:
    """The JSON value of a text message, read strictly, or the Violation that says why not.

    Python's reader is more lenient than JSON and than a JavaScript client: it takes NaN and
    Infinity, lone surrogate escapes (strings that are not Unicode text) and numbers beyond a
    double (1e400 becomes inf), in values that a duplicate key then drops too. None of these
    can be written into a record or a reply, so a message holding one is refused here, like
    any other invalid JSON, not half-applied."""
    try:
        raw = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite,
                         object_pairs_hook=_checked_object)
        _check_strings([raw])  # a top-level string or list (an object was checked as read)
    except (json.JSONDecodeError, _NotJson) as exc:
        return Violation(f"message is not valid JSON: {exc}")
    except UnicodeEncodeError:
        return Violation("message is not valid JSON: a string holds a lone surrogate escape, which is not Unicode text")
    except RecursionError:
        return Violation(f"message is not valid JSON: it nests deeper than {MAX_JSON_DEPTH} levels")
    except ValueError:  # int() of a number with more digits than Python converts
        return Violation(f"message is not valid JSON: a number has more than {sys.get_int_max_str_digits()} digits")
    if _too_deep(raw):
        return Violation(f"message is not valid JSON: it nests deeper than {MAX_JSON_DEPTH} levels")
    return raw


def _shown(value: Any) -> str:
    """A client's value quoted in an ``info``, cut short: the reply must stay small."""
    if isinstance(value, str) and len(value) > 40:
        return json.dumps(value[:40]) + "..."
    text = json.dumps(value)
    return text if len(text) <= 64 else text[:60] + "..."


def parse_client_message(text: str | bytes) -> ClientMessage | Violation:
    if isinstance(text, str):
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return Violation("message is not valid JSON: a string holds a lone surrogate, which is not Unicode text")
    else:
        size = len(text)
    if size > MAX_TEXT_BYTES:
        return Violation(f"text message of {size} bytes exceeds the {MAX_TEXT_BYTES}-byte limit")
    if not isinstance(text, str):
        # UTF-8 only (a WebSocket text frame is UTF-8): json.loads would also take UTF-16 and
        # UTF-32 bytes and a byte order mark, which as text it refuses.
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            return Violation(f"message is not valid JSON: {exc}")
    try:
        # pydantic parses and validates in one pass (a ping every 5 s per call goes through
        # here); anything it refuses is parsed again below, which names the exact problem.
        message = _client_message.validate_json(text)
    except (ValueError, RecursionError):  # a ValidationError, or text pydantic cannot read at all
        pass
    else:
        if (type(message) is Ping and not message.model_extra and not message.parameters.model_extra
                and "NaN" not in text and "Infinity" not in text and "\\u" not in text):
            # Typed fields only, and nothing pydantic reads more leniently than _read_json
            # (non-JSON constants, escapes) even in a value a duplicate key dropped.
            return message
        raw = _read_json(text)
        return raw if isinstance(raw, Violation) else message
    raw = _read_json(text)
    if isinstance(raw, Violation):
        return raw
    if not isinstance(raw, dict):
        return Violation(f"message is not a JSON object but a JSON {_JSON_TYPE_NAMES[type(raw)]}")
    seq = raw.get("seq") if type(raw.get("seq")) is int else None
    version = raw.get("version")
    if version != PROTOCOL_VERSION:
        return Violation(f"unsupported version {_shown(version)}; expected \"2\"", seq)
    message_type = raw.get("type")
    if message_type not in CLIENT_TYPES:
        return Violation(f"unknown message type {_shown(message_type)}", seq)
    try:
        return _client_message.validate_python(raw)
    except ValidationError as exc:
        return Violation(_describe(exc, message_type), seq)
