"""The rq job a render worker runs: render one mjid with the host's Blender and record the outcome in mq.

The image is written to the renders folder (RENDERFARM_RENDERS_DIR), which the api container mounts
and serves; the worker never talks to the API.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from redis import Redis
from rq import get_current_job
from sqlalchemy.engine import Engine

from renderfarm.clients import make_engine, make_redis
from renderfarm.db import make_sessionmaker
from renderfarm.errors import BlenderRenderError, RenderConfigError
from renderfarm.jobs import JobManager
from renderfarm.render import profile_for, render_scene
from renderfarm.scene import parse_scene
from renderfarm.settings import ServiceSettings

log = logging.getLogger("renderfarm.work")


def renders_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    raw = env.get("RENDERFARM_RENDERS_DIR", "").strip()
    if not raw:
        raise RenderConfigError("RENDERFARM_RENDERS_DIR is not set: the worker does not know where to put images")
    return Path(raw)


def image_name(mjid: str) -> str:
    return f"{mjid}.png"


def connect(settings: ServiceSettings) -> tuple[Redis, Engine]:
    return make_redis(settings, socket_timeout=None), make_engine(settings)


def render_job(mjid: str) -> str:
    """Run by rq in the worker's work horse. Returns the image's file name."""
    settings = ServiceSettings.from_env()
    redis, engine = connect(settings)
    manager = JobManager(redis, make_sessionmaker(engine))
    try:
        job = get_current_job()
        worker = (job.worker_name if job is not None else None) or f"pid-{os.getpid()}"
        view = manager.mark_started(mjid, worker)
        out = renders_dir() / image_name(mjid)
        try:
            scene = parse_scene(manager.scene(mjid))
            render_scene(scene, profile_for(view.quality), out, blender=os.environ.get("RENDERFARM_BLENDER", "blender"))
        except (BlenderRenderError, RenderConfigError, ValueError) as exc:
            manager.mark_failed(mjid, str(exc))
            raise
        manager.mark_finished(mjid, out.name)
        return out.name
    finally:
        redis.close()
        engine.dispose()
