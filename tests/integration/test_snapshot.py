"""`invoke snapshot` / `invoke restore` against a real stack (the testcontainers kit's), as a developer runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest
import redis
from docker import DockerClient

from provisioner.config import REPO_ROOT
from renderdev.testing import RenderStack, TestUser, WorkerProcess, seed_user
from renderdev.testing.worker import worker_environment
from renderfarm.examples import example_scene_path
from renderfarm.keys import mq_index_key

pytestmark = [pytest.mark.integration]


def invoke(stack: RenderStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO_ROOT,
        env=worker_environment(stack.settings),
        capture_output=True,
        text=True,
        timeout=300,
    )


def post(stack: RenderStack, user: TestUser, quality: str) -> str:
    scene = json.loads(example_scene_path().read_text())
    body = {"user": user.email, "quality": quality, "scene": scene}
    resp = httpx.post(f"{stack.api_url}/renders", json=body, headers=user.headers, timeout=30)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["mjid"])


def balance(stack: RenderStack, user: TestUser) -> httpx.Response:
    return httpx.get(f"{stack.api_url}/users/{user.email}/credits", headers=user.headers, timeout=30)


def data(stack: RenderStack) -> dict[str, Any]:
    """What a restore must bring back: the ledger index, the queues, the users and credit entries."""
    from sqlalchemy import create_engine, text

    with redis.Redis.from_url(stack.redis_url) as r:
        found: dict[str, Any] = {
            "mq": sorted(x.decode() for x in r.zrange(mq_index_key(), 0, -1)),
            "pq": [x.decode() for x in r.lrange("rq:queue:pq", 0, -1)],
            "sq": [x.decode() for x in r.lrange("rq:queue:sq", 0, -1)],
        }
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as conn:
            found["users"] = conn.execute(text("SELECT email, token_hash FROM users ORDER BY id")).all()
            found["credits"] = conn.execute(
                text("SELECT user_id, amount, reason, mjid FROM credit_entries ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    return found


def test_restore_brings_back_the_database_and_redis_as_at_the_snapshot(renderdev_stack: RenderStack) -> None:
    user = seed_user(renderdev_stack.database_url, credits=50)
    kept = post(renderdev_stack, user, "preview")
    before = data(renderdev_stack)

    made = invoke(renderdev_stack, "snapshot", "--name", "before-hd")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "invoke restore before-hd" in made.stdout
    listed = invoke(renderdev_stack, "snapshot", "--list")
    assert "before-hd" in listed.stdout and "blender 3.4.1" in listed.stdout, listed.stdout

    gone = post(renderdev_stack, user, "hd")
    other = seed_user(renderdev_stack.database_url, credits=5)
    assert balance(renderdev_stack, user).json()["balance"] == 40
    assert data(renderdev_stack) != before

    dry = invoke(renderdev_stack, "restore", "before-hd", "--dry-run")
    assert dry.returncode == 0 and "Dry run" in dry.stdout, dry.stdout + dry.stderr
    assert balance(renderdev_stack, user).json()["balance"] == 40

    done = invoke(renderdev_stack, "restore", "before-hd")
    assert done.returncode == 0, done.stdout + done.stderr
    assert data(renderdev_stack) == before
    assert balance(renderdev_stack, user).json()["balance"] == 50
    assert httpx.get(f"{renderdev_stack.api_url}/renders/{kept}", headers=user.headers).status_code == 200
    assert httpx.get(f"{renderdev_stack.api_url}/renders/{gone}", headers=user.headers).status_code == 404
    assert balance(renderdev_stack, other).status_code == 401  # that user (and their token) came after the snapshot


def test_a_corrupt_or_missing_snapshot_is_refused_and_nothing_changes(
    renderdev_stack: RenderStack, docker_client: DockerClient
) -> None:
    user = seed_user(renderdev_stack.database_url, credits=20)
    assert invoke(renderdev_stack, "snapshot", "--name", "to-break").returncode == 0
    post(renderdev_stack, user, "hd")
    dump = renderdev_stack.settings.project_state_dir / "snapshots" / "to-break" / "db.dump"
    raw = bytearray(dump.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    dump.write_bytes(bytes(raw))

    def containers() -> list[tuple[str, str]]:
        label = f"com.docker.compose.project={renderdev_stack.project}"
        return sorted(
            (c.name, c.attrs["State"]["StartedAt"]) for c in docker_client.containers.list(filters={"label": label})
        )

    before, ran = data(renderdev_stack), containers()
    for name, says in [
        ("to-break", "corrupt"),
        ("never-made", "no snapshot never-made"),
        ("../etc", "not a snapshot name"),
    ]:
        refused = invoke(renderdev_stack, "restore", name)
        assert refused.returncode == 1, refused.stdout
        assert says in refused.stderr, refused.stderr
    assert data(renderdev_stack) == before and containers() == ran


def test_restore_is_refused_while_a_worker_is_connected(
    renderdev_stack: RenderStack, render_worker: WorkerProcess
) -> None:
    assert invoke(renderdev_stack, "snapshot", "--name", "with-worker").returncode == 0
    refused = invoke(renderdev_stack, "restore", "with-worker")
    assert refused.returncode == 1
    assert "render workers are connected" in refused.stderr and str(render_worker.pid) in refused.stderr, refused.stderr
