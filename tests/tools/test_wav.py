"""G.711 mu-law, WAV files and the audio source the client streams."""

from __future__ import annotations

import math
import struct
from array import array
from pathlib import Path

import pytest

from audiohook.tools.wav import (
    MULAW_DECODE,
    MULAW_ENCODE,
    Audio,
    AudioSource,
    WavError,
    l16_decode,
    l16_encode,
    mulaw_decode,
    mulaw_encode,
    parse_wav,
    read_wav,
    wav_bytes,
    write_wav,
)


def wav_file(
    fmt_tag: int,
    channels: int,
    rate: int,
    bits: int,
    data: bytes,
    extra_chunks: bytes = b"",
    extensible: bool = False,
) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else fmt_tag, channels, rate, rate * block, block, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", fmt_tag) + bytes(14)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) & 1 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


# --- mu-law -----------------------------------------------------------------------------


def test_mulaw_decodes_to_the_g711_levels() -> None:
    # G.711 mu-law output levels (14-bit, here scaled by 4 to 16-bit): 0, 2, ... 30 in segment 0,
    # 33, 37, ... 93 in segment 1, up to 8031 at the top of segment 7.
    assert MULAW_DECODE[0xFF] == 0
    assert MULAW_DECODE[0xFE] == 4 * 2
    assert MULAW_DECODE[0xF0] == 4 * 30
    assert MULAW_DECODE[0xEF] == 4 * 33
    assert MULAW_DECODE[0xE0] == 4 * 93
    assert MULAW_DECODE[0x80] == 4 * 8031 == 32124
    assert MULAW_DECODE[0x00] == -32124
    assert MULAW_DECODE[0x7E] == -8


def test_mulaw_negative_zero_decodes_to_minus_one() -> None:
    assert MULAW_DECODE[0x7F] == -1


def test_mulaw_levels_are_symmetric_and_ordered() -> None:
    positive = [MULAW_DECODE[0xFF - code] for code in range(128)]
    assert positive == sorted(positive)
    assert all(MULAW_DECODE[code & 0x7F] == -MULAW_DECODE[code | 0x80] for code in range(127))


def test_encoding_a_decoded_code_gives_the_code_back_for_all_256() -> None:
    assert [MULAW_ENCODE[MULAW_DECODE[code] & 0xFFFF] for code in range(256)] == list(range(256))


def test_encoding_is_stable_under_decode_and_encode_for_every_sample() -> None:
    samples = range(-32768, 32768)
    once = mulaw_encode(samples)
    assert mulaw_encode(mulaw_decode(once)) == once


def test_encoding_picks_the_nearest_level_within_half_a_step() -> None:
    for sample in range(-32124, 32125, 7):
        level = mulaw_decode(mulaw_encode([sample]))[0]
        exponent = (~MULAW_ENCODE[sample & 0xFFFF] >> 4) & 7
        assert abs(level - sample) <= 4 << exponent, sample  # half of the 16-bit step 8 << exponent


def test_mulaw_decision_points() -> None:
    assert mulaw_encode([0, 3, 4, 11, 12, -1, -3, -4]) == bytes(
        [0xFF, 0xFF, 0xFE, 0xFE, 0xFD, 0x7F, 0x7F, 0x7E]
    )
    assert mulaw_encode([32767, -32768]) == bytes([0x80, 0x00])  # clipped to the largest level


def test_l16_is_little_endian() -> None:
    assert l16_encode([1, -2, 0x1234]) == b"\x01\x00\xfe\xff\x34\x12"
    assert list(l16_decode(b"\x01\x00\xfe\xff\x34\x12")) == [1, -2, 0x1234]


# --- WAV files --------------------------------------------------------------------------


def test_pcm16_stereo_round_trip(tmp_path: Path) -> None:
    audio = Audio(8000, (array("h", [0, 1000, -1000, 32767]), array("h", [-32768, 5, 6, 7])))
    write_wav(tmp_path / "call.wav", audio)
    assert read_wav(tmp_path / "call.wav") == audio


def test_pcm16_mono_round_trip_with_odd_sample_count() -> None:
    audio = Audio(8000, (array("h", [1, 2, 3]),))
    data = wav_bytes(audio)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert parse_wav(data) == audio


def test_written_wav_header() -> None:
    data = wav_bytes(Audio(8000, (array("h", [1, 2]), array("h", [3, 4]))))
    assert struct.unpack_from("<4sI4s4sIHHIIHH4sI", data) == (
        b"RIFF",
        len(data) - 8,
        b"WAVE",
        b"fmt ",
        16,
        1,
        2,
        8000,
        32000,
        4,
        16,
        b"data",
        8,
    )
    assert data[44:] == l16_encode([1, 3, 2, 4])


def test_mulaw_wav_is_read_and_streams_back_bit_exact() -> None:
    codes = bytes(range(256)) * 2
    audio = parse_wav(wav_file(7, 1, 8000, 8, codes))
    assert list(audio.channels[0]) == [MULAW_DECODE[code] for code in codes]
    frames = list(AudioSource(audio).frames("PCMU", ["external"], samples_per_frame=512))
    assert frames == [codes]


def test_extensible_format_and_unknown_chunks_are_understood() -> None:
    data = wav_file(
        1, 1, 8000, 16, l16_encode([7, 8, 9]), extra_chunks=b"LIST\x03\x00\x00\x00abc\x00", extensible=True
    )
    assert list(parse_wav(data).channels[0]) == [7, 8, 9]


def test_streaming_writer_data_size_is_tolerated() -> None:
    data = bytearray(wav_file(1, 1, 8000, 16, l16_encode([1, 2, 3])))
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    assert list(parse_wav(bytes(data)).channels[0]) == [1, 2, 3]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"ID3\x04" + bytes(40), "not a WAV file: it does not start with a RIFF/WAVE header"),
        (
            wav_file(1, 1, 16000, 16, bytes(4)),
            (
                "the WAV file is sampled at 16000 Hz; AudioHook audio is 8000 Hz "
                "(convert it first, e.g. sox in.wav -r 8000 out.wav)"
            ),
        ),
        (
            wav_file(1, 1, 8000, 8, bytes(4)),
            "the WAV file is 8-bit PCM; only 16-bit PCM or mu-law can be streamed",
        ),
        (
            wav_file(3, 1, 8000, 32, bytes(8)),
            "the WAV file is encoded as format 3 (IEEE float); only 16-bit PCM (1) or mu-law (7) can be streamed",
        ),
        (
            wav_file(6, 1, 8000, 8, bytes(8)),
            "the WAV file is encoded as format 6 (A-law); only 16-bit PCM (1) or mu-law (7) can be streamed",
        ),
        (
            wav_file(1, 3, 8000, 16, bytes(12)),
            "the WAV file has 3 channels; only mono or stereo can be streamed",
        ),
        (b"RIFF\x04\x00\x00\x00WAVE", "the WAV file has no valid fmt chunk"),
        (wav_file(1, 1, 8000, 16, b"")[:-8], "the WAV file has no data chunk"),
    ],
)
def test_unusable_wav_files_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(WavError) as error:
        parse_wav(data)
    assert str(error.value) == reason


# --- the audio source -------------------------------------------------------------------


def test_tone_is_a_sine_of_the_given_length() -> None:
    source = AudioSource.tone(frequency_hz=1000, seconds=0.5, channels=2, amplitude=0.5)
    assert source.seconds == 0.5
    assert len(source.audio.channels) == 2
    samples = source.audio.channels[0]
    assert samples[2] == round(0.5 * 32767 * math.sin(2 * math.pi * 1000 * 2 / 8000)) == 16384
    assert max(samples) == 16384


def test_frames_follow_the_selected_format_and_layout() -> None:
    source = AudioSource.tone(seconds=1.0)
    pcmu_stereo = list(source.frames("PCMU", ["external", "internal"], 1600))
    assert [len(frame) for frame in pcmu_stereo] == [3200] * 5
    l16_mono = list(source.frames("L16", ["internal"], 1600))
    assert [len(frame) for frame in l16_mono] == [3200] * 5
    assert l16_mono[0] == l16_encode(source.audio.channels[0][:1600])
    assert pcmu_stereo[0][:4] == mulaw_encode(
        [source.audio.channels[0][0]] * 2 + [source.audio.channels[0][1]] * 2
    )


def test_last_frame_is_shorter_when_the_audio_ends_mid_frame() -> None:
    source = AudioSource(Audio(8000, (array("h", range(2500)),)))
    assert [len(frame) for frame in source.frames("L16", ["external"], 1000)] == [2000, 2000, 1000]


def test_stereo_source_feeds_external_then_internal_in_the_selected_order() -> None:
    source = AudioSource(Audio(8000, (array("h", [1, 2]), array("h", [-1, -2]))))
    assert next(source.frames("L16", ["internal", "external"], 2)) == l16_encode([-1, 1, -2, 2])
    assert next(source.frames("L16", ["internal"], 2)) == l16_encode([-1, -2])
    assert next(source.frames("L16", ["external"], 2)) == l16_encode([1, 2])


def test_unknown_format_or_channel_is_refused() -> None:
    source = AudioSource.tone(seconds=0.1)
    with pytest.raises(ValueError, match="cannot stream format 'OPUS'"):
        next(source.frames("OPUS", ["external"], 160))
    with pytest.raises(ValueError, match="unknown channel 'left'"):
        next(source.frames("PCMU", ["left"], 160))
