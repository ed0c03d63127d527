"""A tiled HD job in the JobManager, against the real Redis and Postgres (the kit's stack), without Blender: the
tests move the tiles as workers would and write each tile's image as a worker would (a band of one colour).

The job the user posted (the parent) is charged once and never queued; each tile is a job of its own on pq; the
first tile to start starts the parent, the last to finish stitches its image; a preempted or lost tile is retried
alone; the first tile that fails for good fails the parent, refunded once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from rq import Queue

from renderfarm.jobs import JobManager
from renderfarm.keys import CreditReason, JobState, Outcome, QueueName, image_name, mq_key, queued_key
from renderfarm.png import png_size
from renderfarm.quality import DEFAULT_PROFILES, Quality
from tests.integration.conftest import CREDITS, HD_PRICE

pytestmark = pytest.mark.integration
SCENE = {"objects": [{"kind": "box"}]}
CHARGE, REFUND = CreditReason.CHARGE.value, CreditReason.REFUND.value
HD = DEFAULT_PROFILES[Quality.HD]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def queued_on(jm: JobManager, queue: QueueName) -> list[str]:
    return Queue(queue.value, connection=jm.redis).job_ids


def start(jm: JobManager, mjid: str, worker: str = "w") -> int:
    """Start the tile through the rq job that carries it now, as a worker does; its attempt number."""
    rq_job = (jm.redis.hget(mq_key(mjid), "rq_job") or b"").decode()
    return jm.mark_started(mjid, worker, rq_job=rq_job).attempts


def render_tile(jm: JobManager, images: Path, mjid: str, attempt: int) -> str:
    """What a worker's render leaves: the tile's band of the HD image, in one colour, as the attempt's image."""
    view = jm.get(mjid)
    assert view.tile_of is not None
    band = HD.tile(*view.tile_of)
    name = image_name(mjid, attempt)
    Image.new("RGB", band.size, COLOURS[view.tile_of[0]]).save(images / name)
    return name


@pytest.fixture
def tiled(make_manager: Callable[..., JobManager], tmp_path: Path) -> Callable[..., JobManager]:
    def make(**options: object) -> JobManager:
        return make_manager(images_dir=tmp_path, **options)

    return make


def test_a_tiled_job_is_charged_once_and_its_tiles_queued_on_pq_not_itself(
    tiled: Callable[..., JobManager], payer: str, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = tiled()
    parent = jm.post(payer, "hd", SCENE, tiles=3)
    assert (parent.state, parent.tiles, parent.price, parent.parent) == (JobState.QUEUED, 3, HD_PRICE, None)
    children = jm.children(parent.mjid)
    assert len(set(children)) == 3 and parent.mjid not in children
    assert queued_on(jm, QueueName.PREEMPTIBLE) == children, "the tiles are queued, in order; the parent is not"
    assert not jm.redis.sismember(queued_key(), parent.mjid)
    for index, child in enumerate(children):
        v = jm.get(child)
        assert (v.parent, v.tile_of, v.price, v.quality, v.user) == (parent.mjid, (index, 3), 0, "hd", payer)
        assert jm.scene(child) == SCENE and jm.children(child) == []
    assert credit_reasons(parent.mjid) == [CHARGE] and jm.credits(payer) == CREDITS - HD_PRICE
    assert all(credit_reasons(c) == [] for c in children)


def test_the_first_tile_starts_the_job_and_the_last_stitches_its_image(
    tiled: Callable[..., JobManager], payer: str, tmp_path: Path, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = tiled()
    mjid = jm.post(payer, "hd", SCENE, tiles=4).mjid
    children = jm.children(mjid)
    attempts = {c: start(jm, c) for c in (children[2], children[0])}
    assert jm.get(mjid).state is JobState.STARTED and jm.get(mjid).started_at
    attempts |= {c: start(jm, c) for c in (children[3], children[1])}
    for done, child in enumerate((children[3], children[0], children[2], children[1]), start=1):
        jm.mark_finished(child, render_tile(jm, tmp_path, child, attempts[child]), attempt=attempts[child])
        view = jm.get(mjid)
        assert view.state is (JobState.FINISHED if done == 4 else JobState.STARTED), done
    assert view.image == image_name(mjid, 1) and view.finished_at
    stitched = tmp_path / view.image
    assert png_size(stitched) == (HD.width, HD.height)
    with Image.open(stitched) as img:
        for index, colour in enumerate(COLOURS):
            first, end = HD.tile(index, 4).rows or (0, 0)
            assert img.getpixel((HD.width // 2, first)) == colour and img.getpixel((0, end - 1)) == colour
    assert credit_reasons(mjid) == [CHARGE] and jm.credits(payer) == CREDITS - HD_PRICE


def test_a_preempted_tile_is_retried_alone_on_sq(tiled: Callable[..., JobManager], payer: str, tmp_path: Path) -> None:
    jm = tiled()
    mjid = jm.post(payer, "hd", SCENE, tiles=2).mjid
    top, bottom = jm.children(mjid)
    a_top, a_bottom = start(jm, top), start(jm, bottom)
    jm.mark_finished(bottom, render_tile(jm, tmp_path, bottom, a_bottom), attempt=a_bottom)
    jm.retry_on_standard(top, Outcome.PREEMPTED, attempt=a_top)
    assert queued_on(jm, QueueName.STANDARD) == [f"{top}-2"] and jm.get(bottom).state is JobState.FINISHED
    assert jm.get(mjid).state is JobState.STARTED
    again = start(jm, top, "standard-worker")
    assert again == 2
    jm.mark_finished(top, render_tile(jm, tmp_path, top, again), attempt=again)
    assert jm.get(mjid).state is JobState.FINISHED
    assert [a["outcome"] for a in jm.attempts(top)] == ["preempted", "finished"]
    assert [a["outcome"] for a in jm.attempts(bottom)] == ["finished"]


def test_the_first_tile_that_fails_for_good_fails_the_job_refunded_once(
    tiled: Callable[..., JobManager], payer: str, tmp_path: Path, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = tiled(max_lost=1)
    mjid = jm.post(payer, "hd", SCENE, tiles=3).mjid
    first, second, third = jm.children(mjid)
    lost = start(jm, first)
    jm.retry_on_standard(first, Outcome.LOST, attempt=lost)
    lost = start(jm, first)
    failed = jm.retry_on_standard(first, Outcome.LOST, attempt=lost)
    assert failed.state is JobState.FAILED
    view = jm.get(mjid)
    assert view.state is JobState.FAILED and view.error and f"tile 1 of 3 ({first})" in view.error, view.error
    assert credit_reasons(mjid) == [CHARGE, REFUND] and jm.credits(payer) == CREDITS

    attempt = start(jm, second)
    jm.mark_failed(second, "Blender: out of memory", attempt=attempt)
    attempt = start(jm, third)
    jm.mark_finished(third, render_tile(jm, tmp_path, third, attempt), attempt=attempt)
    assert jm.get(mjid).state is JobState.FAILED and jm.get(mjid).error == view.error, "the first failure stands"
    assert credit_reasons(mjid) == [CHARGE, REFUND] and jm.credits(payer) == CREDITS
    assert not (tmp_path / image_name(mjid, 1)).exists()


def test_tiles_that_cannot_be_stitched_fail_the_job_refunded(
    tiled: Callable[..., JobManager], payer: str, tmp_path: Path, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = tiled()
    mjid = jm.post(payer, "hd", SCENE, tiles=2).mjid
    top, bottom = jm.children(mjid)
    a_top, a_bottom = start(jm, top), start(jm, bottom)
    jm.mark_finished(top, render_tile(jm, tmp_path, top, a_top), attempt=a_top)
    name = render_tile(jm, tmp_path, bottom, a_bottom)
    (tmp_path / name).write_bytes(b"not a png")  # the storage lost it
    jm.mark_finished(bottom, name, attempt=a_bottom)
    view = jm.get(mjid)
    assert view.state is JobState.FAILED and view.error and "could not be stitched" in view.error and name in view.error
    assert credit_reasons(mjid) == [CHARGE, REFUND]
