"""Render workers in containers (`invoke workers`, issue 11): the worker image built by `invoke images` with the
Blender the api image declares; two containers render previews once each; `invoke status` lists them; a scale-down
to 0 stops a container mid-render with SIGTERM and its job goes to sq as preempted (never lost), to be finished by a
worker started afterwards; a re-run with the same N changes nothing; `invoke down` and the test kit's stop remove
worker containers; clear refusals without an image, without a stack, for bad values.

Real Docker, Redis, Postgres and Blender (in the worker image; the host's, from the `host_blender` fixture, for the
host worker that finishes the preempted job).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from docker import DockerClient

from provisioner.compose import CONTAINER_UID as WORKER_UID
from provisioner.config import Settings
from provisioner.dockerapi import project_containers, service_container
from provisioner.images import HASH_LABEL, api_blender_version, context_hash, find_image
from provisioner.workers import worker_containers
from renderfarm.keys import mq_key
from renderfarm.png import png_size
from tests.conftest import declared_blender_version
from tests.stackutil import (
    SLOW,
    User,
    attempts,
    invoke,
    isolated_stack,
    ledger,
    new_user,
    queue_ids,
    run_worker,
    small_scene,
    wait_for,
)

pytestmark = [pytest.mark.integration]
PRICE = 10
# The containers render previews with few samples (quick) and HD with many (long enough to be stopped mid-render).
WORKER_ENV = {**SLOW}


@pytest.fixture(scope="module", autouse=True)
def worker_image(project_images: Settings) -> Settings:
    """The worker image, built as a user builds it: `invoke images` (project_images built only the stack's)."""
    done = invoke(project_images, "images", timeout=3600)
    assert done.returncode == 0, done.stdout + done.stderr
    return project_images


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    with isolated_stack(
        docker_client, tmp_path_factory.mktemp("container-workers"), blender_link=host_blender, hd_price=PRICE
    ) as settings:
        yield settings


def workers(settings: Settings, *args: str, **extra: str) -> str:
    """`invoke workers ARGS` for the stack; exit 0 expected; its output."""
    done = invoke(settings, "workers", *args, timeout=900, **{**WORKER_ENV, **extra})
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    return said


def status_json(settings: Settings) -> dict[str, Any]:
    done = invoke(settings, "status", "--json")
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def container_hosts(client: DockerClient, settings: Settings) -> dict[str, str]:
    """hostname (what rq records for a worker) -> container name, for the stack's running worker containers."""
    return {
        str(c.attrs["Config"]["Hostname"]): str(c.name)
        for c in worker_containers(client, settings.project)
        if c.status == "running"
    }


def post(api: httpx.Client, user: User, quality: str, scene: dict[str, Any] | None = None) -> str:
    body = {"quality": quality, "scene": scene or small_scene()}
    resp = api.post("/renders", json=body, headers=user.headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["mjid"])


def state(api: httpx.Client, user: User, mjid: str) -> dict[str, Any]:
    resp = api.get(f"/renders/{mjid}", headers=user.headers)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def png(api: httpx.Client, user: User, mjid: str, tmp: Path) -> tuple[int, int]:
    resp = api.get(f"/renders/{mjid}/image", headers=user.headers)
    assert resp.status_code == 200, resp.text
    out = tmp / f"{mjid}.png"
    out.write_bytes(resp.content)
    return png_size(out)


def test_the_worker_image_is_built_by_invoke_images_with_the_blender_the_api_declares(
    docker_client: DockerClient, project_images: Settings
) -> None:
    """`invoke images` (the worker_image fixture) built the worker image: it is there, current (its
    context hash), declares and runs the api's Blender, and runs as a user that is not root."""
    settings = project_images
    declared = declared_blender_version(docker_client, settings)
    assert declared == api_blender_version(settings)
    tag = settings.image("worker")
    image, base = find_image(docker_client, tag), find_image(docker_client, settings.base_image)
    assert image is not None and base is not None, f"{tag} was not built by invoke images"
    assert image.labels[HASH_LABEL] == context_hash(settings, "worker", base.id)
    assert image.labels["org.blender.version"] == declared
    assert image.attrs["Config"]["User"] == f"{WORKER_UID}:{WORKER_UID}"
    out = docker_client.containers.run(tag, ["blender", "--version"], remove=True).decode()
    assert out.splitlines()[0].strip() == f"Blender {declared}", out
    who = docker_client.containers.run(tag, ["id", "-u"], remove=True).decode().strip()
    assert who == str(WORKER_UID)


def test_two_container_workers_render_each_preview_once_and_status_lists_them(
    docker_client: DockerClient, stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    dry = workers(stack, "--replicas", "2", "--dry-run")
    assert "Dry run: nothing was changed." in dry and "start 2" in dry, dry
    assert worker_containers(docker_client, stack.project) == []
    said = workers(stack, "--replicas", "2")
    assert "2 running, each listed by rq" in said, said
    hosts = container_hosts(docker_client, stack)
    assert len(hosts) == 2, hosts
    again = workers(stack, "--replicas", "2")
    assert "Nothing changed" in again, again

    user = new_user(stack)
    mjids = [post(api, user, "preview") for _ in range(6)]
    for mjid in mjids:
        wait_for(lambda mjid=mjid: state(api, user, mjid)["state"] == "finished", 240, f"preview {mjid} to finish")
    done_by: set[str] = set()
    for mjid in mjids:
        history = attempts(r, mjid)
        assert [(a["queue"], a["outcome"]) for a in history] == [("pq", "finished")], history
        host = str(history[0]["worker"]).split("-render-")[0]
        assert host in hosts, f"{mjid} was rendered by {history[0]['worker']}, not by a worker container"
        done_by.add(hosts[host])
        assert history[0]["credential"] == "containers", history  # the containers' worker credential
        assert png(api, user, mjid, tmp_path) == (640, 360)  # uploaded by the container, stored by the api
        assert sorted(p.name for p in stack.renders_dir.glob(f"{mjid}*")) == [f"{mjid}-1.png"]
    assert done_by == set(hosts.values()), f"only {done_by} rendered; containers: {sorted(hosts.values())}"

    listed = status_json(stack)["workers"]
    in_containers = [w for w in listed if w["where"].startswith("container ")]
    assert sorted(w["where"] for w in in_containers) == sorted(f"container {n}" for n in hosts.values()), listed
    for w in in_containers:
        assert w["queues"] == "pq,sq" and w["state"] == "idle" and w["job"] is None, w
        assert w["heartbeat_age"] is not None and w["heartbeat_age"] >= 0, w
    text = invoke(stack, "status").stdout
    assert "Render workers: 2" in text and all(name in text for name in hosts.values()), text


def test_worker_containers_hold_no_database_credential_and_cannot_reach_the_database(
    docker_client: DockerClient, stack: Settings
) -> None:
    """Least privilege: a worker container has its worker file only (no database password, no Redis manager
    password, no renders folder), and the database is not on its network; Redis and the api are."""
    workers(stack, "--replicas", "1")
    container = next(c for c in worker_containers(docker_client, stack.project) if c.status == "running")
    env = "\n".join(container.attrs["Config"]["Env"])
    assert "RENDERFARM_DB_" not in env and "REDIS_PASSWORD" not in env, env
    assert [m["Destination"] for m in container.attrs["Mounts"]] == ["/run/secrets/worker_config"]
    code, out = container.exec_run(["ls", "/run/secrets"])
    assert out.decode().split() == ["worker_config"], out
    for host, reachable in (("db", False), ("redis", True), ("api", True)):
        code, out = container.exec_run(["getent", "hosts", host])
        assert (code == 0) is reachable, (host, code, out)
    # The api's database does answer on the api's side of the stack: the refusal above is the network's.
    api_container = service_container(docker_client, stack.project, "api")
    assert api_container is not None
    code, out = api_container.exec_run(["getent", "hosts", "db"])
    assert code == 0, out


def test_scaling_to_zero_preempts_the_job_in_hand_and_a_later_worker_finishes_it(
    docker_client: DockerClient, stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    workers(stack, "--replicas", "2")  # a no-op after the test above, a start when this test runs alone
    hosts = container_hosts(docker_client, stack)
    user = new_user(stack, credits=PRICE)
    mjid = post(api, user, "hd")
    wait_for(lambda: state(api, user, mjid)["state"] == "started", 120, f"{mjid} to start in a container")
    worker = str(r.hget(mq_key(mjid), "worker") or b"", "utf-8")
    assert worker.split("-render-")[0] in hosts, f"{mjid} is rendered by {worker!r}, not by a worker container"
    container = docker_client.containers.get(hosts[worker.split("-render-")[0]])
    wait_for(lambda: any("blender" in " ".join(p) for p in container.top()["Processes"]), 60, "Blender to run")
    wait_for(lambda: state(api, user, mjid)["state"] == "started", 5, f"{mjid} still rendering")

    said = workers(stack, "--replicas", "0")
    assert "stop 2" in said and "no worker containers left" in said, said
    assert worker_containers(docker_client, stack.project) == []
    j = state(api, user, mjid)
    assert j["state"] == "queued" and j["queue"] == "sq", j
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("pq", "preempted")]
    assert r.hget(mq_key(mjid), "lost") is None
    assert f"{mjid}-2" in queue_ids(r, "sq")
    assert "Nothing changed" in workers(stack, "--replicas", "0")

    run_worker(stack, "sq")  # a host worker started afterwards: `invoke worker --burst --queues sq`
    assert state(api, user, mjid)["state"] == "finished"
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("pq", "preempted"), ("sq", "finished")]
    assert png(api, user, mjid, tmp_path) == (1920, 1080)
    assert ledger(stack, mjid) == [("charge", -PRICE)]


def test_other_queues_recreate_and_invoke_down_and_the_test_kits_stop_remove_worker_containers(
    docker_client: DockerClient, project_images: Settings, host_blender: Path, tmp_path: Path
) -> None:
    with isolated_stack(docker_client, tmp_path / "one", blender_link=host_blender) as settings:
        workers(settings, "--replicas", "1")
        said = workers(settings, "--replicas", "1", "--queues", "sq")  # other settings: the container is recreated
        assert "recreate 1 made from an older image or other settings" in said, said
        listed = [w for w in status_json(settings)["workers"] if w["where"].startswith("container ")]
        assert [w["queues"] for w in listed] == ["sq"], listed
        done = invoke(settings, "down")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "removed 4 container(s)" in done.stdout, done.stdout
        assert project_containers(docker_client, settings.project) == []
    with isolated_stack(docker_client, tmp_path / "two", blender_link=host_blender) as settings:
        workers(settings, "--replicas", "1")
        project = settings.project
    assert project_containers(docker_client, project) == [], "the kit's stop left containers"


def test_workers_refuses_bad_values_a_missing_image_and_a_stack_that_is_not_up(
    docker_client: DockerClient, project_images: Settings, isolated_settings: Any
) -> None:
    settings = isolated_settings()
    missing_tag = f"none-{uuid.uuid4().hex[:6]}"
    cases = [
        ((), {}, ["--replicas is required", "invoke workers --replicas 2"]),
        (("--replicas", "two"), {}, ["--replicas 'two' is not a whole number from 0 to 32"]),
        (("--replicas", "33"), {}, ["--replicas '33'"]),
        (("--replicas", "1", "--queues", "xq"), {}, ["unknown queue(s): xq", "--queues pq"]),
        (  # no worker image of that tag: the dry run plans its build, builds nothing, then finds the stack down
            ("--replicas", "1", "--dry-run"),
            {"RENDERDEV_IMAGE_TAG": missing_tag},
            [f"renderdev/worker:{missing_tag}", "build", "invoke services"],
        ),
        (("--replicas", "1"), {}, [f"the stack of compose project {settings.project} is not up", "invoke services"]),
    ]
    for args, extra, expected in cases:
        done = invoke(settings, "workers", *args, **extra)
        said = done.stdout + done.stderr
        assert done.returncode == 1, (args, said)
        for text in expected:
            assert text in said, (args, said)
    assert project_containers(docker_client, settings.project) == []
    assert find_image(docker_client, f"renderdev/worker:{missing_tag}") is None, "a dry run built an image"
