"""Nothing lost when a worker goes away: preemption with notice (SIGTERM, the metadata endpoint), without
notice (SIGKILL of the whole process tree), too many losses, and a presumed-lost worker coming back.

Workers run as `invoke worker` subprocesses. The pq worker renders with many samples so it is mid-render
when it is interrupted; the standard worker that picks the job up renders it quickly.
"""

from __future__ import annotations

import http.server
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from docker import DockerClient

from provisioner.config import Settings
from provisioner.services import redis_url
from renderfarm.keys import mq_key
from renderfarm.render import png_size
from tests.stackutil import (
    SLOW,
    alive,
    attempts,
    balance,
    blender_pids,
    example_scene,
    isolated_stack,
    job,
    kill_tree,
    ledger,
    new_user,
    queue_ids,
    run_worker,
    start_worker,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]
PRICE = 10


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient, project_images: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    # Short heartbeat and reaper period so a lost worker is found in seconds; one loss is forgiven.
    with isolated_stack(
        docker_client,
        tmp_path_factory.mktemp("preempt"),
        hd_price=PRICE,
        heartbeat_ttl=3,
        reap_interval=0.5,
        max_lost=1,
    ) as settings:
        yield settings


def post_hd(api: httpx.Client, user: str) -> str:
    resp = api.post("/renders", json={"user": user, "quality": "hd", "scene": example_scene()})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["mjid"])


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


def assert_one_image_charged_once(stack: Settings, api: httpx.Client, mjid: str, user: str, tmp: Path) -> None:
    img = api.get(f"/renders/{mjid}/image")
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


class Metadata(http.server.BaseHTTPRequestHandler):
    """A cloud metadata server on loopback: no notice until `notice` is set."""

    notice = threading.Event()
    body = b"TRUE"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.notice.is_set():
            self.send_response(200)
            self.end_headers()
            self.wfile.write(self.body)
        elif self.path.endswith("/preempted"):  # GCP answers FALSE until then
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"FALSE")
        else:  # AWS answers 404 until then
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


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
    handler = type("Handler", (Metadata,), {"notice": threading.Event(), "body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    worker = start_worker(
        stack, "pq", tmp_path / "pq.log", RENDERDEV_PREEMPTION_URL=url, RENDERDEV_PREEMPTION_POLL="0.2", **SLOW
    )
    try:
        started_by(api, mjid, worker.pid)
        time.sleep(1)
        assert job(api, mjid)["state"] == "started"  # no notice, no drain
        handler.notice.set()
        took = wait_for(lambda: on_sq(api, mjid), 5, f"{mjid} on sq after the notice")
        print(f"{path}: notice -> job on sq in {took:.2f} s")
        assert worker.wait(timeout=30) == 0
    finally:
        kill_tree(worker.pid)
        server.shutdown()
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
    assert api.get(f"/renders/{mjid}/image").status_code == 409


def test_a_presumed_lost_worker_that_comes_back_changes_nothing(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    """SIGSTOP freezes the worker (a partitioned VM); its job is retried and finished elsewhere; then the
    frozen worker wakes up and finishes its render: the job keeps one image, one charge, two attempts."""
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    worker = start_worker(stack, "pq", tmp_path / "pq.log", RENDERFARM_HD_SAMPLES="4")
    try:
        started_by(api, mjid, worker.pid)
        kill_tree(worker.pid, signal.SIGSTOP)
        wait_for(lambda: on_sq(api, mjid), 60, f"{mjid} on sq while its worker is frozen")
        finish_on_standard(stack, api, mjid)
        kill_tree(worker.pid, signal.SIGCONT)
        log = tmp_path / "pq.log"
        wait_for(lambda: "stale" in log.read_text(), 120, "the woken worker to find its attempt stale")
    finally:
        kill_tree(worker.pid)
        worker.wait(timeout=10)
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("pq", "lost"), ("sq", "finished")]
    assert job(api, mjid)["state"] == "finished"
    assert_one_image_charged_once(stack, api, mjid, user, tmp_path)


@pytest.mark.parametrize("how", ["taken-not-started", "rq-failed-it"])
def test_a_job_taken_off_its_queue_but_never_started_is_queued_again(
    stack: Settings, api: httpx.Client, r: redis.Redis, how: str
) -> None:
    """A worker stopped between taking a job off pq and starting it: rq leaves the job in the queue's
    intermediate list (or fails it, when the stop kills the work horse first). The reaper queues it again."""
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    assert r.lmove("rq:queue:pq", "rq:queue:pq:intermediate") == mjid.encode()  # what a worker's dequeue does
    if how == "rq-failed-it":
        r.lrem("rq:queue:pq:intermediate", 0, mjid)
        r.hset(f"rq:job:{mjid}", "status", "failed")
    took = wait_for(lambda: on_sq(api, mjid), 30, f"{mjid} queued again on sq")
    print(f"{how}: queued again on sq after {took:.1f} s (grace: heartbeat TTL {stack.heartbeat_ttl} s)")
    assert r.hget(mq_key(mjid), "orphaned") == b"1"
    assert mjid not in [x.decode() for x in r.lrange("rq:queue:pq:intermediate", 0, -1)]
    finish_on_standard(stack, api, mjid)
    assert ledger(stack, mjid) == [("charge", -PRICE)]
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("sq", "finished")]
