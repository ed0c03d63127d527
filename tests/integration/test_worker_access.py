"""Workers with least privilege (issue 11): `invoke worker-config` makes a worker file (a worker token and a Redis user
of its own, no database credential); a host worker given only that file renders through the API, which stores the
uploaded image; the Redis user reaches rq's keys only; a credential cannot report on another's attempt; uploads are
checked (PNG, size, type, length); a revoked credential is refused at once, by the API and by Redis.

Real Docker, Redis (its ACL file), Postgres, the api container and Blender (the `host_blender` fixture).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from docker import DockerClient

from provisioner.compose import CONTAINER_UID
from provisioner.config import Settings
from provisioner.secrets import read_secrets
from provisioner.services import api_url
from renderfarm.jobs import JobManager
from renderfarm.keys import mq_key, scene_key
from renderfarm.png import png_size
from renderfarm.settings import WorkerAccess
from tests.stackutil import REPO, User, env_for, invoke, isolated_stack, new_user, small_scene, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient, project_images: Settings, host_blender: Path, tmp_path_factory: Any
) -> Iterator[Settings]:
    with isolated_stack(docker_client, tmp_path_factory.mktemp("worker-access"), blender_link=host_blender) as s:
        yield s


@pytest.fixture(scope="module")
def api(stack: Settings) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url(stack), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def manager(stack: Settings) -> Iterator[redis.Redis]:
    r = redis.Redis(host=stack.bind_host, port=stack.redis_port, password=read_secrets(stack)["redis_password"])
    yield r
    r.close()


def worker_file(stack: Settings, tmp: Path, name: str, *args: str) -> tuple[WorkerAccess, str]:
    """`invoke worker-config --name NAME --output FILE`: the file it wrote (read as a worker reads it), its output."""
    path = tmp / f"{name}.json"
    done = invoke(stack, "worker-config", "--name", name, "--output", str(path), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return WorkerAccess.from_file(path), done.stdout


def worker_redis(access: WorkerAccess) -> redis.Redis:
    return redis.Redis(
        host=access.redis_host, port=access.redis_port, username=access.redis_user, password=access.redis_password
    )


def post(api: httpx.Client, user: User, quality: str = "preview") -> str:
    resp = api.post("/renders", json={"quality": quality, "scene": small_scene()}, headers=user.headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["mjid"])


def make_png(width: int, height: int) -> bytes:
    """A whole, valid PNG (8-bit grey) of that size, written here: what a worker uploads, without Blender."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def bearer(access: WorkerAccess) -> dict[str, str]:
    return {"Authorization": f"Bearer {access.token}"}


def start(api: httpx.Client, access: WorkerAccess, mjid: str) -> int:
    """Start the job's next attempt as a worker with this credential would (the rq job of a fresh job is its mjid)."""
    resp = api.post(
        f"/worker/jobs/{mjid}/start", json={"rq_job": mjid, "worker": "test-worker"}, headers=bearer(access)
    )
    assert resp.status_code == 200, resp.text
    started: dict[str, Any] = resp.json()
    assert started["quality"] == "preview" and started["scene"]["camera"] and started["heartbeat_ttl"] > 0
    return int(started["attempt"])


def test_a_host_worker_with_only_a_worker_file_renders_through_the_api(
    stack: Settings, api: httpx.Client, tmp_path: Path
) -> None:
    access, said = worker_file(stack, tmp_path, "hostbox")
    path = tmp_path / "hostbox.json"
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    secrets = read_secrets(stack)
    assert secrets["db_password"] not in text and secrets["redis_password"] not in text
    assert set(json.loads(text)) == {
        "format", "name", "api_url", "token", "redis_host", "redis_port", "redis_user", "redis_password"
    }  # fmt: skip
    again = invoke(stack, "worker-config", "--name", "hostbox", "--output", str(path))
    assert again.returncode == 0 and "Nothing changed" in again.stdout, again.stdout + again.stderr
    assert WorkerAccess.from_file(path) == access

    user = new_user(stack)
    mjid = post(api, user)
    # The worker gets no stack settings at all: no secrets folder, no database, no renders folder of the stack's.
    done = invoke(
        stack,
        "worker",
        "--burst",
        "--config",
        str(path),
        RENDERDEV_STATE_DIR=str(tmp_path / "elsewhere"),
        RENDERDEV_BLENDER_LINK=str(stack.blender_link),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    job = api.get(f"/renders/{mjid}", headers=user.headers).json()
    assert job["state"] == "finished", (job, done.stdout[-3000:], done.stderr[-3000:])
    image = api.get(f"/renders/{mjid}/image", headers=user.headers)
    assert image.status_code == 200
    (tmp_path / "got.png").write_bytes(image.content)
    assert png_size(tmp_path / "got.png") == (640, 360)
    stored = stack.renders_dir / f"{mjid}-1.png"
    assert stored.read_bytes() == image.content
    if os.getuid() == 0:
        assert stored.stat().st_uid == CONTAINER_UID  # written by the api container, not by the worker
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").rglob("*.png"))


def test_a_worker_redis_user_reaches_rq_keys_only(
    stack: Settings, manager: redis.Redis, api: httpx.Client, tmp_path: Path
) -> None:
    access, _ = worker_file(stack, tmp_path, "keys-only")
    mjid = post(api, new_user(stack))
    before = manager.hgetall(mq_key(mjid))
    r = worker_redis(access)
    try:
        assert r.ping()
        r.lrange("rq:queue:pq", 0, -1)  # rq's own keys, with the commands an rq worker sends: allowed
        r.hset("rq:job:probe", "x", "1")
        r.delete("rq:job:probe")
        refused = [
            lambda: r.hset(mq_key(mjid), "state", "finished"),
            lambda: r.get(scene_key(mjid)),
            lambda: r.set(f"{mq_key(mjid)}:heartbeat", "1"),
            lambda: r.keys("*"),
            lambda: r.flushall(),
            lambda: r.config_get("*"),
            lambda: r.execute_command("ACL", "LIST"),
            lambda: r.eval("return 1", 0),
        ]
        for attempt in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
    finally:
        r.close()
    assert manager.hgetall(mq_key(mjid)) == before


def test_a_credential_cannot_report_on_another_credentials_attempt(
    stack: Settings, api: httpx.Client, tmp_path: Path
) -> None:
    a, _ = worker_file(stack, tmp_path, "owner-a")
    b, _ = worker_file(stack, tmp_path, "other-b")
    user = new_user(stack)
    mjid = post(api, user)
    attempt = start(api, a, mjid)
    base = f"/worker/jobs/{mjid}/attempts/{attempt}"
    png = make_png(640, 360)
    calls = [
        ("POST", f"{base}/heartbeat", {}),
        ("PUT", f"{base}/image", {"content": png, "headers": {**bearer(b), "Content-Type": "image/png"}}),
        ("POST", f"{base}/failed", {"json": {"error": "not mine"}}),
        ("POST", f"{base}/requeue", {"json": {"outcome": "preempted"}}),
    ]
    for method, url, kwargs in calls:
        kwargs.setdefault("headers", bearer(b))
        resp = api.request(method, url, **kwargs)
        assert resp.status_code == 403, (url, resp.text)
    job = api.get(f"/renders/{mjid}", headers=user.headers).json()
    assert job["state"] == "started" and job["attempts"] == attempt

    # The owner's uploads are checked before anything is stored or changed.
    own = {**bearer(a), "Content-Type": "image/png"}
    refusals = [
        (b"not a png at all", own, 422),
        (make_png(1920, 1080), own, 422),  # an HD-sized image for a preview job
        (png[:-20], own, 422),  # truncated
        (png + b"extra", own, 422),
        (png, {**bearer(a), "Content-Type": "application/octet-stream"}, 415),
        (b"\0" * (64 * 1024 * 1024 + 1), own, 413),
    ]
    for body, headers, status in refusals:
        resp = api.put(f"{base}/image", content=body, headers=headers)
        assert resp.status_code == status, (status, resp.text[:300])
    assert api.get(f"/renders/{mjid}", headers=user.headers).json()["state"] == "started"
    assert api.post(f"{base}/heartbeat", headers=bearer(a)).status_code == 204

    done = api.put(f"{base}/image", content=png, headers=own)
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "finished"
    image = api.get(f"/renders/{mjid}/image", headers=user.headers)
    assert image.status_code == 200 and image.content == png
    # The same attempt again (a retried upload): stale, and the stored image stays.
    again = api.put(f"{base}/image", content=make_png(640, 360), headers=own)
    assert again.status_code == 409 and again.json()["state"] == "finished", again.text
    assert api.get(f"/renders/{mjid}/image", headers=user.headers).content == png


def test_a_revoked_credential_is_refused_at_once(stack: Settings, api: httpx.Client, tmp_path: Path) -> None:
    access, _ = worker_file(stack, tmp_path, "revoked")
    mjid = post(api, new_user(stack))
    r = worker_redis(access)
    try:
        assert r.ping()
        claim = api.post(f"/worker/jobs/{mjid}/claim", json={"rq_job": mjid}, headers=bearer(access))
        assert claim.status_code == 200, claim.text
        done = invoke(stack, "worker-revoke", "--name", "revoked")
        assert done.returncode == 0, done.stdout + done.stderr
        refused = api.post(f"/worker/jobs/{mjid}/claim", json={"rq_job": mjid}, headers=bearer(access))
        assert refused.status_code == 401, refused.text
        with pytest.raises(redis.exceptions.RedisError):
            r.ping()  # the open connection was closed by Redis
        with pytest.raises(redis.exceptions.AuthenticationError):
            worker_redis(access).ping()
    finally:
        r.close()
    # A worker started with the revoked file stops at once, naming the refusal and the next command.
    path = tmp_path / "revoked.json"
    refused = invoke(stack, "worker", "--burst", "--config", str(path), RENDERDEV_STATE_DIR=str(tmp_path / "other"))
    said = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "refuses worker credential 'revoked'" in said, said
    assert "invoke worker-config --name NAME --rotate" in said, said
    again = invoke(stack, "worker-revoke", "--name", "revoked")
    assert again.returncode == 0 and "already revoked" in again.stdout
    unknown = invoke(stack, "worker-config", "--name", "Bad Name!")
    assert unknown.returncode == 1 and "'Bad Name!'" in (unknown.stdout + unknown.stderr)


def test_a_running_worker_stops_when_its_credential_is_revoked(
    stack: Settings, manager: redis.Redis, tmp_path: Path
) -> None:
    """An idle worker waits on Redis as its own user. Revoking the credential closes that connection; rq would
    retry a lost connection forever, but the reconnection's AUTH is refused, and the worker stops, naming it."""
    _, _ = worker_file(stack, tmp_path, "idle-box")
    path = tmp_path / "idle-box.json"
    log = tmp_path / "worker.log"
    env = env_for(stack, RENDERDEV_STATE_DIR=str(tmp_path / "other"), RENDERDEV_BLENDER_LINK=str(stack.blender_link))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "worker", "--config", str(path), "--queues", "pq,sq"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: bool(manager.smembers("rq:workers")), 60, "the worker registered with rq")
        done = invoke(stack, "worker-revoke", "--name", "idle-box")
        assert done.returncode == 0, done.stdout + done.stderr
        code = proc.wait(timeout=30)
        said = log.read_text(errors="replace")
        assert code == 1, said[-3000:]
        assert "refuses worker credential 'idle-box'" in said, said[-3000:]
        assert "retrying in" not in said.split("refuses worker credential")[-1], said[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


def test_tiles_uploaded_through_the_api_are_checked_as_tiles_and_stitched_by_the_api(
    stack: Settings, api: httpx.Client, manager: redis.Redis, tmp_path: Path
) -> None:
    """A worker with only its file cannot read the other tiles: the API, which stores them, stitches the image when
    the last tile's upload arrives."""
    access, _ = worker_file(stack, tmp_path, "tiler")
    user = new_user(stack, credits=100)
    resp = api.post("/renders", json={"quality": "hd", "scene": small_scene(), "tiles": 2}, headers=user.headers)
    assert resp.status_code == 202, resp.text
    mjid = str(resp.json()["mjid"])
    own = {**bearer(access), "Content-Type": "image/png"}
    for index, child in enumerate(JobManager(manager, None).children(mjid)):  # type: ignore[arg-type]
        started = api.post(
            f"/worker/jobs/{child}/start", json={"rq_job": child, "worker": "tiler"}, headers=bearer(access)
        )
        assert started.status_code == 200, started.text
        assert (started.json()["tile"], started.json()["tiles"], started.json()["quality"]) == (index, 2, "hd")
        base = f"/worker/jobs/{child}/attempts/{started.json()['attempt']}"
        whole = api.put(f"{base}/image", content=make_png(1920, 1080), headers=own)
        assert whole.status_code == 422 and "1920x540" in whole.text, whole.text  # a tile is a band, not the image
        assert api.put(f"{base}/image", content=make_png(1920, 540), headers=own).status_code == 200
        parent = api.get(f"/renders/{mjid}", headers=user.headers).json()
        assert parent["state"] == ("finished" if index == 1 else "started"), parent
    image = api.get(f"/renders/{mjid}/image", headers=user.headers)
    assert image.status_code == 200
    (tmp_path / "stitched.png").write_bytes(image.content)
    assert png_size(tmp_path / "stitched.png") == (1920, 1080)
