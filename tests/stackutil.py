"""Helpers for tests that run the pipeline against an isolated compose project, as a developer does:
`invoke` subprocesses with RENDERDEV_* variables, the API over HTTP, Redis and Postgres read directly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
from docker import DockerClient
from sqlalchemy import create_engine, text

from bench.proc import descendants, free_port
from provisioner.config import Settings, load_settings
from provisioner.console import make_console
from provisioner.plan import apply_steps
from provisioner.services import db_url, down, plan_services
from renderfarm.examples import example_scene_path
from renderfarm.keys import attempts_key

REPO = Path(__file__).resolve().parents[1]
FAST = {"RENDERFARM_PREVIEW_SAMPLES": "2", "RENDERFARM_HD_SAMPLES": "1"}
SLOW = {"RENDERFARM_PREVIEW_SAMPLES": "2", "RENDERFARM_HD_SAMPLES": "512"}  # long enough to interrupt


@contextmanager
def running_stack(client: DockerClient, settings: Settings) -> Iterator[Settings]:
    """The project's redis, db and api, up and healthy; removed with its volumes afterwards."""
    try:
        apply_steps(make_console(), plan_services(client, settings), dry_run=False)
        yield settings
    finally:
        down(client, settings, volumes=True)


@contextmanager
def isolated_stack(client: DockerClient, tmp: Path, **overrides: Any) -> Iterator[Settings]:
    values: dict[str, Any] = dict(
        project=f"rdt-{uuid.uuid4().hex[:8]}",
        state_dir=tmp / "state",
        redis_port=free_port(),
        db_port=free_port(),
        api_port=free_port(),
        blender_link=tmp / "bin" / "blender",  # absent: workers use `blender` from PATH
        blender_install_root=tmp / "blender",
        aliases_file=tmp / "cfg" / "aliases.sh",
        rc_files=[tmp / "home" / ".bashrc"],
    )
    values.update(overrides)
    with running_stack(client, load_settings(**values)) as settings:
        yield settings


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """os.environ without any RENDERDEV_* of the developer's, plus every setting of `settings` that names the
    stack or places something on the host, and samples lowered so renders are quick (`extra` wins)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERDEV_")}
    env.update(
        RENDERDEV_CONFIG=str(settings.state_dir.parent / "no-renderdev.toml"),  # no project file is read
        RENDERDEV_PROJECT=settings.project,
        RENDERDEV_STATE_DIR=str(settings.state_dir),
        RENDERDEV_REDIS_PORT=str(settings.redis_port),
        RENDERDEV_DB_PORT=str(settings.db_port),
        RENDERDEV_API_PORT=str(settings.api_port),
        RENDERDEV_BLENDER_INSTALL_ROOT=str(settings.blender_install_root),
        RENDERDEV_BLENDER_LINK=str(settings.blender_link),
        RENDERDEV_ALIASES_FILE=str(settings.aliases_file),
        RENDERDEV_RC_FILES=json.dumps([str(p) for p in settings.rc_files]),
        RENDERDEV_BLENDER_VERSIONS_FILE=str(settings.blender_versions_file),
        # never the real download.blender.org: a closed loopback port answers at once
        RENDERDEV_BLENDER_OFFICIAL_BASE=f"http://127.0.0.1:{free_port()}/release",
        RENDERDEV_HEARTBEAT_TTL=str(settings.heartbeat_ttl),
        RENDERDEV_REAP_INTERVAL=str(settings.reap_interval),
        RENDERDEV_MAX_LOST=str(settings.max_lost),
        RENDERDEV_HD_PRICE=str(settings.hd_price),
    )
    env.update(FAST)
    env.update(extra)
    return env


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
    proc = invoke(settings, "worker", "--burst", "--queues", queues, **extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def start_worker(settings: Settings, queues: str, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """A long-running worker (not burst), in its own process group, its output in `log`."""
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


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_tree(pid: int, sig: signal.Signals = signal.SIGKILL) -> list[int]:
    pids = descendants(pid)
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    return pids


def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.1) -> float:
    """Wait until predicate() is true; return the seconds it took; fail naming what was awaited."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def seed(settings: Settings, user: str, amount: int) -> None:
    proc = invoke(settings, "seed-credits", "--user", user, "--amount", str(amount))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def new_user(settings: Settings, credits: int = 0) -> str:
    user = f"u{uuid.uuid4().hex[:10]}@example.com"
    if credits:
        seed(settings, user, credits)
    return user


def example_scene() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(example_scene_path().read_text())
    return data


def small_scene(**camera: Any) -> dict[str, Any]:
    scene = example_scene()
    scene["objects"] = scene["objects"][:5]
    scene["camera"].update(camera)
    return scene


def balance(api: httpx.Client, user: str) -> int:
    resp = api.get(f"/users/{user}/credits")
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


def job(api: httpx.Client, mjid: str) -> dict[str, Any]:
    data: dict[str, Any] = api.get(f"/renders/{mjid}").json()
    return data
