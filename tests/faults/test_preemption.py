"""Nothing lost when a worker goes away: preemption with notice (SIGTERM, the metadata endpoint), without
notice (SIGKILL of the whole process tree), too many losses, a presumed-lost worker coming back, a worker
lost between taking a job and starting it, a warm Blender that is slow to start, killed, or fails.

Workers run as `invoke worker` subprocesses. The pq worker renders with many samples so it is mid-render
when it is interrupted; the standard worker that picks the job up renders it quickly. A slow-starting
Blender is a script, given to the worker as its Blender link, that sleeps before it execs the real one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from docker import DockerClient

from provisioner.config import Settings
from provisioner.proc import alive, kill_tree
from provisioner.services import redis_url
from renderfarm.keys import claim_key, mq_key
from renderfarm.png import png_size
from renderfarm.reaper import ORPHAN_LIMIT
from tests import stackutil
from tests.fake_metadata import metadata_server
from tests.stackutil import (
    SLOW,
    User,
    attempts,
    balance,
    blender_pids,
    example_scene,
    isolated_stack,
    ledger,
    new_user,
    queue_ids,
    run_worker,
    small_scene,
    start_worker,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]
PRICE = 10


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    # Short heartbeat and reaper period so a lost worker is found in seconds; one loss is forgiven.
    with isolated_stack(
        docker_client,
        tmp_path_factory.mktemp("preempt"),
        blender_link=host_blender,
        hd_price=PRICE,
        heartbeat_ttl=3,
        reap_interval=0.5,
        max_lost=1,
    ) as settings:
        yield settings


OWNERS: dict[str, User] = {}  # mjid -> the user who posted it: whose token reads it


def post_hd(api: httpx.Client, user: User, scene: dict[str, object] | None = None) -> str:
    """The one place these tests post a render (with the user's API token)."""
    body = {"user": user.email, "quality": "hd", "scene": scene or example_scene()}
    resp = api.post("/renders", json=body, headers=user.headers)
    assert resp.status_code == 202, resp.text
    mjid = str(resp.json()["mjid"])
    OWNERS[mjid] = user
    return mjid


def job(api: httpx.Client, mjid: str) -> dict[str, Any]:
    """The job as the user who posted it sees it."""
    return stackutil.job(api, mjid, OWNERS[mjid])


def image(api: httpx.Client, mjid: str) -> httpx.Response:
    return api.get(f"/renders/{mjid}/image", headers=OWNERS[mjid].headers)


def started_by(api: httpx.Client, mjid: str, worker: int, timeout: float = 60) -> list[int]:
    """Wait until the job is started and Blender runs under the worker; return Blender's pids."""
    wait_for(lambda: job(api, mjid)["state"] == "started", timeout, f"{mjid} to start")
    wait_for(lambda: bool(blender_pids(worker)), timeout, "Blender to run under the worker")
    time.sleep(0.5)  # mid-render, not mid-start-up
    return blender_pids(worker)


def on_sq(api: httpx.Client, mjid: str) -> bool:
    j = job(api, mjid)
    return j["state"] == "queued" and j["queue"] == "sq"


def finish_on_standard(stack: Settings, api: httpx.Client, mjid: str) -> dict[str, object]:
    run_worker(stack, "sq")
    j = job(api, mjid)
    assert j["state"] == "finished", j
    return j


def assert_one_image_charged_once(stack: Settings, api: httpx.Client, mjid: str, user: User, tmp: Path) -> None:
    img = image(api, mjid)
    assert img.status_code == 200
    (tmp / "out.png").write_bytes(img.content)
    assert png_size(tmp / "out.png") == (1920, 1080)
    assert ledger(stack, mjid) == [("charge", -PRICE)]
    assert balance(api, user) == 0
    made = sorted(p.name for p in stack.renders_dir.glob(f"{mjid}*.png"))
    assert made == [f"{mjid}-{len(attempts_of(stack, mjid))}.png"], made


def attempts_of(stack: Settings, mjid: str) -> list[dict[str, object]]:
    client = redis.Redis.from_url(redis_url(stack))
    try:
        return attempts(client, mjid)
    finally:
        client.close()


def test_sigterm_stops_blender_and_puts_the_job_on_sq_within_5_s(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    worker = start_worker(stack, "pq", tmp_path / "pq.log", **SLOW)
    try:
        blenders = started_by(api, mjid, worker.pid)
        t0 = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        took = wait_for(lambda: on_sq(api, mjid), 5, f"{mjid} on sq after SIGTERM")
        print(f"SIGTERM -> job on sq in {took:.2f} s")
        assert worker.wait(timeout=30) == 0, (tmp_path / "pq.log").read_text()
        assert time.monotonic() - t0 < 30
        assert not any(alive(p) for p in blenders), "Blender survived its worker's SIGTERM"
    finally:
        kill_tree(worker.pid)
    assert f"{mjid}-2" in queue_ids(r, "sq")
    history = attempts(r, mjid)
    assert [(a["queue"], a["outcome"]) for a in history] == [("pq", "preempted")]
    finish_on_standard(stack, api, mjid)
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("pq", "preempted"), ("sq", "finished")]
    assert_one_image_charged_once(stack, api, mjid, user, tmp_path)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/computeMetadata/v1/instance/preempted", b"TRUE"),
        ("/latest/meta-data/spot/instance-action", b'{"action": "terminate", "time": "2026-11-29T15:00:00Z"}'),
    ],
    ids=["gcp", "aws"],
)
def test_metadata_preemption_notice_drains_the_worker(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path, path: str, body: bytes
) -> None:
    """The fake endpoint is as strict as the cloud's: AWS answers 401 to a request without an IMDSv2 token
    (and 404 before the notice), GCP 403 without `Metadata-Flavor: Google` (and FALSE before the notice)."""
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    with metadata_server(path, body) as (url, metadata):
        worker = start_worker(
            stack, "pq", tmp_path / "pq.log", RENDERDEV_PREEMPTION_URL=url, RENDERDEV_PREEMPTION_POLL="0.2", **SLOW
        )
        try:
            started_by(api, mjid, worker.pid)
            time.sleep(1)
            assert job(api, mjid)["state"] == "started"  # no notice, no drain
            assert metadata.gets > 0 and metadata.refused == 0, "the watcher's requests were refused"
            metadata.notice.set()
            took = wait_for(lambda: on_sq(api, mjid), 5, f"{mjid} on sq after the notice")
            print(f"{path}: notice -> job on sq in {took:.2f} s")
            assert worker.wait(timeout=30) == 0
        finally:
            kill_tree(worker.pid)
    assert metadata.refused == 0
    assert metadata.token_puts == (1 if path.startswith("/latest/") else 0)
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("pq", "preempted")]
    finish_on_standard(stack, api, mjid)
    assert_one_image_charged_once(stack, api, mjid, user, tmp_path)


def test_sigkill_of_the_whole_tree_is_detected_and_the_job_moves_to_sq(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    worker = start_worker(stack, "pq", tmp_path / "pq.log", **SLOW)
    started_by(api, mjid, worker.pid)
    killed = kill_tree(worker.pid)
    worker.wait(timeout=10)
    wait_for(lambda: not any(alive(p) for p in killed), 10, "the killed tree to be gone")
    took = wait_for(lambda: on_sq(api, mjid), 60, f"{mjid} on sq after SIGKILL")
    print(f"SIGKILL -> job on sq in {took:.2f} s (heartbeat TTL {stack.heartbeat_ttl} s)")
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("pq", "lost")]
    assert r.hget(mq_key(mjid), "lost") == b"1"
    finish_on_standard(stack, api, mjid)
    assert_one_image_charged_once(stack, api, mjid, user, tmp_path)


def test_a_job_lost_more_often_than_the_limit_fails_and_is_refunded(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    for n, queues in enumerate(("pq", "sq"), start=1):
        worker = start_worker(stack, queues, tmp_path / f"{queues}.log", **SLOW)
        started_by(api, mjid, worker.pid)
        kill_tree(worker.pid)
        worker.wait(timeout=10)
        final = "failed" if n > stack.max_lost else "queued"
        wait_for(lambda final=final: job(api, mjid)["state"] == final, 60, f"{mjid} {final} after loss {n}")
    j = job(api, mjid)
    assert j["state"] == "failed" and "worker lost 2 times" in j["error"], j
    assert [a["outcome"] for a in attempts(r, mjid)] == ["lost", "lost"]
    assert ledger(stack, mjid) == [("charge", -PRICE), ("refund", PRICE)]
    assert balance(api, user) == PRICE
    assert image(api, mjid).status_code == 409


@pytest.mark.parametrize("wakes", ["after-the-retry-finished", "before-the-retry-started"])
def test_a_presumed_lost_worker_that_comes_back_changes_nothing(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path, wakes: str
) -> None:
    """SIGSTOP freezes the worker (a partitioned VM); its job is retried on sq; the frozen worker wakes up,
    after the retry finished or while the job still waits on sq, and finishes its render: its result is
    refused and its image removed. The job keeps one image, one charge, two attempts."""
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    worker = start_worker(stack, "pq", tmp_path / "pq.log", RENDERFARM_HD_SAMPLES="4")
    log = tmp_path / "pq.log"
    try:
        started_by(api, mjid, worker.pid)
        kill_tree(worker.pid, signal.SIGSTOP)
        wait_for(lambda: on_sq(api, mjid), 60, f"{mjid} on sq while its worker is frozen")
        if wakes == "after-the-retry-finished":
            finish_on_standard(stack, api, mjid)
        kill_tree(worker.pid, signal.SIGCONT)
        wait_for(lambda: "stale" in log.read_text(), 120, "the woken worker to find its attempt stale")
        if wakes == "before-the-retry-started":
            assert on_sq(api, mjid) and files_of(stack, mjid) == []  # the late image was removed
            finish_on_standard(stack, api, mjid)
    finally:
        kill_tree(worker.pid)
        worker.wait(timeout=10)
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("pq", "lost"), ("sq", "finished")]
    assert job(api, mjid)["state"] == "finished"
    assert_one_image_charged_once(stack, api, mjid, user, tmp_path)


def slow_blender(stack: Settings, folder: Path, delay: float) -> Path:
    """A Blender that takes `delay` seconds to start: a script that sleeps, then execs the stack's Blender.
    Given to a worker as its Blender link (RENDERDEV_BLENDER_LINK), it is the worker's warm Blender."""
    path = folder / "slow-blender" / "blender"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nsleep {delay}\nexec "{stack.blender_link}" "$@"\n')
    path.chmod(0o755)
    return path


def claimed(r: redis.Redis, mjid: str, rq_job: str) -> bool:
    """A worker has taken rq job `rq_job` (carrying mjid) off its queue and is getting ready to start it."""
    return r.get(claim_key(mjid)) == rq_job.encode()


def waiting_for_a_job(r: redis.Redis) -> bool:
    """A worker is blocked in rq's dequeue (BLMOVE from its queue to the queue's intermediate list)."""
    return any(c.get("cmd") == "blmove" and "b" in c.get("flags", "") for c in r.client_list())


def intermediate(r: redis.Redis, queue: str) -> list[str]:
    return [x.decode() for x in r.lrange(f"rq:queue:{queue}:intermediate", 0, -1)]


def files_of(stack: Settings, mjid: str) -> list[str]:
    """Every file in the renders folder made for the job: images, and partial PNGs (`.<mjid>-N.*.partial.png`)."""
    return sorted(p.name for p in stack.renders_dir.iterdir() if mjid in p.name)


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    finally:
        kill_tree(worker.pid)


def test_a_worker_whose_warm_blender_starts_slowly_keeps_its_job(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    """The worker takes the job off pq, then waits three heartbeat TTLs for its warm Blender: the job is not
    rescued meanwhile (the worker's claim), and is rendered once, by that worker, in one attempt."""
    delay = 3 * stack.heartbeat_ttl + 1
    blender = slow_blender(stack, tmp_path, delay)
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    worker = start_worker(stack, "pq", tmp_path / "pq.log", RENDERDEV_BLENDER_LINK=str(blender))
    try:
        wait_for(lambda: mjid in intermediate(r, "pq"), 60, f"the worker to take {mjid} off pq")
        assert job(api, mjid)["state"] == "queued"
        took = wait_for(lambda: job(api, mjid)["state"] == "finished", delay + 120, f"{mjid} to finish")
        print(f"taken off pq -> finished in {took:.1f} s (Blender start {delay} s, TTL {stack.heartbeat_ttl} s)")
        assert took > 2 * stack.heartbeat_ttl
    finally:
        stop(worker)
    assert r.hget(mq_key(mjid), "orphaned") is None, "the job was rescued while its worker was starting it"
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("pq", "finished")]
    assert not [x for x in queue_ids(r, "sq") if x.startswith(mjid)]
    assert "stale" not in (tmp_path / "pq.log").read_text()
    assert_one_image_charged_once(stack, api, mjid, user, tmp_path)


@pytest.mark.parametrize(
    "when", ["stopped-in-its-dequeue", "stopped-in-its-dequeue-then-woken", "killed-while-its-blender-starts"]
)
def test_a_worker_lost_between_taking_a_job_off_pq_and_starting_it(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path, when: str
) -> None:
    """A real worker is lost in that window. Either it waits in rq's dequeue, is frozen (SIGSTOP), is handed
    the job by Redis (the job moves to pq's intermediate list), and is killed, or woken once the job was
    queued again: the job was never claimed. Or its warm Blender is slow to start and it is killed then: its
    claim expires. Either way the job is queued again on sq and finished there once; a woken worker's start
    is refused (its rq job no longer carries the job)."""
    user = new_user(stack, credits=PRICE)
    log = tmp_path / "pq.log"
    if when.startswith("stopped-in-its-dequeue"):
        worker = start_worker(stack, "pq", log)
        wait_for(lambda: waiting_for_a_job(r), 60, "the worker to wait for a job on pq")
        kill_tree(worker.pid, signal.SIGSTOP)
        mjid = post_hd(api, user)
        wait_for(lambda: mjid in intermediate(r, "pq"), 10, f"Redis to hand {mjid} to the frozen worker")
        assert r.get(claim_key(mjid)) is None
    else:
        mjid = post_hd(api, user)
        blender = slow_blender(stack, tmp_path, 600)
        worker = start_worker(stack, "pq", log, RENDERDEV_BLENDER_LINK=str(blender))
        wait_for(lambda: claimed(r, mjid, mjid), 60, f"the worker to take {mjid} off pq")
    assert job(api, mjid)["state"] == "queued" and mjid not in queue_ids(r, "pq")
    if when.endswith("woken"):
        took = wait_for(lambda: on_sq(api, mjid), 30, f"{mjid} queued again on sq")
        kill_tree(worker.pid, signal.SIGCONT)
        wait_for(lambda: "moved on without this worker" in log.read_text(), 60, "the woken worker to be refused")
        stop(worker)
    else:
        kill_tree(worker.pid)
        worker.wait(timeout=10)
        took = wait_for(lambda: on_sq(api, mjid), 30, f"{mjid} queued again on sq")
    print(f"{when}: queued again on sq {took:.1f} s after the loss (heartbeat TTL {stack.heartbeat_ttl} s)")
    assert r.hget(mq_key(mjid), "orphaned") == b"1"
    assert mjid not in intermediate(r, "pq")
    assert attempts(r, mjid) == [] and job(api, mjid)["state"] == "queued"
    finish_on_standard(stack, api, mjid)
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("sq", "finished")]
    assert_one_image_charged_once(stack, api, mjid, user, tmp_path)
    assert files_of(stack, mjid) == [f"{mjid}-1.png"]


def test_a_job_taken_off_its_queue_and_never_started_fails_after_3_rescues(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    """Each worker that takes the job is killed while its Blender starts: rescued to sq three times, the
    fourth loss fails the job, refunded once, with no image."""
    blender = slow_blender(stack, tmp_path, 600)
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    for n in range(ORPHAN_LIMIT + 1):
        queue, rq_job = ("pq", mjid) if n == 0 else ("sq", f"{mjid}-q{n}")
        worker = start_worker(stack, queue, tmp_path / f"{n}.log", RENDERDEV_BLENDER_LINK=str(blender))
        wait_for(lambda rq_job=rq_job: claimed(r, mjid, rq_job), 60, f"worker {n} to take {rq_job} off {queue}")
        kill_tree(worker.pid)
        worker.wait(timeout=10)
        if n < ORPHAN_LIMIT:
            wait_for(lambda n=n: r.hget(mq_key(mjid), "orphaned") == str(n + 1).encode(), 30, f"rescue {n + 1}")
            assert on_sq(api, mjid)
    wait_for(lambda: job(api, mjid)["state"] == "failed", 30, f"{mjid} to fail")
    j = job(api, mjid)
    assert f"rescued {ORPHAN_LIMIT} times" in j["error"] and f"{mjid}-q{ORPHAN_LIMIT}" in j["error"], j
    assert r.hget(mq_key(mjid), "orphaned") == str(ORPHAN_LIMIT).encode()
    assert attempts(r, mjid) == []
    assert ledger(stack, mjid) == [("charge", -PRICE), ("refund", PRICE)]
    assert balance(api, user) == PRICE
    assert image(api, mjid).status_code == 409
    assert files_of(stack, mjid) == []
    for q in ("pq", "sq"):
        assert not [x for x in queue_ids(r, q) + intermediate(r, q) if x.startswith(mjid)], q


def warm_command(stack: Settings) -> str:
    """The start of the warm Blender's real command line, as an error message shows it."""
    return f"command: {stack.blender_link} -b --factory-startup -noaudio --python "


def test_a_warm_blender_killed_mid_job_is_reported_with_its_command_and_exit_status(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    """Only the warm Blender is killed (SIGKILL), under a pq worker and then under an sq worker: each attempt
    records the process's real command and exit status; past max_lost the job fails naming them, refunded."""
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    for n, queues in enumerate(("pq", "sq"), start=1):
        worker = start_worker(stack, queues, tmp_path / f"{queues}.log", **SLOW)
        try:
            for pid in started_by(api, mjid, worker.pid):
                os.kill(pid, signal.SIGKILL)
            final = "failed" if n > stack.max_lost else "queued"
            wait_for(lambda final=final: job(api, mjid)["state"] == final, 60, f"{mjid} {final} after kill {n}")
        finally:
            stop(worker)
    history = attempts(r, mjid)
    assert [(a["queue"], a["outcome"]) for a in history] == [("pq", "interrupted"), ("sq", "interrupted")]
    for a in history:
        assert "blender render failed (exit -9)" in a["error"] and "killed by SIGKILL" in a["error"], a
        assert warm_command(stack) in a["error"] and "blender_server.py -- --requests" in a["error"], a
    j = job(api, mjid)
    assert j["error"].startswith("worker lost 2 times (limit 1)"), j
    assert "blender render failed (exit -9)" in j["error"] and warm_command(stack) in j["error"], j
    assert ledger(stack, mjid) == [("charge", -PRICE), ("refund", PRICE)]
    assert balance(api, user) == PRICE
    assert files_of(stack, mjid) == []


def test_a_scene_that_fails_in_the_warm_blender_names_its_command_and_leaves_no_png(
    stack: Settings, api: httpx.Client, r: redis.Redis
) -> None:
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user, small_scene(position=[1.0, 1.0, 1.5], target=[1.0, 1.0, 1.5]))
    run_worker(stack, "pq")  # warm Blender on (the default)
    j = job(api, mjid)
    assert j["state"] == "failed", j
    assert "camera target equals camera position" in j["error"], j
    assert "still running" in j["error"] and "exit 1" not in j["error"], j  # it reported the error and lives on
    assert warm_command(stack) in j["error"] and "blender_server.py -- --requests" in j["error"], j
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("pq", "failed")]
    assert ledger(stack, mjid) == [("charge", -PRICE), ("refund", PRICE)]
    assert balance(api, user) == PRICE
    assert files_of(stack, mjid) == []
