"""Redis and Postgres clients for the API and the worker, made from ServiceSettings when asked for."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from renderfarm.settings import ServiceSettings, WorkerAccess

CONNECT_TIMEOUT = 3.0  # seconds: a request or health check must answer quickly, even when a service is down
POOL_SIZE = 20  # Postgres connections a process keeps open, at most (only as many as it ever used at once)
POOL_OVERFLOW = 10  # more, opened for a burst and closed after it


def make_redis(settings: ServiceSettings, *, socket_timeout: float | None = CONNECT_TIMEOUT) -> redis.Redis:
    return redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password(),
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=socket_timeout,
        # One quick retry, not redis-py's default of several with backoff: answering within the
        # caller's own timeout matters more than riding out a blip.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
    )


def make_worker_redis(access: WorkerAccess, *, socket_timeout: float | None = None) -> redis.Redis:
    """A worker's Redis connection with its own ACL user (rq's keys only: provisioner.redis_acl)."""
    return redis.Redis(
        host=access.redis_host,
        port=access.redis_port,
        username=access.redis_user,
        password=access.redis_password,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
    )


def make_engine(settings: ServiceSettings) -> Engine:
    return create_engine(
        settings.db_url(),
        pool_pre_ping=True,
        # Connections are opened as needed and up to POOL_SIZE kept. The API serves its routes from anyio's 40
        # threads: with SQLAlchemy's default of 5 kept (and 10 more opened and closed again), 32 concurrent requests
        # spent a quarter of the API's CPU opening connections (a DNS lookup of `db`, TCP, SCRAM) only to close them.
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        connect_args={"connect_timeout": int(CONNECT_TIMEOUT)},
    )
