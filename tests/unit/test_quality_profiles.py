"""Render profiles per quality tier: defaults, samples overridden by the settings (read from the environment when
asked), clear errors."""

from __future__ import annotations

import pytest

from renderfarm.errors import RenderConfigError, RenderfarmError
from renderfarm.quality import DEFAULT_PROFILES, Quality, RenderProfile, profile_for
from renderfarm.settings import FarmSettings


def test_defaults() -> None:
    settings = FarmSettings.from_env({})
    assert settings.profile(Quality.PREVIEW) == RenderProfile(width=640, height=360, samples=16)
    assert settings.profile(Quality.HD) == RenderProfile(width=1920, height=1080, samples=32)
    assert {q: settings.profile(q) for q in Quality} == dict(DEFAULT_PROFILES)
    assert FarmSettings() == settings


def test_quality_is_a_string_enum() -> None:
    assert Quality("hd") is Quality.HD
    assert Quality.PREVIEW == "preview"
    assert profile_for("hd") == DEFAULT_PROFILES[Quality.HD]
    assert profile_for(Quality.PREVIEW) == DEFAULT_PROFILES[Quality.PREVIEW]
    assert profile_for("hd", {Quality.HD: 5}) == RenderProfile(width=1920, height=1080, samples=5)


def test_environment_is_read_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RENDERFARM_PREVIEW_SAMPLES", raising=False)
    monkeypatch.delenv("RENDERFARM_HD_SAMPLES", raising=False)
    assert FarmSettings.from_env().profile("preview").samples == 16
    monkeypatch.setenv("RENDERFARM_PREVIEW_SAMPLES", "4")
    monkeypatch.setenv("RENDERFARM_HD_SAMPLES", " 8 ")
    settings = FarmSettings.from_env()
    assert settings.profile(Quality.PREVIEW) == RenderProfile(width=640, height=360, samples=4)
    assert settings.profile(Quality.HD) == RenderProfile(width=1920, height=1080, samples=8)


def test_explicit_mapping_wins_over_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDERFARM_HD_SAMPLES", "2")
    assert FarmSettings.from_env({"RENDERFARM_HD_SAMPLES": "32"}).profile("hd").samples == 32
    assert FarmSettings.from_env({}).profile("hd").samples == 32


def test_blank_value_means_default() -> None:
    assert FarmSettings.from_env({"RENDERFARM_PREVIEW_SAMPLES": "  "}).profile("preview").samples == 16


@pytest.mark.parametrize("raw", ["abc", "0", "-3", "1.5", "4097", "1e3", "sixteen"])
def test_bad_environment_value_is_a_clear_error(raw: str) -> None:
    with pytest.raises(RenderConfigError) as info:
        FarmSettings.from_env({"RENDERFARM_HD_SAMPLES": raw})
    message = str(info.value)
    assert "RENDERFARM_HD_SAMPLES" in message
    assert repr(raw) in message
    assert "1 to 4096" in message
    assert "the default, 32" in message
    assert isinstance(info.value, RenderfarmError)


def test_unknown_quality() -> None:
    with pytest.raises(RenderConfigError, match=r"unknown render quality: 'ultra' \(choose one of: preview, hd\)"):
        FarmSettings().profile("ultra")


@pytest.mark.parametrize(
    ("width", "height", "samples", "field"),
    [(0, 360, 16, "width"), (640, -1, 16, "height"), (640, 360, 0, "samples"), (640, 360, True, "samples")],
)
def test_profile_values_are_checked(width: int, height: int, samples: int, field: str) -> None:
    with pytest.raises(RenderConfigError, match=f"render profile {field} must be a whole number"):
        RenderProfile(width=width, height=height, samples=samples)


@pytest.mark.parametrize("count", range(1, 17))
def test_tiles_are_bands_of_whole_rows_covering_the_image_once(count: int) -> None:
    hd = DEFAULT_PROFILES[Quality.HD]
    bands = [hd.tile(i, count) for i in range(count)]
    rows = [b.rows for b in bands]
    assert rows[0] is not None and rows[0][0] == 0 and rows[-1] is not None and rows[-1][1] == hd.height
    assert all(a is not None and b is not None and a[1] == b[0] for a, b in zip(rows, rows[1:], strict=False))
    heights = {b.size[1] for b in bands}
    assert max(heights) - min(heights) <= 1 and {b.size[0] for b in bands} == {hd.width}
    assert all(b.samples == hd.samples and b.tile(0, 1).rows == (0, hd.height) for b in bands)
    assert hd.size == (1920, 1080)


def test_a_tile_that_does_not_exist_is_refused() -> None:
    hd = DEFAULT_PROFILES[Quality.HD]
    for index, count in ((2, 2), (-1, 3), (0, 0), (0, hd.height + 1)):
        with pytest.raises(RenderConfigError, match="does not exist"):
            hd.tile(index, count)
    with pytest.raises(RenderConfigError, match="not a band"):
        RenderProfile(width=10, height=10, samples=1, rows=(5, 11))
