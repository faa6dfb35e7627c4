"""Choosing among the client's media offers, and the layout of audio frames (PROTOCOL.md sections 2 and 4)."""

from __future__ import annotations

from typing import Any

import pytest

from audiohook.config import Settings
from audiohook.media import FrameGeometry, Preference, parse_preference, select_media

DEFAULT = parse_preference(Settings().media_preference)


def offer(format: str = "PCMU", *channels: str, rate: int = 8000, **extra: Any) -> dict[str, Any]:
    return {"type": "audio", "format": format, "channels": list(channels or ("external", "internal")), "rate": rate,
            **extra}


STEREO_PCMU = offer("PCMU", "external", "internal")
STEREO_PCMU_REVERSED = offer("PCMU", "internal", "external")
EXTERNAL_PCMU = offer("PCMU", "external")
INTERNAL_PCMU = offer("PCMU", "internal")
STEREO_L16 = offer("L16", "external", "internal")
EXTERNAL_L16 = offer("L16", "external")
GENESYS_OFFERS = [STEREO_PCMU, EXTERNAL_PCMU, INTERNAL_PCMU]  # what the probe fixtures offer


# --- preference -------------------------------------------------------------------------

def test_default_preference_is_stereo_pcmu_then_stereo_l16_then_mono() -> None:
    assert DEFAULT == (Preference("PCMU", 2), Preference("L16", 2), Preference("PCMU", 1), Preference("L16", 1))


def test_preference_is_read_in_order_with_spaces_and_empty_items_ignored() -> None:
    assert parse_preference(" L16/mono , PCMU/stereo,") == (Preference("L16", 1), Preference("PCMU", 2))


@pytest.mark.parametrize(("text", "error"), [
    ("OPUS/stereo", "bad media preference 'OPUS/stereo': expected <PCMU|L16>/<stereo|mono>"),
    ("PCMU/quad", "bad media preference 'PCMU/quad': expected <PCMU|L16>/<stereo|mono>"),
    ("PCMU", "bad media preference 'PCMU': expected <PCMU|L16>/<stereo|mono>"),
    ("pcmu/stereo", "bad media preference 'pcmu/stereo': expected <PCMU|L16>/<stereo|mono>"),
    ("", "media preference is empty"),
    (" , ", "media preference is empty"),
])
def test_bad_preference_is_refused_with_a_reason(text: str, error: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_preference(text)
    assert str(raised.value) == error


# --- selection --------------------------------------------------------------------------

def test_genesys_offers_get_stereo_pcmu_by_default() -> None:
    assert select_media(GENESYS_OFFERS, DEFAULT) == STEREO_PCMU


def test_stereo_is_chosen_whatever_its_position_among_the_offers() -> None:
    assert select_media([EXTERNAL_PCMU, INTERNAL_PCMU, STEREO_PCMU_REVERSED], DEFAULT) == STEREO_PCMU_REVERSED


def test_stereo_l16_comes_before_mono_pcmu() -> None:
    assert select_media([EXTERNAL_PCMU, STEREO_L16], DEFAULT) == STEREO_L16


def test_mono_is_taken_when_no_stereo_is_offered_first_offer_first() -> None:
    assert select_media([INTERNAL_PCMU, EXTERNAL_PCMU], DEFAULT) == INTERNAL_PCMU
    assert select_media([EXTERNAL_L16], DEFAULT) == EXTERNAL_L16


def test_the_chosen_offer_is_returned_unchanged_extra_fields_included() -> None:
    unusual = offer("PCMU", "internal", "external", vendorHint="x", bitDepth=None)
    chosen = select_media([EXTERNAL_PCMU, unusual], DEFAULT)
    assert chosen is unusual
    assert chosen == {"type": "audio", "format": "PCMU", "channels": ["internal", "external"], "rate": 8000,
                      "vendorHint": "x", "bitDepth": None}


def test_an_offer_naming_one_channel_twice_is_passed_over() -> None:
    assert select_media([offer("PCMU", "external", "external"), EXTERNAL_PCMU], DEFAULT) == EXTERNAL_PCMU
    assert select_media([offer("PCMU", "internal", "internal")], DEFAULT) is None


def test_offers_at_an_unsupported_rate_are_passed_over() -> None:
    assert select_media([offer("PCMU", rate=16000), EXTERNAL_PCMU], DEFAULT) == EXTERNAL_PCMU


@pytest.mark.parametrize("offers", [
    [],
    [offer("PCMU", rate=16000)],
    [offer("L16", "external", rate=44100)],
], ids=["no-offers", "pcmu-16k", "l16-44k"])
def test_nothing_acceptable_means_no_media(offers: list[dict[str, Any]]) -> None:
    assert select_media(offers, DEFAULT) is None


def test_preference_is_configurable() -> None:
    l16_first = parse_preference("L16/mono,PCMU/stereo")
    assert select_media([STEREO_PCMU, EXTERNAL_L16], l16_first) == EXTERNAL_L16
    assert select_media([STEREO_PCMU, EXTERNAL_PCMU], l16_first) == STEREO_PCMU


def test_a_preference_that_refuses_mono_takes_no_audio_from_mono_offers() -> None:
    assert select_media([EXTERNAL_PCMU, INTERNAL_PCMU], parse_preference("PCMU/stereo")) is None


# --- frame geometry ---------------------------------------------------------------------

@pytest.mark.parametrize(("media", "bytes_per_sample_frame"), [
    (STEREO_PCMU, 2), (EXTERNAL_PCMU, 1), (STEREO_L16, 4), (EXTERNAL_L16, 2),
])
def test_a_sample_frame_holds_one_sample_of_every_channel(media: dict[str, Any], bytes_per_sample_frame: int) -> None:
    geometry = FrameGeometry.of(media)
    assert geometry == FrameGeometry(media["format"], 8000, tuple(media["channels"]))
    assert geometry.bytes_per_sample_frame == bytes_per_sample_frame
