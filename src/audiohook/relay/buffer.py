"""Records waiting for Kinesis in the relay: per-session queues, batches across sessions,
retries and gap accounting.

No I/O and no clock reads (times are passed in); one event loop owns an :class:`AudioBuffer`.

- Each session has a FIFO queue (:class:`SessionAudio`) of *items*: audio runs (consecutive
  frames that become one audio record) and lifecycle records, in the order they happened,
  so a session's records reach Kinesis in order (one batch per session at a time).
- :meth:`AudioBuffer.append_frames` takes a session's frames since the last flush (the list
  itself, no copy) into its open run, or starts a new run when the position jumped or the run
  is full.
- :meth:`AudioBuffer.take_batch` builds one PutRecords batch (<= 500 records, <= 5 MiB) from
  the sessions that have something to send; :meth:`AudioBuffer.settle` takes the writer's
  outcome: delivered items free their bytes, failed ones go back to the front of their queue
  (in order) until ``max_requeues``, then audio becomes a ``gap`` record.
- Memory is bounded: a frame that would take the buffer past ``max_bytes`` is not kept; it
  is counted and recorded as a ``gap`` (consecutive drops of a session merge into one gap
  record). Nothing is dropped silently.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger

from audiohook.aws.stream import MAX_BYTES_PER_CALL, MAX_RECORDS_PER_CALL
from audiohook.records import (
    MAX_AUDIO_PAYLOAD_BYTES,
    MAX_FRAME_COUNT,
    AudioRecordEncoder,
    encode_lifecycle_record,
    gap_data,
)

logger = Logger(service="audiohook")

DROPPED_REASON = "relay buffer full"
# Lifecycle records (gap records included) get more chances than audio: they are small and
# they are what tells a consumer that something is missing.
LIFECYCLE_REQUEUE_FACTOR = 3


class LatencyHistogram:
    """Delays in whole milliseconds up to ``limit_ms`` (beyond: counted in the last bucket)."""

    __slots__ = ("_buckets", "_limit", "count")

    def __init__(self, limit_ms: int = 60_000) -> None:
        self._limit = limit_ms
        self._buckets = [0] * (limit_ms + 1)
        self.count = 0

    def add(self, seconds: float) -> None:
        ms = min(max(int(seconds * 1000), 0), self._limit)
        self._buckets[ms] += 1
        self.count += 1

    def add_spread(self, now: float, first: float, last: float, count: int) -> None:
        """``count`` samples: the ages at ``now`` of frames received evenly from ``first`` to
        ``last`` (the relay notes when a run of frames began and when it took them, not each
        frame's own receipt: that would cost a clock read per frame)."""
        buckets, limit = self._buckets, self._limit
        step = (last - first) / (count - 1) if count > 1 else 0.0
        for index in range(count):
            ms = int((now - first - step * index) * 1000)
            buckets[ms if 0 <= ms <= limit else (0 if ms < 0 else limit)] += 1
        self.count += count

    @property
    def buckets(self) -> list[int]:
        """Counts per whole millisecond (read-only use: the relay's metrics diff them)."""
        return self._buckets

    def percentile(self, percent: float) -> float | None:
        """The delay (ms, upper edge of its bucket) below which ``percent`` % of samples fall."""
        if not self.count:
            return None
        rank = max(1, round(self.count * percent / 100))
        seen = 0
        for ms, n in enumerate(self._buckets):
            seen += n
            if seen >= rank:
                return float(ms + 1)
        return float(self._limit)  # pragma: no cover - the loop always reaches the rank


@dataclass(slots=True)
class BufferCounters:
    frames_buffered: int = 0
    frames_delivered: int = 0
    audio_records: int = 0
    lifecycle_records: int = 0
    requeued: int = 0
    gaps: int = 0
    frames_dropped: int = 0
    bytes_dropped: int = 0
    samples_dropped: int = 0
    lifecycle_dropped: int = 0


@dataclass(slots=True)
class AudioRun:
    """Consecutive frames of one session: one audio record once encoded."""

    start: int  # position (samples per channel) of the first frame
    end: int  # position just after the last frame
    frames: list[bytes]
    # (first receipt, taken, frame count) per piece of the run (monotonic), for the delay figures
    arrivals: list[tuple[float, float, int]]
    nbytes: int
    frame_count: int = 1
    requeues: int = 0
    data: bytes | None = None  # the encoded record, kept for retries


@dataclass(slots=True)
class LifecycleItem:
    data: bytes
    requeues: int = 0

    @property
    def nbytes(self) -> int:
        return len(self.data)


Item = AudioRun | LifecycleItem


@dataclass(slots=True)
class Gap:
    start: int
    samples: int
    frames: int
    nbytes: int
    reason: str

    @property
    def end(self) -> int:
        return self.start + self.samples


class SessionAudio:
    """One connection's queue. ``key`` is the partition key (the session id, as the service
    uses it); two connections claiming one session id still get a queue each."""

    __slots__ = ("encoder", "finished", "gap", "inflight", "items", "key", "key_bytes", "probe", "tail")

    def __init__(self, key: str) -> None:
        self.key = key
        self.key_bytes = len(key.encode())
        self.encoder: AudioRecordEncoder | None = None
        self.probe = False
        self.items: deque[Item] = deque()
        self.tail: AudioRun | None = None  # the run new frames extend
        self.gap: Gap | None = None  # frames being dropped right now
        self.inflight = False  # some of its items are in a PutRecords call
        self.finished = False  # the connection is gone; forget the queue once empty

    def bind(self, media: Mapping[str, Any], probe: bool) -> None:
        """Set the audio layout (from the session's selected media) before the first frame."""
        self.encoder = AudioRecordEncoder(self.key, media["format"], media["rate"], media["channels"])
        self.probe = probe


@dataclass(slots=True)
class Batch:
    """One PutRecords call: ``entries`` for the writer, ``parts`` to settle them (same order)."""

    entries: list[tuple[str, bytes]] = field(default_factory=list)
    parts: list[tuple[SessionAudio, Item]] = field(default_factory=list)
    sessions: list[SessionAudio] = field(default_factory=list)
    nbytes: int = 0


class AudioBuffer:
    def __init__(self, max_bytes: int, *, max_requeues: int = 3, wall_clock: Callable[[], float],
                 max_records: int = MAX_RECORDS_PER_CALL, max_call_bytes: int = MAX_BYTES_PER_CALL,
                 max_run_bytes: int = MAX_AUDIO_PAYLOAD_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.max_bytes = max_bytes
        self.high_watermark = max_bytes * 3 // 4  # readers pause above this
        self.low_watermark = max_bytes // 2  # and resume below this
        self.max_requeues = max_requeues
        self._wall_clock = wall_clock
        self._max_records = max_records
        self._max_call_bytes = max_call_bytes
        self._max_run_bytes = max_run_bytes
        self.buffered = 0  # bytes held: queued and in flight
        self.pending_records = 0  # items not yet in a batch
        self.pending_bytes = 0
        self.inflight_batches = 0
        self.sessions: dict[SessionAudio, None] = {}  # one queue per connection, never shared
        self.ready: dict[SessionAudio, None] = {}  # queues with something to send, not in flight
        self.counters = BufferCounters()
        self.latency = LatencyHistogram()

    # ------------------------------------------------------------------ filling
    def open_session(self, key: str) -> SessionAudio:
        """A new queue for a connection whose records go under partition key ``key``."""
        audio = SessionAudio(key)
        self.sessions[audio] = None
        return audio

    def append(self, audio: SessionAudio, start: int, end: int, frame: bytes, now: float) -> bool:
        """Queue one accepted frame covering positions [start, end). False: dropped (gap)."""
        return self.append_frames(audio, start, end, [frame], len(frame), now, now)

    def append_frames(self, audio: SessionAudio, start: int, end: int, frames: list[bytes], nbytes: int,
                      first: float, taken: float) -> bool:
        """Queue consecutive accepted frames (``nbytes`` in all, received from ``first`` until
        ``taken``) covering positions [start, end); the list becomes the run's own (no copy).
        False: they did not fit in the buffer and were dropped (recorded as a gap)."""
        count = len(frames)
        if self.buffered + nbytes > self.max_bytes:
            if count > 1:  # as many as fit are kept
                return self._append_one_by_one(audio, start, frames, first, taken)
            self._drop(audio, start, end - start, nbytes)
            return False
        if audio.gap is not None:
            self._close_gap(audio)
        run = audio.tail
        if run is not None and run.end == start and run.nbytes + nbytes <= self._max_run_bytes \
                and run.frame_count + count <= MAX_FRAME_COUNT:
            run.frames += frames
            run.arrivals.append((first, taken, count))
            run.nbytes += nbytes
            run.end = end
            run.frame_count += count
        elif nbytes <= self._max_run_bytes and count <= MAX_FRAME_COUNT:
            audio.tail = AudioRun(start, end, frames, [(first, taken, count)], nbytes, count)
            self._push(audio, audio.tail)
        else:  # more than one record holds
            return self._append_one_by_one(audio, start, frames, first, taken)
        self.buffered += nbytes
        self.pending_bytes += nbytes
        self.counters.frames_buffered += count
        return True

    def _append_one_by_one(self, audio: SessionAudio, start: int, frames: list[bytes], first: float,
                           taken: float) -> bool:
        """Each frame on its own: every run as full as it can be, and what does not fit dropped.
        A frame bigger than a record goes in record-sized pieces of whole samples (each piece
        counts as a frame of its record)."""
        kept = True
        position = start
        assert audio.encoder is not None
        sample_bytes = audio.encoder.sample_bytes
        piece_bytes = self._max_run_bytes - self._max_run_bytes % sample_bytes
        for frame in frames:
            for offset in range(0, len(frame), piece_bytes):
                piece = frame if len(frame) <= piece_bytes else frame[offset:offset + piece_bytes]
                after = position + len(piece) // sample_bytes
                kept &= self.append_frames(audio, position, after, [piece], len(piece), first, taken)
                position = after
        return kept

    def add_records(self, audio: SessionAudio, records: list[bytes]) -> None:
        """Lifecycle records of a connection, queued behind its audio (so they keep their order)."""
        if audio.gap is not None:
            self._close_gap(audio)
        for data in records:
            self._push(audio, LifecycleItem(data))
            self.buffered += len(data)
            self.pending_bytes += len(data)

    def finish(self, audio: SessionAudio) -> None:
        """The connection is gone: forget its queue once everything is sent."""
        audio.finished = True
        if audio.gap is not None:
            self._close_gap(audio)
        self._forget_if_idle(audio)

    def _push(self, audio: SessionAudio, item: Item) -> None:
        if isinstance(item, LifecycleItem):
            audio.tail = None  # later frames start a new record after this one
        audio.items.append(item)
        self.pending_records += 1
        if not audio.inflight:
            self.ready[audio] = None

    # ------------------------------------------------------------------ gaps
    def _drop(self, audio: SessionAudio, start: int, samples: int, size: int) -> None:
        """One frame that does not fit: counted, and part of the session's current gap."""
        counters = self.counters
        counters.frames_dropped += 1
        counters.bytes_dropped += size
        counters.samples_dropped += samples
        gap = audio.gap
        if gap is not None and gap.end == start:
            gap.samples += samples
            gap.frames += 1
            gap.nbytes += size
            return
        if gap is not None:
            self._close_gap(audio)
        audio.gap = Gap(start, samples, 1, size, DROPPED_REASON)
        audio.tail = None
        if not audio.inflight:
            self.ready[audio] = None  # so the gap record goes out even if no frame follows
        logger.warning("relay buffer full: dropping audio (recorded as a gap)",
                       extra={"session_id": audio.key, "start": start, "buffered_bytes": self.buffered,
                              "max_bytes": self.max_bytes})

    def _close_gap(self, audio: SessionAudio) -> None:
        gap = audio.gap
        assert gap is not None
        audio.gap = None
        self._record_gap(audio, gap.start, gap.samples, gap.frames, gap.nbytes, gap.reason, front=False)

    def _record_gap(self, audio: SessionAudio, start: int, samples: int, frames: int, nbytes: int,
                    reason: str, *, front: bool) -> LifecycleItem:
        self.counters.gaps += 1
        at = datetime.fromtimestamp(self._wall_clock(), UTC)
        data = encode_lifecycle_record(audio.key, "gap", at, start + samples, audio.probe,
                                       gap_data(start, samples, frames, reason))
        logger.error("audio lost: gap recorded",
                     extra={"session_id": audio.key, "start": start, "samples": samples, "frames": frames,
                            "bytes": nbytes, "reason": reason})
        item = LifecycleItem(data)
        if not front:
            self._push(audio, item)
            self.buffered += len(data)
            self.pending_bytes += len(data)
        return item

    # ------------------------------------------------------------------ batches
    def take_batch(self) -> Batch | None:
        """The next PutRecords batch, or None when no session has anything to send."""
        batch = Batch()
        for audio in list(self.ready):
            if not self._take(audio, batch):
                break
        if not batch.entries:
            return None
        self.inflight_batches += 1
        return batch

    def _take(self, audio: SessionAudio, batch: Batch) -> bool:
        """Move the session's items into the batch; False once the batch is full."""
        if audio.gap is not None:
            self._close_gap(audio)
        key = audio.key
        key_bytes = audio.key_bytes
        entries, parts = batch.entries, batch.parts
        room = self._max_records - len(entries)
        taken = taken_bytes = 0
        items = audio.items
        while items:
            item = items[0]
            data = item.data
            if data is None:
                assert type(item) is AudioRun and audio.encoder is not None
                data = item.data = audio.encoder.encode(item.start, item.frames, item.frame_count, item.nbytes)
                item.frames = []  # the record holds the bytes now
                if item is audio.tail:
                    audio.tail = None  # sealed: later frames start a new run, even if this one waits
            size = len(data) + key_bytes
            if taken >= room or batch.nbytes + size > self._max_call_bytes:
                break
            items.popleft()
            entries.append((key, data))
            parts.append((audio, item))
            batch.nbytes += size
            taken_bytes += item.nbytes
            taken += 1
        if taken:
            self.pending_records -= taken
            self.pending_bytes -= taken_bytes
            audio.inflight = True
            batch.sessions.append(audio)
            del self.ready[audio]
        elif not items:
            del self.ready[audio]  # nothing left to send (its queue was abandoned)
        return not items

    def settle(self, batch: Batch, failures: Mapping[int, str], now: float) -> None:
        """Apply a PutRecords outcome: ``failures`` maps a failed entry's index to its error code."""
        self.inflight_batches -= 1
        counters = self.counters
        add_spread = self.latency.add_spread
        again: dict[SessionAudio, list[Item]] = {}
        delivered_bytes = audio_records = frames_delivered = 0
        for index, (audio, item) in enumerate(batch.parts):
            code = failures.get(index) if failures else None
            if code is None:
                delivered_bytes += item.nbytes
                if type(item) is AudioRun:
                    audio_records += 1
                    frames_delivered += item.frame_count
                    for first, taken, count in item.arrivals:
                        add_spread(now, first, taken, count)
                else:
                    counters.lifecycle_records += 1
                continue
            item.requeues += 1
            if isinstance(item, AudioRun):
                if item.requeues <= self.max_requeues:
                    counters.requeued += 1
                    again.setdefault(audio, []).append(item)
                    continue
                # Kinesis refused it beyond retries: the audio becomes a gap record in its place.
                self.buffered -= item.nbytes
                counters.frames_dropped += item.frame_count
                counters.bytes_dropped += item.nbytes
                counters.samples_dropped += item.end - item.start
                gap = self._record_gap(audio, item.start, item.end - item.start, item.frame_count, item.nbytes,
                                       f"Kinesis: {code}", front=True)
                self.buffered += gap.nbytes
                again.setdefault(audio, []).append(gap)
            elif item.requeues <= self.max_requeues * LIFECYCLE_REQUEUE_FACTOR:
                counters.requeued += 1
                again.setdefault(audio, []).append(item)
            else:
                self.buffered -= item.nbytes
                counters.lifecycle_dropped += 1
                logger.error("lifecycle record not delivered to Kinesis; dropped",
                             extra={"session_id": audio.key, "error": code, "record": item.data[:300].decode()})
        self.buffered -= delivered_bytes
        counters.audio_records += audio_records
        counters.frames_delivered += frames_delivered
        for audio in batch.sessions:
            audio.inflight = False
            returned = again.get(audio)
            if returned:
                audio.items.extendleft(reversed(returned))
                self.pending_records += len(returned)
                self.pending_bytes += sum(item.nbytes for item in returned)
            if audio.items or audio.gap is not None:
                self.ready[audio] = None
            else:
                self._forget_if_idle(audio)

    def _forget_if_idle(self, audio: SessionAudio) -> None:
        if audio.finished and not audio.items and not audio.inflight and audio.gap is None:
            self.sessions.pop(audio, None)
            self.ready.pop(audio, None)

    # ------------------------------------------------------------------ state
    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return not self.ready and not self.inflight_batches

    def abandon(self, reason: str) -> None:
        """Count and log everything still queued (the relay is exiting and Kinesis did not take it)."""
        for audio in list(self.sessions):
            if audio.gap is not None:
                self._close_gap(audio)
            frames = samples = lifecycle = 0
            for item in audio.items:
                if isinstance(item, AudioRun):
                    frames += item.frame_count
                    samples += item.end - item.start
                    self.counters.bytes_dropped += item.nbytes
                else:
                    lifecycle += 1
            if frames or lifecycle:
                self.counters.frames_dropped += frames
                self.counters.samples_dropped += samples
                self.counters.lifecycle_dropped += lifecycle
                logger.error("records not delivered before exit",
                             extra={"session_id": audio.key, "frames": frames, "samples": samples,
                                    "lifecycle_records": lifecycle, "reason": reason})
            audio.items.clear()
            audio.tail = None
        self.ready.clear()
        self.buffered = self.pending_bytes = self.pending_records = 0
