"""`invoke worker --reload`: a saved .py change in the watched renderfarm/ lets the job in hand finish (one
attempt, never requeued), then a new worker process serves the next job; SIGTERM stops both, and --burst with
--reload is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from docker import DockerClient
from rq import Worker

from provisioner.config import Settings
from provisioner.services import api_url, redis_url
from tests.stackutil import (
    REPO,
    User,
    attempts,
    env_for,
    example_scene,
    invoke,
    isolated_stack,
    job,
    new_user,
    wait_for,
)

pytestmark = [pytest.mark.integration]
SLOWER = {"RENDERFARM_PREVIEW_SAMPLES": "48"}  # several seconds: the change lands mid-render


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient, project_images: Settings, host_blender: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    tmp = tmp_path_factory.mktemp("reload")
    source = tmp / "renderfarm"  # what --reload watches (live_source): a folder of the test's own, not the repo
    source.mkdir()
    (source / "scene.py").write_text("VERSION = 1\n")
    with isolated_stack(docker_client, tmp, blender_link=host_blender, live_source=source) as settings:
        yield settings


def post_preview(api: httpx.Client, user: User) -> str:
    resp = api.post(
        "/renders", json={"user": user.email, "quality": "preview", "scene": example_scene()}, headers=user.headers
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["mjid"])


def worker_names(r: redis.Redis) -> set[str]:
    return {w.name for w in Worker.all(connection=r)}


def test_a_saved_change_finishes_the_job_in_hand_then_a_new_worker_serves(stack: Settings, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url(stack))
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "worker", "--reload", "--queues", "pq,sq"],
            cwd=REPO,
            env=env_for(stack, **SLOWER),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: len(worker_names(r)) == 1, 60, "the first worker to register")
        (first,) = worker_names(r)
        user = new_user(stack)
        with httpx.Client(base_url=api_url(stack), timeout=10) as api:
            mjid = post_preview(api, user)
            wait_for(lambda: job(api, mjid, user)["state"] == "started", 60, f"{mjid} to start")
            (Path(stack.live_source) / "scene.py").write_text("VERSION = 2\n")  # a developer saves a file
            wait_for(lambda: job(api, mjid, user)["state"] == "finished", 120, f"{mjid} to finish")
            history = attempts(r, mjid)
            assert [(a["worker"], a.get("outcome")) for a in history] == [(first, "finished")], history
            wait_for(lambda: worker_names(r) - {first} != set(), 60, "a new worker after the change")
            assert first not in worker_names(r), "the old worker stopped after its job"
            (second,) = worker_names(r)

            after = post_preview(api, user)
            wait_for(lambda: job(api, after, user)["state"] == "finished", 120, f"{after} to finish")
            assert [a["worker"] for a in attempts(r, after)] == [second]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- the worker's output ---\n{log.read_text(errors='replace')[-6000:]}") from exc
    finally:
        proc.send_signal(signal.SIGTERM)  # to the supervisor alone: it passes it on to its worker
        code = proc.wait(60)
        r.close()
    output = log.read_text(errors="replace")
    assert code == 0, output
    assert "scene.py changed" in output, output
    wait_for(lambda: not worker_names(redis.Redis.from_url(redis_url(stack))), 10, "no worker left registered")
    wait_for(lambda: not group_alive(proc.pid), 10, "no process of the worker's group left")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_reload_with_burst_is_refused(stack: Settings) -> None:
    proc = invoke(stack, "worker", "--reload", "--burst")
    assert proc.returncode == 1
    assert "--reload with --burst" in proc.stderr + proc.stdout
