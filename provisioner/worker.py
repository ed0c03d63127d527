"""`invoke worker`: an rq render worker on this host, against the stack's Redis and Postgres.

The job function (renderfarm.work.render_job) runs in rq's work horse and reads RENDERFARM_* variables
at call time; this module sets them from renderdev's settings, so the host worker and the api container
agree on where everything is.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from provisioner.config import Settings
from provisioner.errors import ConfigError, RenderdevError
from provisioner.secrets import secret_path

QUEUES = ("pq", "sq")


def worker_environment(settings: Settings) -> dict[str, str]:
    """RENDERFARM_* for the job function: the stack as seen from the host. Passwords stay in their files."""
    return {
        "RENDERFARM_REDIS_HOST": settings.bind_host,
        "RENDERFARM_REDIS_PORT": str(settings.redis_port),
        "RENDERFARM_REDIS_PASSWORD_FILE": str(secret_path(settings, "redis_password")),
        "RENDERFARM_DB_HOST": settings.bind_host,
        "RENDERFARM_DB_PORT": str(settings.db_port),
        "RENDERFARM_DB_USER": settings.db_user,
        "RENDERFARM_DB_NAME": settings.db_name,
        "RENDERFARM_DB_PASSWORD_FILE": str(secret_path(settings, "db_password")),
        "RENDERFARM_RENDERS_DIR": str(settings.renders_dir),
        "RENDERFARM_BLENDER": blender_command(settings),
    }


def blender_command(settings: Settings) -> str:
    """The Blender `invoke setup` linked; plain `blender` from PATH when that link is not there."""
    link = settings.blender_link
    return str(link) if link.exists() else "blender"


def parse_queues(queues: list[str]) -> list[str]:
    unknown = [q for q in queues if q not in QUEUES]
    if unknown or not queues:
        raise ConfigError(
            f"unknown queue(s): {', '.join(unknown) or '(none given)'}",
            hint="use --queues pq (preemptible), --queues sq (standard) or --queues pq,sq",
        )
    return list(dict.fromkeys(queues))


def worker_name(queues: list[str]) -> str:
    kinds: dict[tuple[str, ...], str] = {("pq",): "preemptible", ("sq",): "standard"}
    kind = kinds.get(tuple(queues), "render")
    return f"{socket.gethostname()}-{kind}-{os.getpid()}"


def run_worker(settings: Settings, queues: list[str], *, burst: bool = False) -> None:
    """Serve the queues until stopped (or, with burst, until they are empty)."""
    from rq import Queue, Worker

    from renderfarm.clients import make_redis
    from renderfarm.settings import ServiceSettings

    names = parse_queues(queues)
    if not settings.secrets_file.exists():
        raise RenderdevError(
            f"no secrets for compose project {settings.project} ({settings.secrets_file} is missing)",
            hint="invoke setup",
        )
    if blender_command(settings) == "blender" and shutil.which("blender") is None:
        raise RenderdevError(
            f"no Blender: {settings.blender_link} is missing and none is on PATH", hint="invoke blender"
        )
    env = worker_environment(settings)
    os.environ.update(env)  # read by the job function in the work horse, at call time
    redis = make_redis(ServiceSettings.from_env(env), socket_timeout=None)
    try:
        redis.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach Redis gets the same advice
        raise RenderdevError(
            f"the stack's Redis at {settings.bind_host}:{settings.redis_port} does not answer ({exc})",
            hint="invoke services",
        ) from exc
    Path(settings.renders_dir).mkdir(parents=True, exist_ok=True)
    worker = Worker([Queue(q, connection=redis) for q in names], connection=redis, name=worker_name(names))
    worker.work(burst=burst, logging_level="INFO", with_scheduler=False)
