"""An HD render in tiles end to end: `invoke render --quality hd --tiles 3`, two host workers with the real Blender
taking the tiles, the last one stitching; the image equals one full render of the furnished room (no seam at the
tile boundaries), charged once. And a tile whose worker is preempted mid-render is retried alone, on sq."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import redis
from docker import DockerClient
from PIL import Image

from provisioner.config import Settings
from provisioner.proc import kill_tree
from renderfarm.jobs import JobManager
from renderfarm.quality import DEFAULT_PROFILES, Quality
from renderfarm.scene import parse_scene
from renderfarm.worker.blender_process import render_scene
from tests.pixels import MAX_DIFFERING, MAX_LEVELS
from tests.stackutil import (
    FAST,
    SLOW,
    attempts,
    blender_pids,
    example_scene,
    invoke,
    isolated_stack,
    job,
    ledger,
    new_user,
    run_worker,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration
PRICE = 10
HD = DEFAULT_PROFILES[Quality.HD]


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    folder = tmp_path_factory.mktemp("tiles")
    with isolated_stack(docker_client, folder, blender_link=host_blender, hd_price=PRICE) as settings:
        yield settings


def children(r: redis.Redis, mjid: str) -> list[str]:
    return JobManager(r, None).children(mjid)  # type: ignore[arg-type]


def pixels(path: Path) -> bytes:
    with Image.open(path) as img:
        return img.convert("RGB").tobytes()


def differing(a: bytes, b: bytes) -> tuple[float, int]:
    """(share of differing bytes, largest difference) of two decoded images of the same size (tests/pixels.py's
    measure, on pixels: a stitched PNG is filtered and compressed otherwise than Blender's)."""
    assert len(a) == len(b)
    diffs = [abs(p - q) for p, q in zip(a, b, strict=True) if p != q]
    return len(diffs) / len(a), max(diffs, default=0)


def test_three_tiles_on_two_workers_stitch_into_the_full_render_without_seams(
    stack: Settings, r: redis.Redis, tmp_path: Path
) -> None:
    user = new_user(stack, credits=PRICE)
    workers = [start_worker(stack, "pq", tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        out = tmp_path / "tiled.png"
        done = invoke(stack, "render", "--quality", "hd", "--tiles", "3", "--user", user.email, "--out", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        assert " in 3 tiles: " in done.stdout, done.stdout
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
            kill_tree(w.pid)
    mjid = done.stdout.split("hd render ", 1)[1].split()[0]
    tiles = children(r, mjid)
    assert len(tiles) == 3
    by = {a["worker"] for t in tiles for a in attempts(r, t)}
    assert [[a["outcome"] for a in attempts(r, t)] for t in tiles] == [["finished"]] * 3
    assert len(by) == 2, f"both workers should have taken tiles: {by}"
    assert ledger(stack, mjid) == [("charge", -PRICE)]

    reference = tmp_path / "full.png"
    profile = replace(HD, samples=int(FAST["RENDERFARM_HD_SAMPLES"]))  # what env_for gives the workers
    render_scene(parse_scene(example_scene()), profile, reference, blender=str(stack.blender_link))
    stitched, full = pixels(out), pixels(reference)
    share, levels = differing(stitched, full)
    assert share <= MAX_DIFFERING and levels <= MAX_LEVELS, f"{share:.4%} of bytes differ, by up to {levels} levels"
    row = HD.width * 3
    for index in range(1, 3):
        first = HD.tile(index, 3).rows
        assert first is not None
        seam = slice((first[0] - 1) * row, (first[0] + 1) * row)  # the last row of a tile and the first of the next
        assert differing(stitched[seam], full[seam])[1] <= MAX_LEVELS, f"a seam at row {first[0]}"
        print(f"boundary at row {first[0]}: stitched rows equal the full render's")


def test_a_tile_whose_worker_is_preempted_is_retried_alone_on_sq(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    user = new_user(stack, credits=PRICE)
    posted = api.post("/renders", json={"quality": "hd", "scene": example_scene(), "tiles": 2}, headers=user.headers)
    assert posted.status_code == 202, posted.text
    mjid = posted.json()["mjid"]
    top, bottom = children(r, mjid)
    worker = start_worker(stack, "pq", tmp_path / "pq.log", **SLOW)
    try:
        wait_for(lambda: job(api, top, user)["state"] == "started", 60, "the top tile to start")
        wait_for(lambda: bool(blender_pids(worker.pid)), 60, "Blender to run under the worker")
        time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, (tmp_path / "pq.log").read_text()
    finally:
        kill_tree(worker.pid)
    assert job(api, mjid, user)["state"] == "started"
    assert (job(api, top, user)["queue"], job(api, top, user)["state"]) == ("sq", "queued")
    assert job(api, bottom, user)["state"] == "queued" and attempts(r, bottom) == [], "the other tile was left alone"
    run_worker(stack, "pq,sq")
    parent = job(api, mjid, user)
    assert (parent["state"], parent["tiles"]) == ("finished", 2), parent
    assert [a["outcome"] for a in attempts(r, top)] == ["preempted", "finished"]
    assert [a["outcome"] for a in attempts(r, bottom)] == ["finished"]
    img = api.get(parent["image_url"], headers=user.headers)
    assert img.status_code == 200
    (tmp_path / "out.png").write_bytes(img.content)
    with Image.open(tmp_path / "out.png") as stitched:
        assert stitched.size == (HD.width, HD.height)
    assert ledger(stack, mjid) == [("charge", -PRICE)]
