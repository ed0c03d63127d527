"""Helpers for tests that run the pipeline against an isolated compose project, as a developer does:
`invoke` subprocesses with RENDERDEV_* variables, the API over HTTP, Redis and Postgres read directly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from docker import DockerClient
from rich.console import Console
from sqlalchemy import create_engine, text

from provisioner.config import Settings
from provisioner.credits import read_token, seed_credits
from provisioner.ports import free_port
from provisioner.proc import descendants
from provisioner.services import db_url
from renderdev.testing.stack import stack_settings, start_stack, stop_stack
from renderdev.testing.worker import worker_environment
from renderfarm.examples import example_scene_path
from renderfarm.keys import attempts_key

REPO = Path(__file__).resolve().parents[1]
FAST = {"RENDERFARM_PREVIEW_SAMPLES": "2", "RENDERFARM_HD_SAMPLES": "1"}
SLOW = {"RENDERFARM_PREVIEW_SAMPLES": "2", "RENDERFARM_HD_SAMPLES": "512"}  # long enough to interrupt


@contextmanager
def running_stack(client: DockerClient, settings: Settings) -> Iterator[Settings]:
    """The project's redis, db and api, up and healthy through the testcontainers kit (renderdev.testing, the one
    way tests start a stack); removed with its volumes afterwards."""
    stack = start_stack(client, settings)
    try:
        yield settings
    finally:
        stop_stack(stack)


def require_blender(link: Path) -> Path:
    """The Blender a test worker is given: the `host_blender` fixture's link. Without it a worker would quietly
    fall back to a `blender` on PATH, which is what a person (or an earlier test) happened to install."""
    if not link.exists():
        raise AssertionError(
            f"no Blender at {link}: a test worker is given the `host_blender` fixture's link explicitly"
            " (pass blender_link=host_blender), never a `blender` from PATH"
        )
    return link


@contextmanager
def isolated_stack(client: DockerClient, tmp: Path, *, blender_link: Path, **overrides: Any) -> Iterator[Settings]:
    """An own compose project whose workers render with `blender_link` (the `host_blender` fixture)."""
    settings = stack_settings(tmp, blender_link=require_blender(blender_link), **overrides)
    with running_stack(client, settings):
        yield settings


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """os.environ without any RENDERDEV_* of the developer's, plus every setting of `settings` (the kit's
    worker_environment), never the real download.blender.org (a closed loopback port answers at once), and samples
    lowered so renders are quick (`extra` wins)."""
    closed = f"http://127.0.0.1:{free_port()}/release"
    return worker_environment(settings, **{"RENDERDEV_BLENDER_OFFICIAL_BASE": closed, **FAST, **extra})


def invoke(settings: Settings, *args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env=env_for(settings, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_worker(settings: Settings, queues: str = "pq,sq", **extra: str) -> str:
    require_blender(settings.blender_link)
    proc = invoke(settings, "worker", "--burst", "--queues", queues, **extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def start_worker(settings: Settings, queues: str, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """A long-running worker (not burst), in its own process group, its output in `log`."""
    require_blender(settings.blender_link)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "invoke", "worker", "--queues", queues],
            cwd=REPO,
            env=env_for(settings, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def blender_pids(pid: int) -> list[int]:
    found = []
    for p in descendants(pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmd.endswith(b"blender"):
            found.append(p)
    return found


def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.1) -> float:
    """Wait until predicate() is true; return the seconds it took; fail naming what was awaited."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


@dataclass(frozen=True)
class User:
    """A user of a test stack's API: their email and the API token `invoke seed-credits` made for them."""

    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def seed(settings: Settings, user: str | User, amount: int) -> None:
    email = user.email if isinstance(user, User) else user
    proc = invoke(settings, "seed-credits", "--user", email, "--amount", str(amount))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def new_user(settings: Settings, credits: int = 0) -> User:
    """A new user with an API token (read from the state folder, where seed-credits saved it): seeded through
    `invoke seed-credits` when given credits, else made in-process the same way with none."""
    email = f"u{uuid.uuid4().hex[:10]}@example.com"
    if credits:
        seed(settings, email, credits)
    else:
        seed_credits(settings, Console(quiet=True), user=email, amount=None)
    return User(email=email, token=read_token(settings, email))


def example_scene() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(example_scene_path().read_text())
    return data


def small_scene(**camera: Any) -> dict[str, Any]:
    scene = example_scene()
    scene["objects"] = scene["objects"][:5]
    scene["camera"].update(camera)
    return scene


def balance(api: httpx.Client, user: User) -> int:
    resp = api.get(f"/users/{user.email}/credits", headers=user.headers)
    assert resp.status_code == 200, resp.text
    return int(resp.json()["balance"])


def queue_ids(r: redis.Redis, name: str) -> list[str]:
    return [x.decode() for x in r.lrange(f"rq:queue:{name}", 0, -1)]


def attempts(r: redis.Redis, mjid: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.lrange(attempts_key(mjid), 0, -1)]


def ledger(settings: Settings, mjid: str) -> list[tuple[str, int]]:
    engine = create_engine(db_url(settings))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT reason, amount FROM credit_entries WHERE mjid = :m ORDER BY id"), {"m": mjid}
            ).all()
        return [(str(a), int(b)) for a, b in rows]
    finally:
        engine.dispose()


def job(api: httpx.Client, mjid: str, user: User) -> dict[str, Any]:
    """The job's state as its user sees it (GET /renders/{mjid} with their token)."""
    resp = api.get(f"/renders/{mjid}", headers=user.headers)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data
