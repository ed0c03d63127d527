"""The warm Blender gives the same pixels as a fresh Blender per job, and recovers when it is killed.

Blender is the `host_blender` fixture's link (the api image's version, installed by `invoke blender`)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from renderfarm.errors import BlenderRenderError, BlenderVanished
from renderfarm.examples import load_example_scene
from renderfarm.png import png_size
from renderfarm.quality import DEFAULT_PROFILES, Quality
from renderfarm.scene import Scene
from renderfarm.worker.blender_process import render_scene
from renderfarm.worker.warm_blender import WarmBlender
from tests.pixels import assert_same_pixels, differ

pytestmark = pytest.mark.integration
PREVIEW = replace(DEFAULT_PROFILES[Quality.PREVIEW], samples=4)


@pytest.fixture(scope="module")
def blender(host_blender: Path) -> str:
    return str(host_blender)


@pytest.fixture(scope="module")
def scene() -> Scene:
    return load_example_scene()


@pytest.fixture
def warm(blender: str) -> Iterator[WarmBlender]:
    w = WarmBlender(blender, max_jobs=50)
    w.ensure()
    yield w
    w.stop()


def test_warm_and_cold_give_the_same_pixels(blender: str, scene: Scene, warm: WarmBlender, tmp_path: Path) -> None:
    cold = render_scene(scene, PREVIEW, tmp_path / "cold.png", blender=blender, seed=3).path
    other = scene.model_copy(update={"objects": scene.objects[:3]})
    warm.render(other, PREVIEW, tmp_path / "before.png", seed=9)  # leaves state behind, if any could stay
    first = warm.render(scene, PREVIEW, tmp_path / "warm1.png", seed=3).path
    second = warm.render(scene, PREVIEW, tmp_path / "warm2.png", seed=3).path
    assert png_size(first) == (640, 360)
    assert_same_pixels(first, cold)  # see tests/pixels.py: Cycles here is not bit-reproducible
    assert_same_pixels(second, cold)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["before.png", "cold.png", "warm1.png", "warm2.png"]


def test_a_scene_whose_camera_alone_moved_is_kept_built_and_gives_a_fresh_renders_pixels(
    blender: str, scene: Scene, warm: WarmBlender, tmp_path: Path
) -> None:
    """The keeper (blender_scene.render_spec, keep=True): the same room with only the camera moved is not built
    again (Cycles' persistent data kept too), and its image is what a fresh Blender makes of the moved scene."""
    moved = scene.model_copy(
        update={"camera": scene.camera.model_copy(update={"position": [p + 0.3 for p in scene.camera.position]})}
    )
    assert not warm.render(scene, PREVIEW, tmp_path / "first.png", seed=3).kept
    again = warm.render(moved, PREVIEW, tmp_path / "moved.png", seed=3)
    assert again.kept, "only the camera moved: the built scene is kept"
    cold = render_scene(moved, PREVIEW, tmp_path / "cold.png", blender=blender, seed=3).path
    assert_same_pixels(again.path, cold)
    assert differ(again.path, tmp_path / "first.png"), "the moved camera shows another view"

    # Anything else changed (an object gone): built again from factory settings, as a fresh Blender would.
    fewer = moved.model_copy(update={"objects": moved.objects[:-1]})
    rebuilt = warm.render(fewer, PREVIEW, tmp_path / "fewer.png", seed=3)
    assert not rebuilt.kept
    assert_same_pixels(
        rebuilt.path, render_scene(fewer, PREVIEW, tmp_path / "cold-fewer.png", blender=blender, seed=3).path
    )


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


def test_a_warm_blender_is_replaced_after_max_jobs(blender: str, scene: Scene, tmp_path: Path) -> None:
    w = WarmBlender(blender, max_jobs=2)
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


def test_a_scene_error_names_the_warm_blenders_real_command_and_leaves_no_partial_png(
    scene: Scene, warm: WarmBlender, tmp_path: Path
) -> None:
    """The error is the one the warm process sent back, with the command line that process really runs; it
    lives on, so there is no exit code to report (None), and the message says it is still running."""
    bad = scene.model_copy(update={"camera": scene.camera.model_copy(update={"target": scene.camera.position})})
    with pytest.raises(BlenderRenderError) as err:
        warm.render(bad, PREVIEW, tmp_path / "bad.png")
    exc = err.value
    assert exc.argv == warm.argv and exc.argv[0] == warm.blender
    assert any(a.endswith("blender_server.py") for a in exc.argv) and "--requests" in exc.argv
    assert exc.returncode is None and warm.alive()
    assert exc.reason.startswith("camera target equals camera position")
    message = str(exc)
    assert f"warm Blender pid {warm.pid}, still running" in message and "exit 1" not in message
    assert f"command: {' '.join(warm.argv)}" in message
    assert list(tmp_path.iterdir()) == []  # no image, no partial PNG


def test_a_warm_blender_killed_under_a_work_horse_reports_its_real_exit_status(
    scene: Scene, warm: WarmBlender, tmp_path: Path
) -> None:
    """As in a worker: the job runs in a forked child (rq's work horse), which cannot wait for its parent's
    Blender. Killed mid-job, the error still names the process's command and exit status (-9)."""
    slow = replace(PREVIEW, samples=2048)
    report_r, report_w = os.pipe()
    horse = os.fork()
    if horse == 0:  # the work horse
        os.close(report_r)
        try:
            warm.render(scene, slow, tmp_path / "killed.png")
            outcome = {"raised": None}
        except BlenderRenderError as exc:
            outcome = {"raised": type(exc).__name__, "argv": exc.argv, "returncode": exc.returncode, "text": str(exc)}
        os.write(report_w, json.dumps(outcome).encode())
        os._exit(0)
    os.close(report_w)
    pid = warm.pid
    assert pid is not None
    time.sleep(1.5)
    os.kill(pid, signal.SIGKILL)
    with os.fdopen(report_r, "rb") as report:
        outcome = json.loads(report.read() or b"{}")
    assert os.waitpid(horse, 0)[1] == 0
    assert outcome["raised"] == "BlenderVanished", outcome
    assert outcome["argv"] == warm.argv and "--responses" in outcome["argv"]
    assert outcome["returncode"] == -signal.SIGKILL
    assert "exit -9" in outcome["text"] and "killed by SIGKILL" in outcome["text"]
    assert list(tmp_path.iterdir()) == []  # no image, no partial PNG
    assert not warm.alive() and warm.exit_status() == -signal.SIGKILL
