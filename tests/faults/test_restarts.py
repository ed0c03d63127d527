"""Restarts: Redis killed with jobs queued and running loses nothing (AOF, fsynced before every answer);
Postgres stopped makes the API answer 503 with a clear body, and it recovers by itself; the api container
restarted, jobs go on."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from docker import DockerClient
from docker.models.containers import Container

from provisioner.config import Settings
from provisioner.dockerapi import service_container
from provisioner.proc import kill_tree
from provisioner.services import api_url, redis_url
from renderfarm.keys import heartbeat_key, mq_index_key, mq_key, scene_key
from tests.stackutil import (
    User,
    attempts,
    balance,
    isolated_stack,
    job,
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
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    with isolated_stack(
        docker_client,
        tmp_path_factory.mktemp("restarts"),
        blender_link=host_blender,
        hd_price=10,
        heartbeat_ttl=5,
        reap_interval=0.5,
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


def post(api: httpx.Client, user: User, quality: str = "preview") -> str:
    resp = api.post("/renders", json={"quality": quality, "scene": small_scene()}, headers=user.headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["mjid"])


def ledger_entry(r: redis.Redis, mjid: str) -> tuple[dict[bytes, bytes], bool]:
    """A job's mq hash, and whether its scene is there."""
    return r.hgetall(mq_key(mjid)), bool(r.exists(scene_key(mjid)))


def test_redis_killed_with_jobs_queued_and_running_loses_nothing(
    docker_client: DockerClient, stack: Settings, api: httpx.Client, tmp_path: Path
) -> None:
    """SIGKILL of the Redis container (no shutdown, no last AOF write) while an HD job renders, its heartbeat
    live, and right after more jobs were posted: with appendfsync always (compose/redis) every write Redis
    acknowledged is back after the restart. The running job finishes or is retried; every job is rendered
    exactly once (one finished attempt, one image) and each HD job charged once."""
    user = new_user(stack, credits=20)
    running = post(api, user, "hd")
    worker = start_worker(stack, "pq", tmp_path / "pq.log", RENDERFARM_HD_SAMPLES="16")
    redis_container = container(docker_client, stack, "redis")
    r = redis.Redis.from_url(redis_url(stack))
    try:
        assert r.config_get("appendfsync") == {"appendfsync": "always"}
        wait_for(lambda: job(api, running, user)["state"] == "started", 60, f"{running} to start")
        wait_for(lambda: r.exists(heartbeat_key(running)) == 1, 10, f"{running}'s heartbeat")
        queued = [post(api, user, "hd"), *(post(api, user) for _ in range(3))]
        before = {m: ledger_entry(r, m) for m in [running, *queued]}
        pq_before = queue_ids(r, "pq")
        assert set(queued) <= set(pq_before)
        redis_container.kill()  # SIGKILL, the moment the last post was acknowledged
        r.close()
        redis_container.reload()
        assert redis_container.status != "running"
        redis_container.start()
        wait_for(lambda: healthy(api), 60, "the API to see Redis again")
        r = redis.Redis.from_url(redis_url(stack))
        for mjid, entry in before.items():
            assert ledger_entry(r, mjid) == entry, f"{mjid} changed or lost in mq"
            assert r.zscore(mq_index_key(), mjid) is not None, f"{mjid} lost from mq's index"
        assert queue_ids(r, "pq") == pq_before, "queued jobs lost from pq"
        wait_for(
            lambda: job(api, running, user)["state"] in ("finished", "queued"), 300, f"{running} to finish or retry"
        )
    finally:
        r.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        finally:
            kill_tree(worker.pid)
    run_worker(stack)
    r = redis.Redis.from_url(redis_url(stack))
    try:
        for mjid in [running, *queued]:
            assert job(api, mjid, user)["state"] == "finished", job(api, mjid, user)
            outcomes = [a["outcome"] for a in attempts(r, mjid)]
            assert outcomes.count("finished") == 1 and outcomes[-1] == "finished", (mjid, outcomes)
            images = sorted(p.name for p in stack.renders_dir.iterdir() if mjid in p.name)
            assert images == [f"{mjid}-{len(outcomes)}.png"], (mjid, images)
            assert api.get(f"/renders/{mjid}/image", headers=user.headers).status_code == 200
        for queue in ("pq", "sq"):
            assert queue_ids(r, queue) == [], queue
    finally:
        r.close()
    for mjid in (running, queued[0]):
        assert ledger(stack, mjid) == [("charge", -10)]
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
        resp = api.post("/renders", json={"quality": "preview", "scene": small_scene()}, headers=user.headers)
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["service"] == "database" and "database unavailable" in body["detail"]
        assert resp.headers.get("retry-after")
        assert api.get(f"/users/{user.email}/credits", headers=user.headers).status_code == 503
        health = api.get("/healthz")
        assert health.status_code == 503 and health.json()["db"].startswith("error") and health.json()["redis"] == "ok"
        assert job(api, before, user)["state"] == "queued"  # status lookups go through mq, not Postgres
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
    assert [job(api, m, user)["state"] for m in mjids] == ["queued", "queued"]
    run_worker(stack)
    for mjid in mjids:
        assert job(api, mjid, user)["state"] == "finished"
        assert api.get(f"/renders/{mjid}/image", headers=user.headers).headers["content-type"] == "image/png"
