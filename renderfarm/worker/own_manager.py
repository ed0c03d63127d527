"""A JobManager on connections of its own (Redis and Postgres, from settings), and how to close it: the worker's
main process has one (its claims and its reaper), and so has a job run without a lent connection."""

from __future__ import annotations

from renderfarm.clients import make_engine, make_redis
from renderfarm.db import make_sessionmaker
from renderfarm.jobs import JobManager
from renderfarm.settings import FarmSettings


def open_manager(settings: FarmSettings) -> JobManager:
    redis = make_redis(settings.service, socket_timeout=None)
    return JobManager(
        redis,
        make_sessionmaker(make_engine(settings.service)),
        heartbeat_ttl=settings.reliability.heartbeat_ttl,
        max_lost=settings.reliability.max_lost,
        images_dir=settings.renders_dir,
    )


def close_manager(manager: JobManager) -> None:
    manager.redis.close()
    bind = manager.sessions.kw.get("bind")
    if bind is not None:
        bind.dispose()
