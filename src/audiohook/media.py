"""Media formats, frame geometry and the choice among the client's offers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

BYTES_PER_SAMPLE = {"PCMU": 1, "L16": 2}
SUPPORTED_RATES = (8000,)


@dataclass(frozen=True, slots=True)
class Preference:
    format: str
    channel_count: int


def parse_preference(text: str) -> tuple[Preference, ...]:
    """``"PCMU/stereo,L16/mono"`` -> preferences in order; raises ValueError with a reason."""
    preferences = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        fmt, _, layout = item.partition("/")
        if fmt not in BYTES_PER_SAMPLE or layout not in ("stereo", "mono"):
            raise ValueError(f"bad media preference {item!r}: expected <PCMU|L16>/<stereo|mono>")
        preferences.append(Preference(fmt, 2 if layout == "stereo" else 1))
    if not preferences:
        raise ValueError("media preference is empty")
    return tuple(preferences)


def select_media(offers: Sequence[dict[str, Any]], preferences: Sequence[Preference]) -> dict[str, Any] | None:
    """The first offer, in preference order, that we can take; returned unchanged. None: take no audio."""
    for preference in preferences:
        for offer in offers:
            channels = offer.get("channels", ())
            if (
                offer.get("format") == preference.format
                and len(channels) == preference.channel_count
                and len(set(channels)) == len(channels)  # ["external", "external"] is no layout
                and offer.get("rate") in SUPPORTED_RATES
            ):
                return offer
    return None


@dataclass(frozen=True, slots=True)
class FrameGeometry:
    """How a selected media lays out samples in binary frames."""

    format: str
    rate: int
    channels: tuple[str, ...]

    @property
    def bytes_per_sample_frame(self) -> int:
        """Bytes holding one sample of every channel."""
        return BYTES_PER_SAMPLE[self.format] * len(self.channels)

    @classmethod
    def of(cls, media: dict[str, Any]) -> "FrameGeometry":
        return cls(media["format"], media["rate"], tuple(media["channels"]))
