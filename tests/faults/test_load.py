"""Load: 200 concurrent POST /renders -> 200 distinct mjids, all finished by two workers, none lost or
done twice. Bounded in time: every wait has a deadline, and the renders are tiny previews. And a client's idle
keep-alive connection outlives the client's own idle timeout (httpx's 5 s)."""

from __future__ import annotations

import http.client
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from docker import DockerClient

from provisioner.config import Settings
from provisioner.proc import kill_tree
from provisioner.services import api_url, redis_url
from tests.stackutil import REPO, attempts, env_for, isolated_stack, new_user, queue_ids

pytestmark = [pytest.mark.integration, pytest.mark.faults]
N = 200
TINY = {
    "room": {"width": 4, "depth": 4, "wall_height": 2.5, "floor_colour": "#888888", "wall_colour": "#dddddd"},
    "objects": [{"kind": "box", "position": [0, 0, 0.5], "size": [1, 1, 1], "colour": "#cc3333"}],
    "camera": {"position": [3, -3, 2], "target": [0, 0, 0.5], "lens": 35},
    "lights": [{"kind": "sun", "position": [0, 0, 5], "energy": 3}],
}


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    with isolated_stack(docker_client, tmp_path_factory.mktemp("load"), blender_link=host_blender) as settings:
        yield settings


def test_200_concurrent_posts_all_finished_by_two_workers_none_lost_or_twice(stack: Settings) -> None:
    user = new_user(stack, credits=1)
    limits = httpx.Limits(max_connections=50)
    with httpx.Client(base_url=api_url(stack), timeout=60, limits=limits, headers=user.headers) as api:
        assert api.post("/renders", json={"quality": "preview", "scene": TINY}).status_code == 202

        def post(_: int) -> httpx.Response:
            return api.post("/renders", json={"quality": "preview", "scene": TINY})

        with ThreadPoolExecutor(max_workers=50) as pool:
            responses = list(pool.map(post, range(N)))
        assert [r.status_code for r in responses] == [202] * N, {r.status_code for r in responses}
        mjids = [str(r.json()["mjid"]) for r in responses]
        assert len(set(mjids)) == N

        env = env_for(stack, RENDERFARM_PREVIEW_SAMPLES="1")
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "invoke", "worker", "--burst", "--queues", "pq"],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            logs = [w.communicate(timeout=900)[0] for w in workers]
        finally:
            for w in workers:
                kill_tree(w.pid)
        assert [w.returncode for w in workers] == [0, 0], logs
        done_by = [log.count("Successfully completed renderfarm.worker.job.render_job") for log in logs]
        print(f"{N + 1} jobs: worker 1 did {done_by[0]}, worker 2 did {done_by[1]}")
        assert all(n > 0 for n in done_by), "both workers should have taken jobs"

        states: dict[str, Any] = {m: api.get(f"/renders/{m}").json() for m in mjids}
    assert {s["state"] for s in states.values()} == {"finished"}
    assert {s["attempts"] for s in states.values()} == {1}
    r = redis.Redis.from_url(redis_url(stack))
    try:
        assert queue_ids(r, "pq") == [] and queue_ids(r, "sq") == []
        for mjid in mjids:
            assert [a["outcome"] for a in attempts(r, mjid)] == ["finished"], mjid
    finally:
        r.close()
    images = {p.name for p in stack.renders_dir.glob("*.png")}
    assert {f"{m}-1.png" for m in mjids} <= images


def test_an_idle_keep_alive_connection_outlasts_the_clients_idle_timeout(stack: Settings) -> None:
    """httpx keeps an idle connection 5 s; uvicorn's default keeps it 5 s too, and a request sent as the server
    closes it dies with "Server disconnected without sending a response" (it did in a bench run). The API keeps
    idle connections 75 s (UVICORN_TIMEOUT_KEEP_ALIVE in compose/api/Dockerfile): 7 s idle, same socket, answered."""
    conn = http.client.HTTPConnection(stack.bind_host, stack.api_port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        first.read()
        assert first.status == 200 and not first.will_close
        sock = conn.sock
        assert sock is not None
        time.sleep(7.0)
        readable, _, _ = select.select([sock], [], [], 0)
        assert not readable, "the API closed an idle keep-alive connection within 7 s"
        conn.request("GET", "/healthz")
        again = conn.getresponse()
        again.read()
        assert again.status == 200 and conn.sock is sock
    finally:
        conn.close()
