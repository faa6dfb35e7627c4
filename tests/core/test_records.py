"""The Kinesis record format: audio and lifecycle records round-trip; garbage is refused with a reason."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta, timezone

import pytest

from audiohook.records import (
    AUDIO_HEADER_BYTES,
    AUDIO_MAGIC,
    KINESIS_MAX_RECORD_BYTES,
    LIFECYCLE_EVENTS,
    MAX_AUDIO_PAYLOAD_BYTES,
    SESSION_PARTITION_KEY_BYTES,
    AudioRecord,
    AudioRecordEncoder,
    LifecycleRecord,
    RecordFormatError,
    canonical_session_id,
    decode_record,
    encode_audio_record,
    encode_lifecycle_record,
    gap_data,
)

SESSION = "e160e428-53e2-487c-977d-96989bf5c99d"
NULL_SESSION = "00000000-0000-0000-0000-000000000000"
AT = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


def pcmu_frame(samples: int, channels: int, fill: int) -> bytes:
    return bytes([fill]) * (samples * channels)


def audio_record_bytes(**overrides: object) -> bytes:
    """A well-formed 1-channel PCMU record of 4 samples, with header fields overridden."""
    fields: dict[str, object] = {
        "magic": AUDIO_MAGIC,
        "version": 1,
        "header_length": AUDIO_HEADER_BYTES,
        "session": bytes(16),
        "position": 0,
        "rate": 8000,
        "payload_length": 4,
        "frame_count": 1,
        "format_code": 1,
        "channel_count": 1,
        "channel_codes": b"\x01\x00",
    }
    fields.update(overrides)
    header = struct.pack("<4sBH16sQIIHBB2s", *fields.values())
    return header + b"\xff" * 4


# --- audio records: round trips ---------------------------------------------------------------


def test_single_stereo_pcmu_frame_round_trips_byte_exact() -> None:
    frame = bytes(range(256)) * 12 + bytes(128)  # 3200 bytes: 1600 stereo samples
    record = encode_audio_record(SESSION, 1600, "PCMU", 8000, ["external", "internal"], frame)

    decoded = decode_record(record)

    assert decoded == AudioRecord(
        session_id=SESSION,
        position=1600,
        format="PCMU",
        rate=8000,
        channels=("external", "internal"),
        frame_count=1,
        audio=frame,
    )
    assert isinstance(decoded, AudioRecord)
    assert decoded.sample_count == 1600
    assert decoded.end_position == 3200
    assert len(record) == AUDIO_HEADER_BYTES + len(frame)


def test_several_frames_given_as_buffers_are_joined_in_order() -> None:
    frames: list[bytes | bytearray | memoryview] = [
        pcmu_frame(1600, 2, 1),
        bytearray(pcmu_frame(1600, 2, 2)),
        memoryview(pcmu_frame(1600, 2, 3)),
    ]
    record = encode_audio_record(SESSION, 0, "PCMU", 8000, ["internal", "external"], frames, frame_count=3)

    decoded = decode_record(record)

    assert isinstance(decoded, AudioRecord)
    assert decoded.channels == ("internal", "external")
    assert decoded.frame_count == 3
    assert decoded.audio == b"".join(bytes(frame) for frame in frames)
    assert decoded.sample_count == 4800


@pytest.mark.parametrize(
    ("audio_format", "channels", "bytes_per_sample_frame"),
    [
        ("PCMU", ("external",), 1),
        ("PCMU", ("internal",), 1),
        ("PCMU", ("external", "internal"), 2),
        ("PCMU", ("internal", "external"), 2),
        ("L16", ("external",), 2),
        ("L16", ("internal",), 2),
        ("L16", ("external", "internal"), 4),
        ("L16", ("internal", "external"), 4),
    ],
)
def test_every_format_and_channel_layout_round_trips(
    audio_format: str, channels: tuple[str, ...], bytes_per_sample_frame: int
) -> None:
    audio = bytes((i * 7) % 256 for i in range(160 * bytes_per_sample_frame))
    encoder = AudioRecordEncoder(SESSION, audio_format, 8000, channels)  # type: ignore[arg-type]

    decoded = decode_record(encoder.encode(8000 * 3600 * 5, audio))

    assert decoded == AudioRecord(SESSION, 8000 * 3600 * 5, audio_format, 8000, channels, 1, audio)  # type: ignore[arg-type]
    assert isinstance(decoded, AudioRecord)
    assert decoded.sample_count == 160


def test_null_uuid_session_round_trips() -> None:
    decoded = decode_record(encode_audio_record(NULL_SESSION, 0, "PCMU", 8000, ["external"], b"\x7f"))
    assert isinstance(decoded, AudioRecord)
    assert decoded.session_id == NULL_SESSION


def test_upper_case_session_id_decodes_in_canonical_lower_case() -> None:
    decoded = decode_record(encode_audio_record(SESSION.upper(), 0, "PCMU", 8000, ["external"], b"\x7f"))
    assert isinstance(decoded, AudioRecord)
    assert decoded.session_id == SESSION == canonical_session_id(SESSION.upper())


def test_raw_session_bytes_are_accepted_by_the_encoder() -> None:
    raw = bytes(range(16))
    decoded = decode_record(AudioRecordEncoder(raw, "L16", 16000, ["external"]).encode(0, b"\x01\x02"))
    assert isinstance(decoded, AudioRecord)
    assert decoded.session_id == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert decoded.rate == 16000


def test_header_layout_is_little_endian_and_documented() -> None:
    record = encode_audio_record(SESSION, 258, "L16", 8000, ["internal", "external"], b"\x00" * 8, 2)
    assert record[:4] == b"AHAU"
    assert record[4] == 1  # version
    assert record[5:7] == (45).to_bytes(2, "little")  # header length
    assert record[7:23].hex() == SESSION.replace("-", "")
    assert record[23:31] == (258).to_bytes(8, "little")  # position
    assert record[31:35] == (8000).to_bytes(4, "little")  # rate
    assert record[35:39] == (8).to_bytes(4, "little")  # payload length
    assert record[39:41] == (2).to_bytes(2, "little")  # frame count
    assert record[41] == 2  # L16
    assert record[42] == 2  # channel count
    assert record[43:45] == b"\x02\x01"  # internal, external
    assert record[45:] == b"\x00" * 8


def test_a_later_header_extension_is_skipped_by_a_version_1_reader() -> None:
    extended = audio_record_bytes(header_length=AUDIO_HEADER_BYTES + 3)
    extended = extended[:AUDIO_HEADER_BYTES] + b"new" + extended[AUDIO_HEADER_BYTES:]
    decoded = decode_record(extended)
    assert isinstance(decoded, AudioRecord)
    assert decoded.audio == b"\xff" * 4


def test_max_payload_fills_exactly_one_kinesis_record_with_its_partition_key() -> None:
    assert (
        MAX_AUDIO_PAYLOAD_BYTES + AUDIO_HEADER_BYTES + SESSION_PARTITION_KEY_BYTES == KINESIS_MAX_RECORD_BYTES
    )
    record = encode_audio_record(SESSION, 0, "PCMU", 8000, ["external"], bytes(MAX_AUDIO_PAYLOAD_BYTES))
    assert len(record) + len(SESSION) == KINESIS_MAX_RECORD_BYTES


# --- audio records: encoder refusals ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"payload": bytes(MAX_AUDIO_PAYLOAD_BYTES + 1)}, "exceeds MAX_AUDIO_PAYLOAD_BYTES"),
        ({"payload": b"\x00\x00\x00", "format": "L16"}, "not a whole number of 2-byte sample frames"),
        ({"channels": ["external", "external"]}, "channel 'external' is listed twice"),
        ({"channels": []}, "1 or 2 channels, not 0"),
        ({"channels": ["left"]}, "unknown channel 'left'"),
        ({"format": "OPUS"}, "unknown audio format 'OPUS'"),
        ({"frame_count": 0}, "frame_count must be between 1 and 65535, not 0"),
        ({"position": -1}, "position must not be negative"),
        ({"session_id": "not-a-uuid"}, "badly formed hexadecimal UUID string"),
    ],
)
def test_encoder_refuses_impossible_records(kwargs: dict[str, object], reason: str) -> None:
    arguments: dict[str, object] = {
        "session_id": SESSION,
        "position": 0,
        "format": "PCMU",
        "rate": 8000,
        "channels": ["external"],
        "payload": b"\x00\x00",
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=reason):
        encode_audio_record(**arguments)  # type: ignore[arg-type]


# --- lifecycle records ------------------------------------------------------------------------

EVENT_DATA: dict[str, dict[str, object]] = {
    "opened": {
        "organizationId": "d7934305-0972-4844-938e-9060eef73d05",
        "conversationId": "090eaa2f-72fa-480a-83e0-8667ff89c0ec",
        "participant": {
            "id": "883efee8-3d6c-4537-b500-6d7ca4b92fa0",
            "ani": "+1-555-555-1234",
            "aniName": "John Doe",
            "dnis": "+1-800-555-6789",
        },
        "media": {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000},
        "language": None,
        "customConfig": {"résumé": "ünïcødé ✓"},
        "inputVariables": None,
        "continuedSessions": [],
    },
    "paused": {"initiator": "server"},
    "resumed": {"start": "PT12.5S", "discarded": "PT1S", "samples": 8000, "initiator": "server",
                "pausedBy": "server"},
    "discarded": {"start": "PT3S", "discarded": "PT0.2S", "samples": 1600},
    "updated": {"language": "en-US"},
    "dtmf": {"digit": "5", "durationMs": 200},
    "playback_started": {},
    "playback_completed": {},
    "client_error": {"code": 429, "message": "too many requests", "retryAfter": "PT5S"},
    "error": {"info": "seq is 4 but 3 was due", "state": "ACTIVE"},
    "gap": gap_data(start=22400, samples=1600, frames=1, reason="ProvisionedThroughputExceededException"),
    "ignored": {"type": "ping", "seq": 9},
    "disconnecting": {"seq": 7, "reason": "completed", "info": None},
    "pausing": {"seq": 3},
    "resuming": {"seq": 5},
    "event": {"seq": 4, "entities": [{"type": "custom", "data": {"score": 0.9}}]},
    "reconnecting": {"seq": 6, "info": "moving to another task"},
    "closed": {"reason": "end", "from": "ACTIVE"},
    "disconnected": {
        "outcome": "closed",
        "state": "CLOSED",
        "statusCode": 1000,
        "reason": "Client-side close frame",
        "frames": 300,
        "audioBytes": 960000,
        "position": 480000,
        "seq": 5,
        "clientseq": 7,
        "error": None,
    },
}


def test_every_lifecycle_event_has_an_example() -> None:
    assert set(EVENT_DATA) == LIFECYCLE_EVENTS


@pytest.mark.parametrize("event", sorted(EVENT_DATA))
def test_every_lifecycle_event_round_trips(event: str) -> None:
    record = encode_lifecycle_record(SESSION, event, AT, 96000, False, EVENT_DATA[event])  # type: ignore[arg-type]

    assert decode_record(record) == LifecycleRecord(SESSION, event, AT, 96000, False, EVENT_DATA[event])  # type: ignore[arg-type]


def test_lifecycle_record_is_compact_utf8_json_with_documented_keys() -> None:
    record = encode_lifecycle_record(NULL_SESSION, "opened", AT, 0, True, {"customConfig": {"k": "✓"}})
    assert (
        record
        == (
            '{"v":1,"kind":"lifecycle","event":"opened","sessionId":"00000000-0000-0000-0000-000000000000",'
            '"at":"2024-05-01T12:00:00.250Z","position":0,"probe":true,"data":{"customConfig":{"k":"✓"}}}'
        ).encode()
    )


def test_lifecycle_timestamp_is_converted_to_utc_with_milliseconds() -> None:
    local = datetime(2024, 5, 1, 14, 0, 0, 250999, tzinfo=timezone(timedelta(hours=2)))
    record = json.loads(encode_lifecycle_record(SESSION, "paused", local, 0, False))
    assert record["at"] == "2024-05-01T12:00:00.250Z"
    assert record["data"] == {}


def test_lifecycle_encoder_refuses_unknown_events_and_naive_times() -> None:
    with pytest.raises(ValueError, match="unknown lifecycle event 'started'"):
        encode_lifecycle_record(SESSION, "started", AT, 0, False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        encode_lifecycle_record(SESSION, "paused", datetime(2024, 5, 1), 0, False)


# --- decoder refusals -------------------------------------------------------------------------


def lifecycle(**changes: object) -> bytes:
    document: dict[str, object] = {
        "v": 1,
        "kind": "lifecycle",
        "event": "closed",
        "sessionId": SESSION,
        "at": "2024-05-01T12:00:00.250Z",
        "position": 0,
        "probe": False,
        "data": {},
    }
    for key, value in changes.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "record is empty"),
        (
            b"RIFF\x00\x00",
            "record starts with b'RIFF': neither an audio record (magic b'AHAU') nor a lifecycle record ('{')",
        ),
        (b"AHAU\x01", "audio record is truncated: 5 bytes, the fixed prefix alone needs 7"),
        (
            audio_record_bytes(version=2),
            "audio record version 2 is not supported (this decoder reads version 1)",
        ),
        (audio_record_bytes()[:30], "audio record is truncated: 30 bytes, the header alone announces 45"),
        (
            audio_record_bytes(header_length=20),
            "audio record header length 20 is below the 45 bytes of version 1",
        ),
        (
            audio_record_bytes()[:-1],
            "audio payload is truncated: the header announces 4 bytes, the record holds 3",
        ),
        (audio_record_bytes() + b"\x00\x00", "audio record has 2 bytes after its 4-byte payload"),
        (audio_record_bytes(format_code=7), "unknown audio format code 7 (known: 1=PCMU, 2=L16)"),
        (audio_record_bytes(channel_count=0), "channel count is 0; an audio record carries 1 or 2"),
        (audio_record_bytes(channel_count=3), "channel count is 3; an audio record carries 1 or 2"),
        (
            audio_record_bytes(channel_codes=b"\x05\x00"),
            "unknown channel code 5 in slot 0 (known: 1=external, 2=internal)",
        ),
        (
            audio_record_bytes(channel_count=2, channel_codes=b"\x01\x01"),
            "channel 'external' appears twice in the channel layout",
        ),
        (audio_record_bytes(channel_codes=b"\x01\x02"), "unused channel slots must be 0, got 0102"),
        (audio_record_bytes(frame_count=0), "frame count is 0; an audio record holds at least one frame"),
        (audio_record_bytes(rate=0), "rate is 0"),
        (
            b'{"v":1,',
            "lifecycle record is not valid JSON: Expecting property name enclosed in double quotes at offset 7",
        ),
        (b"{\xff}", "lifecycle record is not UTF-8: invalid byte at offset 1"),
        (lifecycle(v=2), "lifecycle record version 2 is not supported (this decoder reads version 1)"),
        (lifecycle(v=...), "lifecycle record has no 'v'"),
        (lifecycle(v="1"), "lifecycle record 'v' must be an integer, got '1'"),
        (lifecycle(kind="audio"), "record kind 'audio' is unknown (expected 'lifecycle')"),
        (lifecycle(event="hangup"), "unknown lifecycle event 'hangup'"),
        (lifecycle(sessionId="abc"), "lifecycle record 'sessionId' is not a UUID: 'abc'"),
        (lifecycle(at="yesterday"), "lifecycle record 'at' is not an ISO 8601 timestamp: 'yesterday'"),
        (
            lifecycle(at="2024-05-01T12:00:00"),
            "lifecycle record 'at' has no UTC offset: '2024-05-01T12:00:00'",
        ),
        (lifecycle(position=True), "lifecycle record 'position' must be an integer, got True"),
        (lifecycle(position=-5), "lifecycle record 'position' is negative: -5"),
        (lifecycle(probe="no"), "lifecycle record 'probe' must be a boolean, got 'no'"),
        (lifecycle(data=[]), "lifecycle record 'data' must be an object, got []"),
        (b"{}", "lifecycle record has no 'v'"),
    ],
)
def test_decoder_names_the_exact_problem(data: bytes, reason: str) -> None:
    with pytest.raises(RecordFormatError) as caught:
        decode_record(data)
    assert caught.value.reason == reason


def test_decoder_refuses_payload_that_splits_a_sample_frame() -> None:
    stereo_l16 = audio_record_bytes(
        format_code=2, channel_count=2, channel_codes=b"\x01\x02", payload_length=4
    )
    stereo_l16 = stereo_l16[:-4] + b"\x00" * 4  # 4 bytes: one stereo L16 sample frame, fine
    assert isinstance(decode_record(stereo_l16), AudioRecord)
    broken = audio_record_bytes(format_code=2, channel_count=2, channel_codes=b"\x01\x02", payload_length=6)
    broken = broken[:-4] + b"\x00" * 6
    with pytest.raises(RecordFormatError) as caught:
        decode_record(broken)
    assert caught.value.reason == (
        "audio payload of 6 bytes is not a whole number of 4-byte sample frames (L16, 2 channel(s))"
    )


def test_json_array_is_not_a_lifecycle_record() -> None:
    with pytest.raises(RecordFormatError) as caught:
        decode_record(b"[1]")
    assert "neither an audio record" in caught.value.reason


def test_record_format_error_is_a_value_error_carrying_its_reason() -> None:
    error = RecordFormatError("record is empty")
    assert isinstance(error, ValueError)
    assert str(error) == error.reason == "record is empty"


def test_a_memoryview_of_16_bit_samples_counts_bytes_not_items() -> None:
    samples = memoryview(bytes([1, 0, 2, 0, 3, 0, 4, 0])).cast("h")  # 4 items, 8 bytes
    decoded = decode_record(encode_audio_record(SESSION, 0, "L16", 8000, ["external", "internal"], samples))
    assert isinstance(decoded, AudioRecord)
    assert decoded.audio == bytes([1, 0, 2, 0, 3, 0, 4, 0])
    assert decoded.sample_count == 2


def test_gap_data_names_the_lost_range() -> None:
    record = encode_lifecycle_record(
        SESSION, "gap", AT, 24000, False, gap_data(22400, 1600, 1, "InternalFailure")
    )
    assert json.loads(record)["data"] == {
        "start": 22400,
        "samples": 1600,
        "frames": 1,
        "reason": "InternalFailure",
    }
