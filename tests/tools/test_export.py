"""Rebuilding a session's audio from its Kinesis records."""

from __future__ import annotations

from array import array
from datetime import datetime, timezone

from audiohook.records import encode_audio_record, encode_lifecycle_record
from audiohook.tools.export import rebuild_conversation, rebuild_session
from audiohook.tools.wav import mulaw_decode

SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
OTHER = "e160e428-53e2-487c-977d-96989bf5c99d"
STEREO = ("external", "internal")
AT = datetime(2026, 11, 24, tzinfo=timezone.utc)


def pcmu_frame(first_code: int, samples: int) -> bytes:
    return bytes((first_code + n) % 256 for n in range(2 * samples))


def test_pcmu_stereo_round_trip_is_exact_and_channels_are_kept():
    frames = [pcmu_frame(n * 7, 1600) for n in range(3)]
    records = [encode_audio_record(SESSION, 1600 * n, "PCMU", 8000, STEREO, frame) for n, frame in enumerate(frames)]
    export = rebuild_session(records, SESSION)
    decoded = mulaw_decode(b"".join(frames))
    assert export.channel_names == STEREO
    assert export.audio.channels[0] == decoded[0::2] and export.audio.channels[1] == decoded[1::2]
    assert export.audio.rate == 8000 and export.silent_samples == 0


def test_records_are_placed_by_position_not_arrival():
    frames = [pcmu_frame(n, 800) for n in range(3)]
    records = [encode_audio_record(SESSION, 800 * n, "PCMU", 8000, STEREO, frame) for n, frame in enumerate(frames)]
    shuffled = [records[2], records[0], records[1]]
    assert rebuild_session(shuffled, SESSION).audio == rebuild_session(records, SESSION).audio


def test_uncovered_positions_become_silence_and_are_counted():
    frame = array("h", [1000, -1000] * 10).tobytes()
    records = [encode_audio_record(SESSION, 0, "L16", 8000, ("external",), frame),
               encode_audio_record(SESSION, 50, "L16", 8000, ("external",), frame)]
    export = rebuild_session(records, SESSION)
    assert export.silent_samples == 30
    assert list(export.audio.channels[0][20:50]) == [0] * 30
    assert export.audio.sample_count == 70


def test_a_duplicated_record_is_not_counted_twice():
    frame = pcmu_frame(3, 800)
    record = encode_audio_record(SESSION, 0, "PCMU", 8000, STEREO, frame)
    assert rebuild_session([record, record], SESSION).audio.sample_count == 800


def test_other_sessions_and_garbage_are_left_out_and_lifecycle_is_summarised():
    records = [
        encode_lifecycle_record(SESSION, "opened", AT, 0, True, {"media": None}),
        encode_audio_record(OTHER, 0, "PCMU", 8000, STEREO, pcmu_frame(0, 10)),
        b"not a record",
    ]
    export = rebuild_session(records, SESSION.upper())
    assert export.audio is None and export.undecodable == 1
    assert [entry["event"] for entry in export.summary()["lifecycle"]] == ["opened"]


# --- a conversation moved by reconnect: continued sessions stitched into one WAV -------------

CONVERSATION = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"
NEW = "0d1c3b9a-43c5-4bd7-9d68-5b3f5a1f2e77"
LATER = datetime(2026, 11, 24, 0, 0, 5, tzinfo=timezone.utc)


def opened(session: str, at: datetime, conversation: str = CONVERSATION, continued: list | None = None) -> bytes:
    return encode_lifecycle_record(session, "opened", at, 0, False, {
        "conversationId": conversation, "continuedSessions": continued or []})


def test_continued_sessions_are_stitched_bit_exact_in_link_order():
    first = [pcmu_frame(n * 5, 1600) for n in range(3)]
    second = [pcmu_frame(100 + n, 1600) for n in range(2)]
    records = [
        opened(NEW, LATER, continued=[{"id": SESSION.upper(), "serverseq": 3, "clientseq": 5, "verified": True}]),
        *(encode_audio_record(NEW, 1600 * n, "PCMU", 8000, STEREO, f) for n, f in enumerate(second)),
        opened(SESSION, AT),
        *(encode_audio_record(SESSION, 1600 * n, "PCMU", 8000, STEREO, f) for n, f in enumerate(first)),
        opened(OTHER, AT, conversation="e160e428-53e2-487c-977d-96989bf5c99e"),
        encode_audio_record(OTHER, 0, "PCMU", 8000, STEREO, pcmu_frame(9, 1600)),
    ]
    export = rebuild_conversation(records, CONVERSATION)
    decoded = mulaw_decode(b"".join(first + second))
    assert [s.session_id for s in export.sessions] == [SESSION, NEW]
    assert export.offsets == [0, 4800]
    assert export.audio.channels[0] == decoded[0::2] and export.audio.channels[1] == decoded[1::2]


def test_audio_discarded_at_the_end_of_a_session_keeps_its_time_in_the_stitched_timeline():
    records = [
        opened(SESSION, AT),
        encode_audio_record(SESSION, 0, "PCMU", 8000, STEREO, pcmu_frame(1, 1600)),
        encode_lifecycle_record(SESSION, "closed", AT, 2000, False, {"reason": "reconnect"}),
        opened(NEW, LATER, continued=[{"id": SESSION, "serverseq": 2, "clientseq": 3}]),
        encode_audio_record(NEW, 0, "PCMU", 8000, STEREO, pcmu_frame(2, 1600)),
    ]
    export = rebuild_conversation(records, CONVERSATION)
    assert export.offsets == [0, 2000]
    assert export.audio.sample_count == 3600
    assert list(export.audio.channels[0][1600:2000]) == [0] * 400
