"""Redis and Postgres clients for the API and the worker, made from ServiceSettings when asked for."""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

from renderfarm.settings import ServiceSettings, WorkerAccess
from renderfarm.tls import redis_tls_options

CONNECT_TIMEOUT = 3.0  # seconds: a request or health check must answer quickly, even when a service is down
POOL_SIZE = 20  # Postgres connections a process keeps open, at most (only as many as it ever used at once)
POOL_OVERFLOW = 10  # more, opened for a burst and closed after it
PING_AFTER_IDLE = 1.0  # seconds a pooled Postgres connection may rest before it is pinged again on checkout


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
    """A worker's Redis connection with its own ACL user (rq's keys only: provisioner.redis_acl); over TLS trusting
    only the worker file's CA when it has one (an exposed stack: renderfarm.tls)."""
    tls = redis_tls_options(access.ca) if access.ca is not None else {}
    return redis.Redis(
        host=access.redis_host,
        port=access.redis_port,
        username=access.redis_user,
        password=access.redis_password,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
        **tls,
    )


def make_engine(settings: ServiceSettings) -> Engine:
    engine = create_engine(
        settings.db_url(),
        # Connections are opened as needed and up to POOL_SIZE kept. The API serves its routes from anyio's 40
        # threads: with SQLAlchemy's default of 5 kept (and 10 more opened and closed again), 32 concurrent requests
        # spent a quarter of the API's CPU opening connections (a DNS lookup of `db`, TCP, SCRAM) only to close them.
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        connect_args={"connect_timeout": int(CONNECT_TIMEOUT)},
    )
    ping_rested_connections(engine)
    return engine


def ping_rested_connections(engine: Engine) -> None:
    """Pessimistic disconnect handling, but only for a connection that rested in the pool: SQLAlchemy's
    pool_pre_ping pings on every checkout, a round trip that was a fifth of a busy API's time for POST /renders
    (two checkouts a request). A connection checked in less than PING_AFTER_IDLE seconds ago was just working; one
    that rested longer (Postgres may have restarted meanwhile) is pinged, and a dead one is replaced before the
    request sees it (SQLAlchemy's documented checkout-event recipe: DisconnectionError makes the pool retry with a
    new connection, and invalidates the others of that time)."""

    @event.listens_for(engine, "checkin")
    def rested_since(dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_rested(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("checked_in_at")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return  # a new connection, or one that was working a moment ago
        try:
            dbapi_connection.execute("SELECT 1")
            dbapi_connection.rollback()
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the connection is not usable
            raise DisconnectionError(f"a pooled Postgres connection no longer answers ({exc})") from exc
