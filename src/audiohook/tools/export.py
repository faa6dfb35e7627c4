"""Rebuild one session's audio and lifecycle from its Kinesis records (sans-I/O).

Audio records are placed by ``position`` (retried entries can arrive out of order);
positions the stream never covered (discarded by the client, or a recorded gap) become
silence, so the WAV keeps the call's timeline. PCMU is decoded to 16-bit PCM; channels
are kept in the order the server selected.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable

from audiohook.records import AudioRecord, LifecycleRecord, RecordFormatError, canonical_session_id, decode_record
from audiohook.tools.wav import Audio, l16_decode, mulaw_decode


@dataclass
class SessionExport:
    session_id: str
    audio: Audio | None
    channel_names: tuple[str, ...] = ()
    lifecycle: list[LifecycleRecord] = field(default_factory=list)
    audio_records: int = 0
    silent_samples: int = 0  # samples filled with silence (discarded or gaps)
    undecodable: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "audioRecords": self.audio_records,
            "samplesPerChannel": self.audio.sample_count if self.audio else 0,
            "seconds": round(self.audio.seconds, 3) if self.audio else 0,
            "channels": list(self.channel_names),
            "silenceFilledSamples": self.silent_samples,
            "undecodableRecords": self.undecodable,
            "lifecycle": [
                {"event": r.event, "at": r.at.isoformat(), "position": r.position, "probe": r.probe, "data": r.data}
                for r in self.lifecycle
            ],
        }


def _samples(record: AudioRecord) -> array:
    return mulaw_decode(record.audio) if record.format == "PCMU" else l16_decode(record.audio)


def rebuild_session(records: Iterable[bytes], session_id: str) -> SessionExport:
    wanted = canonical_session_id(session_id)
    export = SessionExport(wanted, None)
    audio: list[AudioRecord] = []
    for data in records:
        try:
            record = decode_record(data)
        except RecordFormatError:
            export.undecodable += 1
            continue
        if canonical_session_id(record.session_id) != wanted:
            continue
        if isinstance(record, AudioRecord):
            audio.append(record)
        else:
            export.lifecycle.append(record)
    export.lifecycle.sort(key=lambda r: r.at)
    export.audio_records = len(audio)
    if not audio:
        return export
    audio.sort(key=lambda r: r.position)
    first = audio[0]
    count = len(first.channels)
    channels = tuple(array("h") for _ in range(count))
    cursor = 0
    for record in audio:
        if record.position > cursor:
            silence = array("h", bytes(2 * (record.position - cursor)))
            export.silent_samples += len(silence)
            for channel in channels:
                channel.extend(silence)
            cursor = record.position
        interleaved = _samples(record)
        skip = (cursor - record.position) * count  # an overlapping (duplicated) record adds only its tail
        if skip >= len(interleaved):
            continue
        for index, channel in enumerate(channels):
            channel.extend(interleaved[skip + index::count])
        cursor = record.position + len(interleaved) // count
    export.audio = Audio(first.rate, channels)
    export.channel_names = tuple(first.channels)
    return export


# --- a conversation: continued sessions stitched into one timeline ---------------------------


@dataclass
class ConversationExport:
    conversation_id: str
    sessions: list[SessionExport]
    """The sessions in the order their audio is placed (each continues the one before)."""
    offsets: list[int]
    """Where each session's position 0 lands in the stitched audio (samples per channel)."""
    audio: Audio | None
    channel_names: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {
            "conversationId": self.conversation_id,
            "sessions": [{"sessionId": s.session_id, "offset": offset, "samplesPerChannel":
                          s.audio.sample_count if s.audio else 0} for s, offset in zip(self.sessions, self.offsets)],
            "samplesPerChannel": self.audio.sample_count if self.audio else 0,
            "channels": list(self.channel_names),
        }


def _session_end(export: SessionExport) -> int:
    """Where a session's timeline ends: its last audio sample, or a later position its
    lifecycle records state (audio the client discarded at the end still takes time)."""
    end = export.audio.sample_count if export.audio else 0
    return max([end, *(record.position for record in export.lifecycle)])


def rebuild_conversation(records: Iterable[bytes], conversation_id: str) -> ConversationExport:
    """All sessions of a conversation that continue one another (``continuedSessions`` in
    their ``opened`` records), in order, with each session's audio placed after the end of
    the session it continues. Sessions of the conversation that no link ties together are
    placed one after the other in the order they were opened."""
    data = list(records)
    wanted = conversation_id.lower()
    opened: dict[str, LifecycleRecord] = {}
    for blob in data:
        try:
            record = decode_record(blob)
        except RecordFormatError:
            continue
        if (isinstance(record, LifecycleRecord) and record.event == "opened"
                and str(record.data.get("conversationId", "")).lower() == wanted):
            opened.setdefault(record.session_id, record)
    continues: dict[str, str] = {}  # session -> the session it continues
    for session_id, record in opened.items():
        for link in record.data.get("continuedSessions") or []:
            previous = canonical_session_id(link["id"])
            if previous in opened:
                continues[session_id] = previous
    followers = {previous: session for session, previous in continues.items()}
    order: list[str] = []
    for root in sorted((s for s in opened if s not in continues), key=lambda s: opened[s].at):
        current: str | None = root
        while current is not None and current not in order:
            order.append(current)
            current = followers.get(current)
    sessions = [rebuild_session(data, session_id) for session_id in order]
    offsets: list[int] = []
    cursor = 0
    for export in sessions:
        offsets.append(cursor)
        cursor += _session_end(export)
    with_audio = [s for s in sessions if s.audio is not None]
    if not with_audio:
        return ConversationExport(conversation_id, sessions, offsets, None)
    first = with_audio[0]
    assert first.audio is not None
    channels = tuple(array("h") for _ in first.channel_names)
    for export, offset in zip(sessions, offsets):
        length = _session_end(export)
        for index, channel in enumerate(channels):
            if export.audio is not None:
                channel.extend(export.audio.channels[index])
            missing = offset + length - len(channel)
            if missing > 0:
                channel.extend(array("h", bytes(2 * missing)))
    return ConversationExport(conversation_id, sessions, offsets, Audio(first.audio.rate, channels),
                              first.channel_names)
