"""The Kinesis record format: audio records and lifecycle records (sans-I/O, stdlib only).

Every record of a session goes to the stream with the session id as partition key, so one
session's records share a shard. Two kinds of record share the stream and are told apart
by their first byte:

- an *audio record* is a small binary header (starting with ``AUDIO_MAGIC``) followed by
  the raw audio bytes exactly as the client sent them (one or more consecutive frames);
- a *lifecycle record* is a UTF-8 JSON object (so it starts with ``{``).

``docs/records.md`` documents both layouts byte by byte.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias, get_args

Buffer: TypeAlias = bytes | bytearray | memoryview

# Kinesis' default limit for one record: data blob plus partition key.
KINESIS_MAX_RECORD_BYTES: Final = 1024 * 1024
# Partition keys are canonical session ids: 36 ASCII characters.
SESSION_PARTITION_KEY_BYTES: Final = 36

# ---------------------------------------------------------------------------------------------
# Audio records
# ---------------------------------------------------------------------------------------------

AUDIO_MAGIC: Final = b"AHAU"
AUDIO_RECORD_VERSION: Final = 1

AudioFormat: TypeAlias = Literal["PCMU", "L16"]
Channel: TypeAlias = Literal["external", "internal"]

FORMAT_CODES: Final[Mapping[str, int]] = {"PCMU": 1, "L16": 2}
FORMAT_NAMES: Final[Mapping[int, AudioFormat]] = {1: "PCMU", 2: "L16"}
BYTES_PER_SAMPLE: Final[Mapping[str, int]] = {"PCMU": 1, "L16": 2}

CHANNEL_CODES: Final[Mapping[str, int]] = {"external": 1, "internal": 2}
CHANNEL_NAMES: Final[Mapping[int, Channel]] = {1: "external", 2: "internal"}
MAX_CHANNELS: Final = 2

# Fixed prefix, the same in every version: magic, version, header length.
_PREFIX = struct.Struct("<4sBH")
# Version 1 fields after the prefix: session id, position, rate, payload length,
# frame count, format code, channel count, one code per channel slot.
_V1_FIELDS = struct.Struct("<16sQIIHBB2s")
_V1_HEADER = struct.Struct("<4sBH16sQIIHBB2s")

AUDIO_HEADER_BYTES: Final = _V1_HEADER.size  # 45
MAX_AUDIO_PAYLOAD_BYTES: Final = KINESIS_MAX_RECORD_BYTES - AUDIO_HEADER_BYTES - SESSION_PARTITION_KEY_BYTES
MAX_FRAME_COUNT: Final = 0xFFFF


class RecordFormatError(ValueError):
    """A record that is not a valid audio or lifecycle record; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AudioRecord:
    session_id: str
    position: int
    """Samples per channel from session start to the first sample of ``audio``."""
    format: AudioFormat
    rate: int
    channels: tuple[Channel, ...]
    frame_count: int
    audio: bytes = field(repr=False)

    @property
    def sample_count(self) -> int:
        """Samples per channel carried by this record."""
        return len(self.audio) // (BYTES_PER_SAMPLE[self.format] * len(self.channels))

    @property
    def end_position(self) -> int:
        """Position just after the last sample; the next record of the session starts here."""
        return self.position + self.sample_count


def session_id_bytes(session_id: str | uuid.UUID) -> bytes:
    """The 16 raw bytes of a session UUID (cache this per session on hot paths)."""
    if isinstance(session_id, uuid.UUID):
        return session_id.bytes
    return uuid.UUID(session_id).bytes


def canonical_session_id(session_id: str | uuid.UUID) -> str:
    """Lower-case 8-4-4-4-12 form; use it as the partition key so every record of a
    session hashes to the same shard whatever case the client used."""
    return str(session_id if isinstance(session_id, uuid.UUID) else uuid.UUID(session_id))


def _channel_layout(channels: Sequence[str]) -> tuple[int, bytes]:
    count = len(channels)
    if not 1 <= count <= MAX_CHANNELS:
        raise ValueError(f"an audio record carries 1 or 2 channels, not {count}")
    if count == 2 and channels[0] == channels[1]:
        raise ValueError(f"channel {channels[0]!r} is listed twice")
    codes = bytearray(MAX_CHANNELS)
    for slot, name in enumerate(channels):
        code = CHANNEL_CODES.get(name)
        if code is None:
            raise ValueError(f"unknown channel {name!r}; expected one of {sorted(CHANNEL_CODES)}")
        codes[slot] = code
    return count, bytes(codes)


def _byte_length(buffer: Buffer) -> int:
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


class AudioRecordEncoder:
    """Encodes audio records of one session; everything per-session is computed once."""

    __slots__ = ("_channel_codes", "_channel_count", "_format_code", "_rate", "_sample_frame", "_session")

    def __init__(
        self,
        session_id: str | uuid.UUID | bytes,
        format: AudioFormat,
        rate: int,
        channels: Sequence[str],
    ) -> None:
        if isinstance(session_id, bytes):
            if len(session_id) != 16:
                raise ValueError(f"a raw session id has 16 bytes, not {len(session_id)}")
            self._session = session_id
        else:
            self._session = session_id_bytes(session_id)
        code = FORMAT_CODES.get(format)
        if code is None:
            raise ValueError(f"unknown audio format {format!r}; expected one of {sorted(FORMAT_CODES)}")
        if not 0 < rate <= 0xFFFFFFFF:
            raise ValueError(f"rate must be a positive 32-bit integer, not {rate}")
        self._format_code = code
        self._rate = rate
        self._channel_count, self._channel_codes = _channel_layout(channels)
        self._sample_frame = BYTES_PER_SAMPLE[format] * self._channel_count

    @property
    def sample_bytes(self) -> int:
        """Bytes per sample frame: one sample of every channel."""
        return self._sample_frame

    def encode(self, position: int, payload: Buffer | Sequence[Buffer], frame_count: int = 1,
               length: int | None = None) -> bytes:
        """One record holding ``payload`` (a buffer, or consecutive frames joined here once).
        ``length``: the payload's byte count when the caller already knows it."""
        if isinstance(payload, (bytes, bytearray, memoryview)):
            parts: Sequence[Buffer] = (payload,)
        else:
            parts = payload
        if length is None:
            length = 0
            for part in parts:
                length += _byte_length(part)
        if length > MAX_AUDIO_PAYLOAD_BYTES:
            raise ValueError(
                f"audio payload of {length} bytes exceeds MAX_AUDIO_PAYLOAD_BYTES ({MAX_AUDIO_PAYLOAD_BYTES});"
                " split it over several records"
            )
        if length % self._sample_frame:
            raise ValueError(
                f"audio payload of {length} bytes is not a whole number of"
                f" {self._sample_frame}-byte sample frames"
            )
        if not 1 <= frame_count <= MAX_FRAME_COUNT:
            raise ValueError(f"frame_count must be between 1 and {MAX_FRAME_COUNT}, not {frame_count}")
        if position < 0:
            raise ValueError(f"position must not be negative, not {position}")
        header = _V1_HEADER.pack(
            AUDIO_MAGIC,
            AUDIO_RECORD_VERSION,
            AUDIO_HEADER_BYTES,
            self._session,
            position,
            self._rate,
            length,
            frame_count,
            self._format_code,
            self._channel_count,
            self._channel_codes,
        )
        return b"".join((header, *parts))


def encode_audio_record(
    session_id: str | uuid.UUID | bytes,
    position: int,
    format: AudioFormat,
    rate: int,
    channels: Sequence[str],
    payload: Buffer | Sequence[Buffer],
    frame_count: int = 1,
) -> bytes:
    """One audio record; for many records of one session prefer ``AudioRecordEncoder``."""
    return AudioRecordEncoder(session_id, format, rate, channels).encode(position, payload, frame_count)


def _decode_audio(data: bytes) -> AudioRecord:
    if len(data) < _PREFIX.size:
        raise RecordFormatError(
            f"audio record is truncated: {len(data)} bytes, the fixed prefix alone needs {_PREFIX.size}"
        )
    _, version, header_length = _PREFIX.unpack_from(data)
    if version != AUDIO_RECORD_VERSION:
        raise RecordFormatError(
            f"audio record version {version} is not supported (this decoder reads version"
            f" {AUDIO_RECORD_VERSION})"
        )
    if header_length < AUDIO_HEADER_BYTES:
        raise RecordFormatError(
            f"audio record header length {header_length} is below the {AUDIO_HEADER_BYTES} bytes"
            f" of version {AUDIO_RECORD_VERSION}"
        )
    if len(data) < header_length:
        raise RecordFormatError(
            f"audio record is truncated: {len(data)} bytes, the header alone announces {header_length}"
        )
    (session, position, rate, payload_length, frame_count, format_code, channel_count, channel_codes) = (
        _V1_FIELDS.unpack_from(data, _PREFIX.size)
    )
    available = len(data) - header_length
    if available < payload_length:
        raise RecordFormatError(
            f"audio payload is truncated: the header announces {payload_length} bytes, the record"
            f" holds {available}"
        )
    if available > payload_length:
        raise RecordFormatError(
            f"audio record has {available - payload_length} bytes after its {payload_length}-byte payload"
        )
    audio_format = FORMAT_NAMES.get(format_code)
    if audio_format is None:
        raise RecordFormatError(f"unknown audio format code {format_code} (known: 1=PCMU, 2=L16)")
    if not 1 <= channel_count <= MAX_CHANNELS:
        raise RecordFormatError(f"channel count is {channel_count}; an audio record carries 1 or 2")
    channels: list[Channel] = []
    for slot in range(channel_count):
        name = CHANNEL_NAMES.get(channel_codes[slot])
        if name is None:
            raise RecordFormatError(
                f"unknown channel code {channel_codes[slot]} in slot {slot} (known: 1=external, 2=internal)"
            )
        if name in channels:
            raise RecordFormatError(f"channel {name!r} appears twice in the channel layout")
        channels.append(name)
    if any(channel_codes[channel_count:]):
        raise RecordFormatError(f"unused channel slots must be 0, got {channel_codes.hex()}")
    if frame_count == 0:
        raise RecordFormatError("frame count is 0; an audio record holds at least one frame")
    if rate == 0:
        raise RecordFormatError("rate is 0")
    sample_frame = BYTES_PER_SAMPLE[audio_format] * channel_count
    if payload_length % sample_frame:
        raise RecordFormatError(
            f"audio payload of {payload_length} bytes is not a whole number of {sample_frame}-byte"
            f" sample frames ({audio_format}, {channel_count} channel(s))"
        )
    return AudioRecord(
        session_id=str(uuid.UUID(bytes=session)),
        position=position,
        format=audio_format,
        rate=rate,
        channels=tuple(channels),
        frame_count=frame_count,
        audio=bytes(data[header_length:]),
    )


# ---------------------------------------------------------------------------------------------
# Lifecycle records
# ---------------------------------------------------------------------------------------------

LIFECYCLE_RECORD_VERSION: Final = 1
LIFECYCLE_KIND: Final = "lifecycle"

OPENED: Final = "opened"
PAUSED: Final = "paused"
RESUMED: Final = "resumed"
DISCARDED: Final = "discarded"
UPDATED: Final = "updated"
DTMF: Final = "dtmf"
PLAYBACK_STARTED: Final = "playback_started"
PLAYBACK_COMPLETED: Final = "playback_completed"
CLIENT_ERROR: Final = "client_error"
ERROR: Final = "error"
GAP: Final = "gap"
IGNORED: Final = "ignored"
DISCONNECTING: Final = "disconnecting"
# What the server itself sent (server-initiated messages); ``data.seq`` is the message's seq.
PAUSING: Final = "pausing"
RESUMING: Final = "resuming"
EVENT: Final = "event"
RECONNECTING: Final = "reconnecting"
CLOSED: Final = "closed"
DISCONNECTED: Final = "disconnected"

LifecycleEvent: TypeAlias = Literal[
    "opened",
    "paused",
    "resumed",
    "discarded",
    "updated",
    "dtmf",
    "playback_started",
    "playback_completed",
    "client_error",
    "error",
    "gap",
    "ignored",
    "disconnecting",
    "pausing",
    "resuming",
    "event",
    "reconnecting",
    "closed",
    "disconnected",
]
LIFECYCLE_EVENTS: Final[frozenset[str]] = frozenset(get_args(LifecycleEvent))


@dataclass(frozen=True, slots=True)
class LifecycleRecord:
    session_id: str
    event: LifecycleEvent
    at: datetime
    """When it happened, UTC, millisecond precision."""
    position: int
    """Samples per channel received from the client when it happened."""
    probe: bool
    """True for a Genesys connection probe (null conversation and participant ids)."""
    data: dict[str, Any]


def format_timestamp(at: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``: ``2024-05-01T12:00:00.250Z``."""
    if at.tzinfo is None:
        raise ValueError("a lifecycle timestamp must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_lifecycle_record(
    session_id: str | uuid.UUID,
    event: LifecycleEvent,
    at: datetime,
    position: int,
    probe: bool,
    data: Mapping[str, Any] | None = None,
) -> bytes:
    if event not in LIFECYCLE_EVENTS:
        raise ValueError(f"unknown lifecycle event {event!r}; expected one of {sorted(LIFECYCLE_EVENTS)}")
    if position < 0:
        raise ValueError(f"position must not be negative, not {position}")
    document = {
        "v": LIFECYCLE_RECORD_VERSION,
        "kind": LIFECYCLE_KIND,
        "event": event,
        "sessionId": canonical_session_id(session_id),
        "at": format_timestamp(at),
        "position": position,
        "probe": probe,
        "data": dict(data or {}),
    }
    encoded = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    if len(encoded) + SESSION_PARTITION_KEY_BYTES > KINESIS_MAX_RECORD_BYTES:
        raise ValueError(
            f"lifecycle record of {len(encoded)} bytes does not fit one Kinesis record; trim its data"
        )
    return encoded


def gap_data(start: int, samples: int, frames: int, reason: str) -> dict[str, Any]:
    """``data`` of a ``gap`` record: audio we failed to deliver, from ``start`` for ``samples``."""
    return {"start": start, "samples": samples, "frames": frames, "reason": reason}


def _field(document: Mapping[str, Any], name: str, kind: type | tuple[type, ...], kind_name: str) -> Any:
    if name not in document:
        raise RecordFormatError(f"lifecycle record has no {name!r}")
    value = document[name]
    # bool is an int subclass: never let true/false pass as a number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RecordFormatError(f"lifecycle record {name!r} must be {kind_name}, got {value!r}")
    return value


def _decode_lifecycle(data: bytes) -> LifecycleRecord:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordFormatError(
            f"lifecycle record is not UTF-8: invalid byte at offset {exc.start}"
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordFormatError(
            f"lifecycle record is not valid JSON: {exc.msg} at offset {exc.pos}"
        ) from None
    if not isinstance(document, dict):
        raise RecordFormatError("lifecycle record is JSON but not an object")
    version = _field(document, "v", int, "an integer")
    if version != LIFECYCLE_RECORD_VERSION:
        raise RecordFormatError(
            f"lifecycle record version {version} is not supported (this decoder reads version"
            f" {LIFECYCLE_RECORD_VERSION})"
        )
    kind = _field(document, "kind", str, "a string")
    if kind != LIFECYCLE_KIND:
        raise RecordFormatError(f"record kind {kind!r} is unknown (expected {LIFECYCLE_KIND!r})")
    event = _field(document, "event", str, "a string")
    if event not in LIFECYCLE_EVENTS:
        raise RecordFormatError(f"unknown lifecycle event {event!r}")
    raw_session = _field(document, "sessionId", str, "a string")
    try:
        session_id = canonical_session_id(raw_session)
    except ValueError:
        raise RecordFormatError(f"lifecycle record 'sessionId' is not a UUID: {raw_session!r}") from None
    raw_at = _field(document, "at", str, "a string")
    try:
        at = datetime.fromisoformat(raw_at)
    except ValueError:
        raise RecordFormatError(f"lifecycle record 'at' is not an ISO 8601 timestamp: {raw_at!r}") from None
    if at.tzinfo is None:
        raise RecordFormatError(f"lifecycle record 'at' has no UTC offset: {raw_at!r}")
    position = _field(document, "position", int, "an integer")
    if position < 0:
        raise RecordFormatError(f"lifecycle record 'position' is negative: {position}")
    probe = _field(document, "probe", bool, "a boolean")
    payload = _field(document, "data", dict, "an object")
    return LifecycleRecord(
        session_id=session_id,
        event=event,
        at=at.astimezone(UTC),
        position=position,
        probe=probe,
        data=payload,
    )


# ---------------------------------------------------------------------------------------------
# Either kind
# ---------------------------------------------------------------------------------------------


def decode_record(data: bytes | bytearray | memoryview) -> AudioRecord | LifecycleRecord:
    """Decode one Kinesis record's data blob; raises ``RecordFormatError`` with the reason."""
    raw = bytes(data)
    if not raw:
        raise RecordFormatError("record is empty")
    if raw.startswith(AUDIO_MAGIC):
        return _decode_audio(raw)
    if raw[:1] == b"{":
        return _decode_lifecycle(raw)
    raise RecordFormatError(
        f"record starts with {raw[:4]!r}: neither an audio record (magic {AUDIO_MAGIC!r})"
        " nor a lifecycle record ('{')"
    )
