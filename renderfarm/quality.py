"""Render quality tiers ("preview", "hd") and their profiles: output size in pixels and Cycles samples.

Light to import (no subprocess, no Blender): the API imports it to check a request's quality. The samples a
deployment renders with are settings (RENDERFARM_PREVIEW_SAMPLES / RENDERFARM_HD_SAMPLES, read by
renderfarm.settings); the defaults are here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType

from renderfarm.errors import RenderConfigError

MAX_SAMPLES = 4096
MAX_PIXELS_SIDE = 8192


class Quality(StrEnum):
    PREVIEW = "preview"
    HD = "hd"


@dataclass(frozen=True)
class RenderProfile:
    """Output size in pixels and Cycles samples per pixel for one quality tier; with `rows`, one tile of it: the
    rows [first, end) of the width x height image (counted from the top), rendered alone (Cycles' border render,
    cropped) into an image of width x (end - first) pixels. Cycles samples each pixel the same way whatever the
    border, so stitched tiles are the full image."""

    width: int
    height: int
    samples: int
    rows: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name, value, top in (
            ("width", self.width, MAX_PIXELS_SIDE),
            ("height", self.height, MAX_PIXELS_SIDE),
            ("samples", self.samples, MAX_SAMPLES),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise RenderConfigError(f"render profile {name} must be a whole number from 1 to {top}, got {value!r}")
        if self.rows is not None and not 0 <= self.rows[0] < self.rows[1] <= self.height:
            raise RenderConfigError(f"render profile rows {self.rows} are not a band of 0..{self.height}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image this profile writes: the whole image, or its band of rows."""
        if self.rows is None:
            return self.width, self.height
        return self.width, self.rows[1] - self.rows[0]

    def tile(self, index: int, count: int) -> RenderProfile:
        """Tile `index` (0 at the top) of `count` horizontal bands of as equal heights as whole rows allow."""
        if not 1 <= count <= self.height or not 0 <= index < count:
            raise RenderConfigError(f"tile {index} of {count} does not exist in an image {self.height} rows high")
        return replace(self, rows=(index * self.height // count, (index + 1) * self.height // count))


DEFAULT_PROFILES: Mapping[Quality, RenderProfile] = MappingProxyType(
    {
        Quality.PREVIEW: RenderProfile(width=640, height=360, samples=16),
        Quality.HD: RenderProfile(width=1920, height=1080, samples=32),
    }
)


def quality_of(quality: Quality | str) -> Quality:
    """The tier named "preview" or "hd"; RenderConfigError naming the choices for any other name."""
    try:
        return Quality(quality)
    except ValueError:
        choices = ", ".join(q.value for q in Quality)
        raise RenderConfigError(f"unknown render quality: {quality!r} (choose one of: {choices})") from None


def profile_for(quality: Quality | str, samples: Mapping[Quality, int] | None = None) -> RenderProfile:
    """The profile of one tier, with its samples from `samples` when given there (the settings' overrides)."""
    tier = quality_of(quality)
    default = DEFAULT_PROFILES[tier]
    if samples is None or tier not in samples:
        return default
    return replace(default, samples=samples[tier])
