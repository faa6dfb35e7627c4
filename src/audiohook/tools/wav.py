"""G.711 mu-law, 8 kHz WAV files and the audio a Genesys-like client streams (stdlib only).

mu-law follows ITU-T G.711 on 16-bit samples (the 14-bit law scaled by 4): 255 of the 256
codes decode to the exact G.711 output levels. ``audioop`` is not used: it is gone in 3.13.

Example::

    source = AudioSource.from_wav("call.wav")          # or AudioSource.tone(440, seconds=3)
    for frame in source.frames("PCMU", ["external", "internal"], samples_per_frame=1600):
        ...
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

AUDIOHOOK_RATE = 8000
FORMAT_PCM = 1
FORMAT_MULAW = 7
FORMAT_EXTENSIBLE = 0xFFFE
_FORMAT_NAMES = {3: "IEEE float", 6: "A-law", 2: "ADPCM", 0x11: "IMA ADPCM", 0x55: "MP3"}
# A stereo source holds the external (customer) side first, as Genesys orders it.
SOURCE_CHANNEL_OF = {"external": 0, "internal": 1}


class WavError(ValueError):
    """A WAV file this client cannot stream; the message says why and what to do."""


# --- G.711 mu-law -----------------------------------------------------------------------

_SEGMENTS = 8
_STEPS = 16
_MAX_MAGNITUDE_14 = 8191


def _segment_start(segment: int) -> int:
    """First 14-bit magnitude of a segment: -1, 31, 95, ... 4063 (segment 0's first step is 1 wide)."""
    return (32 << segment) - 33


def _build_tables() -> tuple[array, bytes]:
    decode = array("h", [0] * 256)
    encode_magnitude = bytearray(_MAX_MAGNITUDE_14 + 1)
    for segment in range(_SEGMENTS):
        step = 2 << segment
        for mantissa in range(_STEPS):
            low = _segment_start(segment) + step * mantissa
            level = 4 * (low + step // 2)
            code = segment << 4 | mantissa
            decode[~code & 0xFF] = level
            decode[~(code | 0x80) & 0xFF] = -level
            for magnitude in range(max(low, 0), min(low + step, _MAX_MAGNITUDE_14 + 1)):
                encode_magnitude[magnitude] = code
    # Magnitudes beyond the last decision level (8159) clip to the largest code.
    for magnitude in range(_segment_start(_SEGMENTS), _MAX_MAGNITUDE_14 + 1):
        encode_magnitude[magnitude] = (_SEGMENTS - 1) << 4 | (_STEPS - 1)
    # 0x7F is G.711's "negative zero". 16-bit PCM has no -0, so it decodes to -1, the
    # nearest negative sample, which encodes back to 0x7F: mu-law audio survives
    # decode-then-encode bit for bit.
    decode[0x7F] = -1
    return decode, bytes(encode_magnitude)


MULAW_DECODE, _ENCODE_BY_MAGNITUDE = _build_tables()


def _build_encode_table() -> bytes:
    """mu-law code of every 16-bit sample, indexed by the sample's unsigned 16-bit pattern."""
    table = bytearray(65536)
    for pattern in range(65536):
        sample = pattern - 65536 if pattern >= 32768 else pattern
        if sample >= 0:
            table[pattern] = ~_ENCODE_BY_MAGNITUDE[sample >> 2] & 0xFF
        else:
            magnitude = min(-sample >> 2, _MAX_MAGNITUDE_14)  # -32768 has no positive twin
            table[pattern] = ~(_ENCODE_BY_MAGNITUDE[magnitude] | 0x80) & 0xFF
    return bytes(table)


MULAW_ENCODE = _build_encode_table()


def mulaw_encode(samples: Sequence[int]) -> bytes:
    """16-bit signed samples -> mu-law bytes."""
    return bytes(MULAW_ENCODE[sample & 0xFFFF] for sample in samples)


def mulaw_decode(data: bytes) -> array:
    """mu-law bytes -> 16-bit signed samples (``array('h')``)."""
    return array("h", (MULAW_DECODE[code] for code in data))


def l16_encode(samples: Sequence[int]) -> bytes:
    """16-bit signed samples -> little-endian bytes (AudioHook L16)."""
    pcm = array("h", samples)
    if sys.byteorder == "big":
        pcm.byteswap()
    return pcm.tobytes()


def l16_decode(data: bytes) -> array:
    pcm = array("h")
    pcm.frombytes(data[: len(data) // 2 * 2])
    if sys.byteorder == "big":
        pcm.byteswap()
    return pcm


# --- WAV files --------------------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    """Samples per channel (16-bit signed) at ``rate`` Hz."""

    rate: int
    channels: tuple[array, ...]

    @property
    def sample_count(self) -> int:
        return len(self.channels[0]) if self.channels else 0

    @property
    def seconds(self) -> float:
        return self.sample_count / self.rate


def parse_wav(data: bytes) -> Audio:
    """An 8 kHz mono/stereo WAV holding 16-bit PCM or mu-law; WavError says why not."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a WAV file: it does not start with a RIFF/WAVE header")
    fmt: bytes | None = None
    samples: bytes | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = data[offset + 8 : offset + 8 + size]
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            # Streaming writers leave the size at 0 or 0xFFFFFFFF: take what is there.
            samples = body if 0 < size < 0xFFFFFFFF else data[offset + 8 :]
            break
        offset += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise WavError("the WAV file has no valid fmt chunk")
    if samples is None:
        raise WavError("the WAV file has no data chunk")

    format_tag, channel_count, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if format_tag == FORMAT_EXTENSIBLE and len(fmt) >= 26:
        format_tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the sub-format GUID
    if format_tag not in (FORMAT_PCM, FORMAT_MULAW):
        name = _FORMAT_NAMES.get(format_tag, "unknown")
        raise WavError(
            f"the WAV file is encoded as format {format_tag} ({name}); "
            "only 16-bit PCM (1) or mu-law (7) can be streamed"
        )
    if format_tag == FORMAT_PCM and bits != 16:
        raise WavError(f"the WAV file is {bits}-bit PCM; only 16-bit PCM or mu-law can be streamed")
    if format_tag == FORMAT_MULAW and bits != 8:
        raise WavError(f"the WAV file is mu-law with {bits} bits per sample; mu-law has 8")
    if channel_count not in (1, 2):
        raise WavError(f"the WAV file has {channel_count} channels; only mono or stereo can be streamed")
    if rate != AUDIOHOOK_RATE:
        raise WavError(
            f"the WAV file is sampled at {rate} Hz; AudioHook audio is {AUDIOHOOK_RATE} Hz "
            f"(convert it first, e.g. sox in.wav -r {AUDIOHOOK_RATE} out.wav)"
        )

    interleaved = l16_decode(samples) if format_tag == FORMAT_PCM else mulaw_decode(samples)
    whole = len(interleaved) // channel_count * channel_count
    channels = tuple(array("h", interleaved[index:whole:channel_count]) for index in range(channel_count))
    return Audio(rate, channels)


def wav_bytes(audio: Audio) -> bytes:
    """A 16-bit PCM WAV file holding ``audio``."""
    count = len(audio.channels)
    interleaved = array("h", bytes(2 * count * audio.sample_count))
    for index, channel in enumerate(audio.channels):
        interleaved[index::count] = channel
    pcm = l16_encode(interleaved)
    fmt = struct.pack("<HHIIHH", FORMAT_PCM, count, audio.rate, audio.rate * 2 * count, 2 * count, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    if len(pcm) & 1:
        chunks += b"\0"
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def read_wav(path: str | Path) -> Audio:
    return parse_wav(Path(path).read_bytes())


def write_wav(path: str | Path, audio: Audio) -> None:
    Path(path).write_bytes(wav_bytes(audio))


# --- what the client streams ------------------------------------------------------------


@dataclass(frozen=True)
class AudioSource:
    """Audio to stream, cut into AudioHook frames in the format the server selected."""

    audio: Audio

    @classmethod
    def from_wav(cls, path: str | Path) -> AudioSource:
        return cls(read_wav(path))

    @classmethod
    def tone(
        cls, frequency_hz: float = 440.0, seconds: float = 1.0, channels: int = 1, amplitude: float = 0.3
    ) -> AudioSource:
        """A sine tone, the same on every channel."""
        if channels not in (1, 2):
            raise ValueError(f"a tone has 1 or 2 channels, not {channels}")
        count = round(seconds * AUDIOHOOK_RATE)
        peak = amplitude * 32767
        wave = array(
            "h",
            (round(peak * math.sin(2 * math.pi * frequency_hz * n / AUDIOHOOK_RATE)) for n in range(count)),
        )
        return cls(Audio(AUDIOHOOK_RATE, tuple(array("h", wave) for _ in range(channels))))

    @property
    def seconds(self) -> float:
        return self.audio.seconds

    def frames(self, format: str, channels: Sequence[str], samples_per_frame: int) -> Iterator[bytes]:
        """Interleaved frames of ``samples_per_frame`` samples per channel (the last may be shorter).

        ``channels`` is the selected media's channel list; a mono source feeds every channel,
        a stereo source feeds ``external`` from its first channel and ``internal`` from its second.
        """
        if format not in ("PCMU", "L16"):
            raise ValueError(f"cannot stream format {format!r}: only PCMU or L16")
        sources = [self._channel_for(name) for name in channels]
        count = len(sources)
        for start in range(0, self.audio.sample_count, samples_per_frame):
            stop = min(start + samples_per_frame, self.audio.sample_count)
            interleaved = array("h", bytes(2 * count * (stop - start)))
            for index, source in enumerate(sources):
                interleaved[index::count] = source[start:stop]
            yield mulaw_encode(interleaved) if format == "PCMU" else l16_encode(interleaved)

    def _channel_for(self, name: str) -> array:
        if name not in SOURCE_CHANNEL_OF:
            raise ValueError(f"unknown channel {name!r}: expected external or internal")
        return self.audio.channels[min(SOURCE_CHANNEL_OF[name], len(self.audio.channels) - 1)]
