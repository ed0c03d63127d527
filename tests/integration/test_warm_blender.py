"""The warm Blender gives the same pixels as a fresh Blender per job, and recovers when it is killed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from renderfarm.errors import BlenderRenderError, BlenderVanished
from renderfarm.examples import load_example_scene
from renderfarm.render import DEFAULT_PROFILES, Quality, png_size, render_scene
from renderfarm.scene import Scene
from renderfarm.warm import WarmBlender
from tests.pixels import assert_same_pixels

pytestmark = pytest.mark.integration
BLENDER = "/usr/bin/blender"
PREVIEW = replace(DEFAULT_PROFILES[Quality.PREVIEW], samples=4)


@pytest.fixture(scope="module")
def scene() -> Scene:
    if not Path(BLENDER).exists():
        pytest.fail(f"the warm Blender tests need Blender at {BLENDER}: run `invoke setup`")
    return load_example_scene()


@pytest.fixture
def warm() -> Iterator[WarmBlender]:
    w = WarmBlender(BLENDER, max_jobs=50)
    w.ensure()
    yield w
    w.stop()


def test_warm_and_cold_give_the_same_pixels(scene: Scene, warm: WarmBlender, tmp_path: Path) -> None:
    cold = render_scene(scene, PREVIEW, tmp_path / "cold.png", blender=BLENDER, seed=3).path
    other = scene.model_copy(update={"objects": scene.objects[:3]})
    warm.render(other, PREVIEW, tmp_path / "before.png", seed=9)  # leaves state behind, if any could stay
    first = warm.render(scene, PREVIEW, tmp_path / "warm1.png", seed=3).path
    second = warm.render(scene, PREVIEW, tmp_path / "warm2.png", seed=3).path
    assert png_size(first) == (640, 360)
    assert_same_pixels(first, cold)  # see tests/pixels.py: Cycles here is not bit-reproducible
    assert_same_pixels(second, cold)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["before.png", "cold.png", "warm1.png", "warm2.png"]


def test_warm_blender_recovers_after_being_killed(scene: Scene, warm: WarmBlender, tmp_path: Path) -> None:
    first_pid = warm.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)  # killed while idle
    time.sleep(0.2)
    warm.ensure()
    assert warm.pid != first_pid and warm.alive()
    assert png_size(warm.render(scene, PREVIEW, tmp_path / "a.png").path) == (640, 360)

    killer_pid = warm.pid
    assert killer_pid is not None
    import threading

    threading.Timer(1.5, os.kill, (killer_pid, signal.SIGKILL)).start()  # killed mid-render
    slow = replace(PREVIEW, samples=2048)
    with pytest.raises(BlenderVanished) as err:
        warm.render(scene, slow, tmp_path / "b.png")
    assert err.value.returncode == -signal.SIGKILL
    assert not (tmp_path / "b.png").exists()
    warm.ensure()
    assert warm.pid not in (first_pid, killer_pid)
    assert png_size(warm.render(scene, PREVIEW, tmp_path / "c.png").path) == (640, 360)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "c.png"]


def test_scene_errors_come_back_and_the_process_stays(scene: Scene, warm: WarmBlender, tmp_path: Path) -> None:
    bad = scene.model_copy(update={"camera": scene.camera.model_copy(update={"target": scene.camera.position})})
    pid = warm.pid
    with pytest.raises(BlenderRenderError) as err:
        warm.render(bad, PREVIEW, tmp_path / "bad.png")
    assert "camera target equals camera position" in str(err.value)
    assert warm.alive() and warm.pid == pid
    assert png_size(warm.render(scene, PREVIEW, tmp_path / "ok.png").path) == (640, 360)


def test_timeout_stops_the_process_and_the_next_job_gets_a_fresh_one(
    scene: Scene, warm: WarmBlender, tmp_path: Path
) -> None:
    pid = warm.pid
    with pytest.raises(BlenderRenderError) as err:
        warm.render(scene, replace(PREVIEW, samples=2048), tmp_path / "slow.png", timeout=2)
    assert "timed out" in str(err.value)
    assert not warm.alive()
    warm.ensure()
    assert warm.pid != pid


def test_a_warm_blender_is_replaced_after_max_jobs(scene: Scene, tmp_path: Path) -> None:
    w = WarmBlender(BLENDER, max_jobs=2)
    try:
        pids = []
        for i in range(3):
            w.ensure()
            w.served += 1
            pids.append(w.pid)
            w.render(scene.model_copy(update={"objects": scene.objects[:2]}), PREVIEW, tmp_path / f"{i}.png")
        assert pids[0] == pids[1] != pids[2]
    finally:
        w.stop()
