"""Restarts: Redis restarted with jobs queued and running loses nothing (AOF); Postgres stopped makes the
API answer 503 with a clear body, and it recovers by itself; the api container restarted, jobs go on."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from docker import DockerClient
from docker.models.containers import Container

from provisioner.config import Settings
from provisioner.dockerapi import service_container
from provisioner.services import api_url, redis_url
from renderfarm.keys import mq_index_key
from tests.stackutil import (
    balance,
    isolated_stack,
    job,
    kill_tree,
    ledger,
    new_user,
    queue_ids,
    run_worker,
    small_scene,
    start_worker,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient, project_images: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    with isolated_stack(
        docker_client, tmp_path_factory.mktemp("restarts"), hd_price=10, heartbeat_ttl=5, reap_interval=0.5
    ) as settings:
        yield settings


@pytest.fixture
def api(stack: Settings) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url(stack), timeout=30) as client:
        yield client


def container(client: DockerClient, settings: Settings, service: str) -> Container:
    c = service_container(client, settings.project, service)
    assert c is not None, f"no {service} container in {settings.project}"
    return c


def healthy(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def post(api: httpx.Client, user: str, quality: str = "preview") -> str:
    resp = api.post("/renders", json={"user": user, "quality": quality, "scene": small_scene()})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["mjid"])


def test_redis_restart_with_jobs_queued_and_running_loses_nothing(
    docker_client: DockerClient, stack: Settings, api: httpx.Client, tmp_path: Path
) -> None:
    user = new_user(stack, credits=10)
    running = post(api, user, "hd")
    worker = start_worker(stack, "pq", tmp_path / "pq.log", RENDERFARM_HD_SAMPLES="8")
    try:
        wait_for(lambda: job(api, running)["state"] == "started", 60, f"{running} to start")
        queued = [post(api, user) for _ in range(3)]
        time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk
        container(docker_client, stack, "redis").restart(timeout=10)
        wait_for(lambda: healthy(api), 60, "the API to see Redis again")
        r = redis.Redis.from_url(redis_url(stack))
        try:
            for mjid in [running, *queued]:
                assert r.zscore(mq_index_key(), mjid) is not None, f"{mjid} lost from mq"
            assert set(queued) <= set(queue_ids(r, "pq")), "queued jobs lost from pq"
        finally:
            r.close()
        wait_for(
            lambda: job(api, running)["state"] in ("finished", "queued"), 120, f"{running} to finish or be retried"
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        finally:
            kill_tree(worker.pid)
    run_worker(stack)
    for mjid in [running, *queued]:
        assert job(api, mjid)["state"] == "finished", job(api, mjid)
        assert api.get(f"/renders/{mjid}/image").status_code == 200
    assert ledger(stack, running) == [("charge", -10)]
    assert balance(api, user) == 0


def test_postgres_stopped_is_a_clear_503_and_the_api_recovers_by_itself(
    docker_client: DockerClient, stack: Settings, api: httpx.Client
) -> None:
    user = new_user(stack, credits=5)
    before = post(api, user)
    db = container(docker_client, stack, "db")
    r = redis.Redis.from_url(redis_url(stack))
    try:
        db.stop(timeout=10)
        queued_before = (queue_ids(r, "pq"), r.zcard(mq_index_key()))
        resp = api.post("/renders", json={"user": user, "quality": "preview", "scene": small_scene()})
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["service"] == "database" and "database unavailable" in body["detail"]
        assert resp.headers.get("retry-after")
        assert api.get(f"/users/{user}/credits").status_code == 503
        health = api.get("/healthz")
        assert health.status_code == 503 and health.json()["db"].startswith("error") and health.json()["redis"] == "ok"
        assert job(api, before)["state"] == "queued"  # status lookups go through mq, not Postgres
        assert (queue_ids(r, "pq"), r.zcard(mq_index_key())) == queued_before  # nothing half-posted
    finally:
        db.start()
        r.close()
    took = wait_for(lambda: healthy(api), 90, "the API to recover once Postgres is back", poll=0.5)
    print(f"API healthy again {took:.1f} s after Postgres was started")
    assert balance(api, user) == 5
    post(api, user)
    run_worker(stack)


def test_api_container_restarted_jobs_go_on(docker_client: DockerClient, stack: Settings, api: httpx.Client) -> None:
    user = new_user(stack, credits=5)
    mjids = [post(api, user) for _ in range(2)]
    container(docker_client, stack, "api").restart(timeout=10)
    wait_for(lambda: healthy(api), 90, "the api container to come back", poll=0.5)
    assert [job(api, m)["state"] for m in mjids] == ["queued", "queued"]
    run_worker(stack)
    for mjid in mjids:
        assert job(api, mjid)["state"] == "finished"
        assert api.get(f"/renders/{mjid}/image").headers["content-type"] == "image/png"
