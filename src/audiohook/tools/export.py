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
