"""The render system's HTTP API. For now: `GET /healthz`, which really talks to Redis and Postgres.

Run it with `uvicorn renderfarm.core:create_app --factory`. Clients are made by `create_app` (they
connect lazily, on first use) and closed when the app shuts down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from renderfarm.settings import ServiceSettings

CONNECT_TIMEOUT = 3.0  # seconds: a health check must answer quickly, even when a service is down


def make_redis(settings: ServiceSettings) -> redis.Redis:
    return redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password(),
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=CONNECT_TIMEOUT,
        # One quick retry, not redis-py's default of several with backoff: answering within the
        # health check's own timeout matters more than riding out a blip.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
    )


def make_engine(settings: ServiceSettings) -> Engine:
    return create_engine(
        settings.db_url(),
        pool_pre_ping=True,
        connect_args={"connect_timeout": int(CONNECT_TIMEOUT)},
    )


def create_app(
    settings: ServiceSettings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """Build the app. Settings default to the RENDERFARM_* environment, read now; clients may be passed in."""
    cfg = settings if settings is not None else ServiceSettings.from_env()
    r = redis_client if redis_client is not None else make_redis(cfg)
    eng = engine if engine is not None else make_engine(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            r.close()
            eng.dispose()

    app = FastAPI(title="renderfarm", lifespan=lifespan)
    app.state.settings = cfg
    app.state.redis = r
    app.state.engine = eng
    app.add_api_route("/healthz", healthz, methods=["GET"])
    return app


def healthz(request: Request) -> JSONResponse:
    """200 {"status": "ok", "redis": "ok", "db": "ok"}, or 503 naming what failed and why."""
    state = request.app.state
    checks = {
        "redis": _probe(lambda: state.redis.ping()),
        "db": _probe(lambda: _select_one(state.engine)),
    }
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ok else "unavailable", **checks}
    return JSONResponse(body, status_code=200 if ok else 503)


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).one()


def _probe(check: Callable[[], Any]) -> str:
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer: report it, never raise
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"error: {type(exc).__name__}: {first_line}"[:300]
    return "ok"
