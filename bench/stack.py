"""The bench's own compose project: own name, ports, state folder, image tag, Blender install root and
link (all in a temporary folder), and a loopback mirror for Blender. Made at the start of a run, removed
at the end; never the developer's default stack, never /usr/bin/blender.

Subprocesses (`invoke setup`, `invoke worker`, compose, rq) get one environment: the caller's, less every
RENDERDEV_* / RENDERFARM_* variable, plus the bench stack's RENDERDEV_* settings. The settings used in
this process are read under that same environment, so both sides agree (and so does compose's
config hash).

Images: the stack's own tag (`bench-<id>`) starts as a second name for the developer's `dev` images, so a
warm setup of the bench stack is warm, and anything it has to rebuild is rebuilt under the bench's tag
only; the tag is removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.mirror import Mirror, loopback_mirror
from bench.proc import descendants, free_port, run, tail
from provisioner.config import REPO_ROOT, Settings, load_settings
from provisioner.images import BUILT

if TYPE_CHECKING:
    import docker
    import redis
    from sqlalchemy.engine import Engine

BLENDER_VERSION = "3.4.1"  # what the api image declares (compose/api/Dockerfile) and the host's Blender is
SETUP_TIMEOUT = 3600.0
WORKER_READY_TIMEOUT = 60.0
STRIPPED_PREFIXES = ("RENDERDEV_", "RENDERFARM_")
Log = Callable[[str], None]


def stack_values(root: Path, mirror: Mirror, *, project: str, image_tag: str, **extra: Any) -> dict[str, Any]:
    """Settings for an isolated stack under root, installing Blender from the loopback mirror only."""
    values: dict[str, Any] = dict(
        project=project,
        state_dir=root / "state",
        redis_port=free_port(),
        db_port=free_port(),
        api_port=free_port(),
        image_tag=image_tag,
        blender_install_root=root / "blender",
        blender_link=root / "bin" / "blender",
        blender_versions_file=mirror.versions_file,
        blender_mirror=mirror.url,
        blender_official_base=f"{mirror.url}/no-such-site/release",  # never the real site
        aliases_file=root / "config" / "aliases.sh",
        rc_files=[root / "home" / ".bashrc", root / "home" / ".zshrc"],
    )
    values.update(extra)
    return values


def environment(values: Mapping[str, Any], root: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of the stack's subprocesses (see the module's doc)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(STRIPPED_PREFIXES)}
    for key, value in values.items():
        if isinstance(value, list):
            env[f"RENDERDEV_{key.upper()}"] = json.dumps([str(v) for v in value])
        else:
            env[f"RENDERDEV_{key.upper()}"] = str(value)
    env["RENDERDEV_CONFIG"] = str(root / "renderdev.toml")  # absent: no project file applies
    env["XDG_CACHE_HOME"] = str(root / "cache")  # Blender version answers are cached per stack
    return env


@contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_under(env: Mapping[str, str]) -> Settings:
    """The settings the stack's subprocesses will read."""
    with _environ(env):
        return load_settings()


@dataclass
class BenchStack:
    root: Path
    settings: Settings
    env: dict[str, str]
    mirror: Mirror
    client: docker.DockerClient
    log: Log

    def invoke(
        self, *args: str, timeout: float = 600.0, **extra: str
    ) -> tuple[float, subprocess.CompletedProcess[str]]:
        return run([sys.executable, "-m", "invoke", *args], env={**self.env, **extra}, timeout=timeout)

    def start_worker(self, queues: str, name: str, **extra: str) -> subprocess.Popen[bytes]:
        """A long-running `invoke worker` in its own session; its output goes to logs/<name>.log."""
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "invoke", "worker", "--queues", queues],
                cwd=REPO_ROOT,
                env={**self.env, **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def worker_log(self, name: str) -> str:
        try:
            return tail((self.root / "logs" / f"{name}.log").read_text(errors="replace"))
        except OSError:
            return ""

    def wait_for_worker(self, proc: subprocess.Popen[bytes], name: str, r: redis.Redis) -> None:
        """Until a worker is registered in the stack's Redis (the first job then finds it listening)."""
        from rq import Worker

        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while Worker.count(connection=r) < 1:
            if proc.poll() is not None:
                raise BenchError(
                    f"worker {name} exited {proc.returncode} before it was ready:\n{self.worker_log(name)}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"worker {name} not registered after {WORKER_READY_TIMEOUT:.0f} s")
            time.sleep(0.1)

    def stop_worker(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM (the worker stops its warm Blender), then SIGKILL to whatever is left of its tree: only
        processes that are still the very ones it had (same pid and start time), never a recycled pid."""
        tree = {pid: started_at(pid) for pid in descendants(proc.pid)}
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for pid, start in tree.items():
            if start is not None and started_at(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.wait(timeout=10)

    def redis(self) -> redis.Redis:
        import redis as redis_lib

        from provisioner.services import redis_url

        return redis_lib.Redis.from_url(redis_url(self.settings))

    def engine(self) -> Engine:
        from sqlalchemy import create_engine

        from provisioner.services import db_url

        return create_engine(db_url(self.settings))

    def seed_user(self, credits: int = 100) -> str:
        from rich.console import Console

        from provisioner.credits import seed_credits

        user = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        seed_credits(self.settings, Console(quiet=True), user=user, amount=credits, force=False)
        return user


def started_at(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def tag_images(client: docker.DockerClient, settings: Settings, from_tag: str = "dev") -> list[str]:
    """Give the developer's images (`<prefix>/<svc>:dev`, the worker's too) the stack's tag as a second name."""
    from provisioner.images import find_image

    done = []
    for svc in BUILT:
        image = find_image(client, f"{settings.image_prefix}/{svc}:{from_tag}")
        if image is not None and find_image(client, settings.image(svc)) is None:
            image.tag(f"{settings.image_prefix}/{svc}", tag=settings.image_tag)
            done.append(settings.image(svc))
    return done


def remove_images(client: docker.DockerClient, names: list[str]) -> list[str]:
    """Remove these tags (an image with other names keeps them: only the tag goes)."""
    from docker.errors import APIError, ImageNotFound

    removed = []
    for name in names:
        try:
            client.images.remove(name)
            removed.append(name)
        except ImageNotFound:
            pass
        except APIError as exc:  # e.g. still used by a container: say so, leave it
            removed.append(f"{name} NOT removed ({exc.explanation or exc})")
    return removed


def remove_project(client: docker.DockerClient, settings: Settings) -> str:
    """compose down --volumes for the project; whatever is left (a failed down) is removed by label; then the
    project's loopback guard rules (its `invoke setup` added them on an engine before 28)."""
    from provisioner.dockerapi import remove_by_label
    from provisioner.firewall import remove_guard
    from provisioner.services import down

    try:
        said = down(client, settings, volumes=True)
    except Exception as exc:  # noqa: BLE001 - fall back to removing by label below
        said = f"compose down failed ({exc}); removed by label"
    remove_by_label(client, settings.project)
    return f"{said}; {remove_guard(client, settings)}"


@contextmanager
def bench_stack(client: docker.DockerClient, log: Log) -> Iterator[BenchStack]:
    """Make the stack (mirror, images under the bench tag, a first `invoke setup`), yield it, remove it all."""
    root = Path(tempfile.mkdtemp(prefix="renderdev-bench-"))
    ident = uuid.uuid4().hex[:8]
    try:
        log(f"bench: making the loopback mirror from the host's Blender in {root}")
        with loopback_mirror(root / "mirror", BLENDER_VERSION) as mirror:
            values = stack_values(root / "stack", mirror, project=f"rdbench-{ident}", image_tag=f"bench-{ident}")
            env = environment(values, root / "stack")
            settings = settings_under(env)
            images = [settings.image(name) for name in BUILT]  # the worker image too, if the developer has one
            tag_images(client, settings)
            stack = BenchStack(root, settings, env, mirror, client, log)
            try:
                log(f"bench: invoke setup for compose project {settings.project} (images, services, Blender, aliases)")
                seconds, _ = stack.invoke("setup", timeout=SETUP_TIMEOUT)
                log(f"bench: stack ready in {seconds:.1f} s")
                yield stack
            finally:
                log(f"bench: removing compose project {settings.project}: {remove_project(client, settings)}")
                remove_images(client, images)
    finally:
        shutil.rmtree(root, ignore_errors=True)
