"""The relay's record queues, without sockets or AWS: runs, batches, retries, gaps."""

from __future__ import annotations

import json

from audiohook.records import (
    MAX_AUDIO_PAYLOAD_BYTES,
    MAX_FRAME_COUNT,
    AudioRecord,
    LifecycleRecord,
    decode_record,
    encode_lifecycle_record,
)
from audiohook.relay.buffer import DROPPED_REASON, AudioBuffer, LatencyHistogram, SessionAudio

SESSION_A = "e160e428-53e2-487c-977d-96989bf5c99d"
SESSION_B = "4c3d4d4e-8f5a-4f43-9b0c-1a2b3c4d5e6f"
STEREO_PCMU = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
FRAME = 3200  # 200 ms of stereo PCMU
SAMPLES = 1600


def buffer(max_bytes: int = 10_000_000, **options: object) -> AudioBuffer:
    return AudioBuffer(max_bytes, wall_clock=lambda: 1_700_000_000.0, **options)  # type: ignore[arg-type]


def session(audio_buffer: AudioBuffer, key: str = SESSION_A) -> SessionAudio:
    audio = audio_buffer.open_session(key)
    audio.bind(STEREO_PCMU, probe=False)
    return audio


def feed(audio_buffer: AudioBuffer, audio: SessionAudio, count: int, first: int = 0, at: float = 0.0) -> bool:
    ok = True
    for n in range(first, first + count):
        ok &= audio_buffer.append(audio, n * SAMPLES, (n + 1) * SAMPLES, bytes([n % 256]) * FRAME, at)
    return ok


def lifecycle(event: str = "closed", key: str = SESSION_A) -> bytes:
    from datetime import UTC, datetime

    return encode_lifecycle_record(key, event, datetime(2024, 1, 1, tzinfo=UTC), 0, False, {})  # type: ignore[arg-type]


def decoded(batch_entries: list[tuple[str, bytes]]) -> list[AudioRecord | LifecycleRecord]:
    return [decode_record(data) for _, data in batch_entries]


def test_consecutive_frames_of_a_session_become_one_record() -> None:
    audio_buffer = buffer()
    audio = session(audio_buffer)
    feed(audio_buffer, audio, 5)

    batch = audio_buffer.take_batch()

    assert batch is not None
    (record,) = decoded(batch.entries)
    assert isinstance(record, AudioRecord)
    assert (record.position, record.frame_count, record.sample_count) == (0, 5, 5 * SAMPLES)
    assert record.audio == b"".join(bytes([n]) * FRAME for n in range(5))
    assert batch.entries[0][0] == SESSION_A


def test_one_batch_carries_many_sessions() -> None:
    audio_buffer = buffer()
    sessions = [session(audio_buffer, f"00000000-0000-4000-8000-{n:012d}") for n in range(30)]
    for audio in sessions:
        feed(audio_buffer, audio, 2)

    batch = audio_buffer.take_batch()

    assert batch is not None and len(batch.entries) == 30
    assert {key for key, _ in batch.entries} == {audio.key for audio in sessions}
    assert audio_buffer.take_batch() is None  # every session is in flight now


def test_a_position_jump_starts_a_new_record() -> None:
    audio_buffer = buffer()
    audio = session(audio_buffer)
    feed(audio_buffer, audio, 2)
    feed(audio_buffer, audio, 2, first=10)  # the client discarded audio in between

    batch = audio_buffer.take_batch()

    assert batch is not None
    assert [(r.position, r.frame_count) for r in decoded(batch.entries)] == [(0, 2), (10 * SAMPLES, 2)]


def test_lifecycle_records_keep_their_place_between_audio() -> None:
    audio_buffer = buffer()
    audio = session(audio_buffer)
    feed(audio_buffer, audio, 2)
    audio_buffer.add_records(audio, [lifecycle("paused")])
    feed(audio_buffer, audio, 1, first=2)

    batch = audio_buffer.take_batch()

    assert batch is not None
    kinds = [r.event if isinstance(r, LifecycleRecord) else r.position for r in decoded(batch.entries)]
    assert kinds == [0, "paused", 2 * SAMPLES]


def test_batches_respect_the_record_and_byte_limits() -> None:
    audio_buffer = buffer(max_records=4, max_call_bytes=3 * (FRAME + 45 + 36))
    sessions = [session(audio_buffer, f"00000000-0000-4000-8000-{n:012d}") for n in range(5)]
    for audio in sessions:
        feed(audio_buffer, audio, 1)

    sizes = []
    while (batch := audio_buffer.take_batch()) is not None:
        sizes.append(len(batch.entries))
    assert sizes == [3, 2]


def test_a_run_left_out_of_a_full_batch_takes_no_more_frames() -> None:
    # Session B's run is encoded but does not fit; frames arriving later must not join it.
    audio_buffer = buffer(max_records=1)
    first, second = session(audio_buffer, SESSION_A), session(audio_buffer, SESSION_B)
    feed(audio_buffer, first, 1)
    feed(audio_buffer, second, 1)
    sent = []
    while (batch := audio_buffer.take_batch()) is not None:
        sent.extend(decoded(batch.entries))
        feed(audio_buffer, second, 1, first=len(sent))  # keeps streaming meanwhile
        audio_buffer.settle(batch, {}, now=0.1)
        if len(sent) > 10:
            break
    frames_b = [r for r in sent if isinstance(r, AudioRecord) and r.session_id == SESSION_B]
    positions = [r.position for r in frames_b]
    assert positions == [SAMPLES * n for n in range(len(frames_b))]  # no hole: nothing lost
    assert sum(r.frame_count for r in frames_b) == audio_buffer.counters.frames_delivered - 1


def test_frames_arriving_while_a_session_is_in_flight_wait_for_the_next_batch() -> None:
    audio_buffer = buffer()
    audio = session(audio_buffer)
    feed(audio_buffer, audio, 1)
    first = audio_buffer.take_batch()
    feed(audio_buffer, audio, 3, first=1)

    assert audio_buffer.take_batch() is None
    assert first is not None
    audio_buffer.settle(first, {}, now=0.1)
    second = audio_buffer.take_batch()
    assert second is not None
    assert [(r.position, r.frame_count) for r in decoded(second.entries)] == [(SAMPLES, 3)]


def test_failed_entries_go_back_to_the_front_in_order() -> None:
    audio_buffer = buffer()
    audio = session(audio_buffer)
    feed(audio_buffer, audio, 1)
    audio_buffer.add_records(audio, [lifecycle("updated")])
    feed(audio_buffer, audio, 1, first=1)
    batch = audio_buffer.take_batch()
    assert batch is not None and len(batch.entries) == 3
    feed(audio_buffer, audio, 1, first=2)

    audio_buffer.settle(batch, {0: "ProvisionedThroughputExceededException", 2: "InternalFailure"}, now=0.1)

    again = audio_buffer.take_batch()
    assert again is not None
    assert [r.position for r in decoded(again.entries)] == [0, SAMPLES, 2 * SAMPLES]
    assert audio_buffer.counters.requeued == 2
    assert audio_buffer.counters.lifecycle_records == 1


def test_audio_refused_beyond_the_retries_becomes_a_gap_record() -> None:
    audio_buffer = buffer(max_requeues=1)
    audio = session(audio_buffer)
    feed(audio_buffer, audio, 2)
    for _ in range(2):
        batch = audio_buffer.take_batch()
        assert batch is not None
        audio_buffer.settle(batch, {0: "AccessDeniedException"}, now=0.1)

    batch = audio_buffer.take_batch()

    assert batch is not None
    (gap,) = decoded(batch.entries)
    assert isinstance(gap, LifecycleRecord) and gap.event == "gap"
    assert gap.data == {"start": 0, "samples": 2 * SAMPLES, "frames": 2, "reason": "Kinesis: AccessDeniedException"}
    assert gap.position == 2 * SAMPLES
    counters = audio_buffer.counters
    assert (counters.gaps, counters.frames_dropped, counters.samples_dropped) == (1, 2, 2 * SAMPLES)
    audio_buffer.settle(batch, {}, now=0.2)
    assert audio_buffer.buffered == 0


def test_a_full_buffer_drops_frames_into_one_gap_record() -> None:
    audio_buffer = buffer(max_bytes=2 * FRAME)
    audio = session(audio_buffer)
    assert feed(audio_buffer, audio, 2)
    assert not feed(audio_buffer, audio, 3, first=2)  # no room: dropped
    batch = audio_buffer.take_batch()
    assert batch is not None
    audio_buffer.settle(batch, {}, now=0.1)
    assert feed(audio_buffer, audio, 1, first=5)  # room again

    records = decoded(batch.entries)
    assert isinstance(records[0], AudioRecord) and records[0].frame_count == 2
    gap = records[1]
    assert isinstance(gap, LifecycleRecord) and gap.event == "gap"
    assert gap.data == {"start": 2 * SAMPLES, "samples": 3 * SAMPLES, "frames": 3, "reason": DROPPED_REASON}
    assert audio_buffer.counters.frames_dropped == 3 and audio_buffer.counters.gaps == 1


def test_a_finished_session_is_forgotten_once_sent() -> None:
    audio_buffer = buffer()
    audio = session(audio_buffer)
    feed(audio_buffer, audio, 1)
    audio_buffer.add_records(audio, [lifecycle("disconnected")])
    audio_buffer.finish(audio)
    assert audio in audio_buffer.sessions

    batch = audio_buffer.take_batch()
    assert batch is not None
    audio_buffer.settle(batch, {}, now=1.5)

    assert audio not in audio_buffer.sessions and audio_buffer.idle and audio_buffer.buffered == 0
    assert audio_buffer.latency.count == 1 and audio_buffer.latency.percentile(50) == 1501.0


def test_abandon_counts_what_never_left() -> None:
    audio_buffer = buffer()
    audio = session(audio_buffer)
    feed(audio_buffer, audio, 4)
    audio_buffer.add_records(audio, [lifecycle()])

    audio_buffer.abandon("exiting")

    counters = audio_buffer.counters
    assert (counters.frames_dropped, counters.lifecycle_dropped) == (4, 1)
    assert audio_buffer.idle and audio_buffer.take_batch() is None


def test_two_connections_with_one_session_id_never_share_a_queue() -> None:
    audio_buffer = buffer()
    first, second = session(audio_buffer), session(audio_buffer)  # same session id (partition key)
    feed(audio_buffer, first, 2)
    feed(audio_buffer, second, 1)  # the second connection's audio starts at position 0 again
    audio_buffer.add_records(second, [lifecycle("disconnected")])
    audio_buffer.finish(second)

    batch = audio_buffer.take_batch()

    assert batch is not None
    records = decoded(batch.entries)
    assert [(r.position, r.frame_count, r.audio[:1]) for r in records if isinstance(r, AudioRecord)] == [
        (0, 2, b"\x00"), (0, 1, b"\x00")]
    assert [r.event for r in records if isinstance(r, LifecycleRecord)] == ["disconnected"]
    assert first is not second and first in audio_buffer.sessions and not first.finished


def test_latency_percentiles() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 101):
        histogram.add(ms / 1000 - 0.0005)
    assert histogram.percentile(50) == 50.0
    assert histogram.percentile(99) == 99.0
    assert LatencyHistogram().percentile(50) is None


def test_a_runs_frames_count_once_each_spread_evenly_over_their_receipt() -> None:
    histogram = LatencyHistogram(limit_ms=1000)
    histogram.add_spread(10.0, 9.5, 9.75, 3)  # received at 9.5, 9.625 and 9.75
    histogram.add_spread(10.0, 9.9995, 9.9995, 1)  # 0.5 ms
    histogram.add_spread(10.0, 12.0, 12.0, 1)  # in the future
    histogram.add_spread(10.0, 5.0, 5.0, 1)  # beyond the limit
    assert histogram.count == 6
    assert [ms for ms, n in enumerate(histogram.buckets) for _ in range(n)] == [0, 0, 250, 375, 500, 1000]


def test_gap_records_are_valid_lifecycle_json() -> None:
    audio_buffer = buffer(max_bytes=FRAME)
    audio = session(audio_buffer, SESSION_B)
    feed(audio_buffer, audio, 2)
    batch = audio_buffer.take_batch()
    assert batch is not None
    document = json.loads(batch.entries[-1][1])
    assert document["event"] == "gap" and document["sessionId"] == SESSION_B


def audio_records(audio_buffer: AudioBuffer) -> list[AudioRecord]:
    """Every audio record the buffer sends until it is empty (each batch settled as delivered)."""
    records = []
    while (batch := audio_buffer.take_batch()) is not None:
        records += [r for r in decoded(batch.entries) if isinstance(r, AudioRecord)]
        audio_buffer.settle(batch, {}, now=1.0)
    return records


def test_frames_appended_together_that_overflow_the_open_record_continue_it_without_a_hole() -> None:
    audio_buffer = buffer(max_run_bytes=5 * FRAME)
    audio = session(audio_buffer)
    feed(audio_buffer, audio, 3)
    frames = [bytes([n]) * FRAME for n in range(3, 7)]

    assert audio_buffer.append_frames(audio, 3 * SAMPLES, 7 * SAMPLES, frames, 4 * FRAME, 0.0, 0.1)

    records = audio_records(audio_buffer)
    assert [(r.position, r.frame_count) for r in records] == [(0, 3), (3 * SAMPLES, 4)]
    assert b"".join(r.audio for r in records) == b"".join(bytes([n]) * FRAME for n in range(7))
    assert audio_buffer.counters.frames_delivered == 7


def test_frames_appended_together_that_only_partly_fit_keep_what_fits_and_gap_the_rest() -> None:
    audio_buffer = buffer(max_bytes=3 * FRAME + FRAME // 2)
    audio = session(audio_buffer)
    frames = [bytes([n]) * FRAME for n in range(5)]

    assert not audio_buffer.append_frames(audio, 0, 5 * SAMPLES, frames, 5 * FRAME, 0.0, 0.1)
    batch = audio_buffer.take_batch()

    assert batch is not None
    record, gap = decoded(batch.entries)
    assert isinstance(record, AudioRecord) and isinstance(gap, LifecycleRecord)
    assert (record.position, record.frame_count, record.audio) == (0, 3, b"".join(frames[:3]))
    assert (gap.event, gap.position) == ("gap", 5 * SAMPLES)
    assert gap.data == {"start": 3 * SAMPLES, "samples": 2 * SAMPLES, "frames": 2, "reason": DROPPED_REASON}
    counters = audio_buffer.counters
    assert (counters.frames_buffered, counters.frames_dropped, counters.bytes_dropped) == (3, 2, 2 * FRAME)


def test_a_record_never_holds_more_than_the_frame_count_limit() -> None:
    audio_buffer = buffer()
    audio = session(audio_buffer)
    frames = [bytes([n % 256, n % 256]) for n in range(MAX_FRAME_COUNT + 2)]  # one sample pair each

    assert audio_buffer.append_frames(audio, 0, len(frames), frames, 2 * len(frames), 0.0, 0.1)

    records = audio_records(audio_buffer)
    assert [(r.position, r.frame_count) for r in records] == [(0, MAX_FRAME_COUNT), (MAX_FRAME_COUNT, 2)]
    assert b"".join(r.audio for r in records) == b"".join(frames)


def test_a_frame_bigger_than_a_record_goes_out_in_record_sized_pieces_of_whole_samples() -> None:
    audio_buffer = buffer()
    audio = session(audio_buffer)
    big = bytes(n % 251 for n in range(MAX_AUDIO_PAYLOAD_BYTES + FRAME + 1))  # 1,051,696 bytes: whole samples
    piece = MAX_AUDIO_PAYLOAD_BYTES - 1  # the most whole samples a record holds
    after = SAMPLES + len(big) // 2

    assert feed(audio_buffer, audio, 1)
    assert audio_buffer.append(audio, SAMPLES, after, big, 0.0)
    assert audio_buffer.append(audio, after, after + SAMPLES, bytes([7]) * FRAME, 0.0)
    records = audio_records(audio_buffer)

    assert [(r.position, len(r.audio)) for r in records] == [
        (0, FRAME), (SAMPLES, piece), (SAMPLES + piece // 2, len(big) - piece + FRAME)]  # the next frame joins
    assert b"".join(r.audio for r in records) == bytes(FRAME) + big + bytes([7]) * FRAME
    assert (audio_buffer.buffered, audio_buffer.counters.gaps) == (0, 0)
