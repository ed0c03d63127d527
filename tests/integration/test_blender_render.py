"""The real Blender renders the example scene: right size, same pixels for the same seed, clear failures.

Blender is the one the api image declares, installed and linked by the `host_blender` fixture
(`invoke blender --source apt`), never a `blender` found on PATH.
Samples are lowered to 4 so each render takes a few seconds on two cores.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from renderfarm.errors import BlenderRenderError
from renderfarm.examples import load_example_scene
from renderfarm.png import png_size
from renderfarm.quality import DEFAULT_PROFILES, Quality, RenderProfile
from renderfarm.scene import Scene
from renderfarm.worker.blender_process import render_scene, stop_blender
from tests.pixels import assert_same_pixels, differ

pytestmark = pytest.mark.integration

PREVIEW = replace(DEFAULT_PROFILES[Quality.PREVIEW], samples=4)


@pytest.fixture(scope="module")
def blender(host_blender: Path) -> str:
    return str(host_blender)


@pytest.fixture(scope="module")
def scene() -> Scene:
    return load_example_scene()


@pytest.fixture(scope="module")
def first_render(blender: str, scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("render") / "preview.png"
    result = render_scene(scene, PREVIEW, out, blender=blender, seed=7)
    assert result.path == out
    return out


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_preview_render_is_a_640x360_png(
    blender: str, scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host PYTHONPATH must not reach Blender's Python: this one would break `import json` in the script.
    poison = tmp_path / "poison"
    poison.mkdir()
    for module in ("json", "argparse"):
        (poison / f"{module}.py").write_text("raise ImportError('host PYTHONPATH leaked into Blender')\n")
    monkeypatch.setenv("PYTHONPATH", str(poison))

    out = tmp_path / "out" / "preview.png"  # the folder is created
    result = render_scene(scene, PREVIEW, out, blender=blender)

    assert (result.path, result.width, result.height) == (out, 640, 360)
    assert 0 < result.seconds < 120
    assert png_size(out) == (640, 360)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000  # a picture, not a blank frame
    assert _leftovers(out.parent, {"preview.png"}) == []  # no partial file beside it


def test_same_scene_and_seed_give_identical_images(
    blender: str, scene: Scene, first_render: Path, tmp_path: Path
) -> None:
    again = render_scene(scene, PREVIEW, tmp_path / "again.png", blender=blender, seed=7).path
    # Pixels first (the IDAT stream), so a failure says whether only metadata differs.
    assert_same_pixels(again, first_render)  # see tests/pixels.py: Cycles here is not bit-reproducible


def test_the_seed_is_used(blender: str, scene: Scene, first_render: Path, tmp_path: Path) -> None:
    other = render_scene(scene, PREVIEW, tmp_path / "other.png", blender=blender, seed=8).path
    assert differ(other, first_render)


def test_camera_target_equal_to_position_fails_with_blenders_error(blender: str, scene: Scene, tmp_path: Path) -> None:
    camera = scene.camera.model_copy(update={"target": list(scene.camera.position)})
    bad = scene.model_copy(update={"camera": camera})
    out = tmp_path / "bad.png"

    with pytest.raises(BlenderRenderError) as info:
        render_scene(bad, PREVIEW, out, blender=blender)

    err = info.value
    message = str(err)
    assert err.returncode == 1
    assert "exit 1" in message
    assert "camera target equals camera position" in err.reason
    assert message.startswith("blender render failed (exit 1): camera target equals camera position")
    assert err.argv[0] == blender and "--python" in err.argv
    assert f"command: {blender} -b" in message
    assert "Traceback" in err.output_tail  # Blender's own output, for the job's failure
    assert not out.exists()
    assert _leftovers(tmp_path, set()) == []


def test_timeout_stops_blender_and_leaves_nothing(blender: str, scene: Scene, tmp_path: Path) -> None:
    out = tmp_path / "slow.png"
    with pytest.raises(BlenderRenderError) as info:
        render_scene(scene, DEFAULT_PROFILES[Quality.HD], out, blender=blender, timeout=0.5)
    assert "timed out after 0.5 s" in str(info.value)
    assert info.value.returncode is not None and info.value.returncode < 0  # killed by a signal
    assert _leftovers(tmp_path, set()) == []


def test_a_worker_can_stop_blender_on_demand(blender: str, scene: Scene, tmp_path: Path) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def on_start(proc: subprocess.Popen[bytes]) -> None:
        started.append(proc)
        stop_blender(proc)  # what a SIGTERM handler in the worker does

    with pytest.raises(BlenderRenderError) as info:
        render_scene(scene, RenderProfile(640, 360, 4), tmp_path / "stopped.png", blender=blender, on_start=on_start)
    assert info.value.returncode == -15
    assert "blender was killed by SIGTERM" in str(info.value)
    assert started and started[0].poll() == -15
    assert _leftovers(tmp_path, set()) == []


def test_missing_blender_is_a_render_error(scene: Scene, tmp_path: Path) -> None:
    with pytest.raises(BlenderRenderError) as info:
        render_scene(scene, PREVIEW, tmp_path / "x.png", blender=str(tmp_path / "no-blender"))
    assert info.value.returncode is None
    assert "did not start" in str(info.value) and "invoke setup" in str(info.value)
    assert _leftovers(tmp_path, set()) == []
