"""The render system's HTTP API: renders in, images out, and a health check.

Run it with `uvicorn renderfarm.core:create_app --factory`. Clients are made by `create_app` (they
connect lazily, on first use) and closed when the app shuts down. The schema is migrated at start-up
(and again on the first request that needs it, if Postgres was down at start-up).

Errors: the render system's exceptions are mapped to statuses here, and only here.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import redis
import redis.exceptions
import sqlalchemy.exc
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from renderfarm import migrate
from renderfarm.clients import make_engine, make_redis
from renderfarm.credits import EMAIL
from renderfarm.db import make_sessionmaker
from renderfarm.errors import (
    ImageNotReady,
    InsufficientCredits,
    NoSuchJob,
    RenderfarmError,
    UnknownUser,
)
from renderfarm.jobs import JobManager, JobView
from renderfarm.keys import JobState
from renderfarm.reaper import Reaper
from renderfarm.render import Quality
from renderfarm.scene import Scene
from renderfarm.settings import Reliability, ServiceSettings

log = logging.getLogger("renderfarm.api")
MAX_BODY = 1_000_000  # bytes: a scene is a few KB; anything this big is a mistake or an attack


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413: at once when its Content-Length says so, else as it
    streams in (a chunked body declares no length). The endpoint never sees a refused body."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit
        self.detail = f"request body too large: over {limit} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self.detail)  # FastAPI passes it on from its body reading
            return message

        await self.app(scope, counted, send)


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(pattern=EMAIL.pattern, max_length=320, description="the user's email")
    quality: Quality
    scene: Scene


class Accepted(BaseModel):
    mjid: str
    queue: str
    status: JobState


class JobOut(BaseModel):
    mjid: str
    state: JobState
    queue: str
    quality: str
    user: str
    attempts: int
    price: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    image_url: str | None

    @classmethod
    def of(cls, v: JobView) -> JobOut:
        return cls(
            mjid=v.mjid,
            state=v.state,
            queue=v.queue.value,
            quality=v.quality,
            user=v.user,
            attempts=v.attempts,
            price=v.price,
            created_at=v.created_at,
            started_at=v.started_at,
            finished_at=v.finished_at,
            error=v.error,
            image_url=f"/renders/{v.mjid}/image" if v.state is JobState.FINISHED else None,
        )


class Credits(BaseModel):
    user: str
    balance: int


def hd_price(environ: dict[str, str] | None = None) -> int:
    raw = (os.environ if environ is None else environ).get("RENDERFARM_HD_PRICE", "").strip() or "10"
    if not raw.isdigit():
        raise RenderfarmError(f"RENDERFARM_HD_PRICE={raw!r} is not a whole number of credits")
    return int(raw)


def renders_dir(environ: dict[str, str] | None = None) -> Path:
    return Path((os.environ if environ is None else environ).get("RENDERFARM_RENDERS_DIR", "/srv/renders"))


class Schema:
    """Runs the migrations once per process; retried on demand while Postgres is not there yet."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ready = False
        self._lock = threading.Lock()

    def ensure(self) -> None:
        if self.ready:
            return
        with self._lock:
            if not self.ready:
                migrate.upgrade(self.engine)
                self.ready = True


def get_manager(request: Request) -> JobManager:
    """The app's JobManager, once the schema is there (503 while Postgres is away)."""
    request.app.state.schema.ensure()
    manager: JobManager = request.app.state.manager
    return manager


Manager = Annotated[JobManager, Depends(get_manager)]


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
    schema = Schema(eng)
    reliability = Reliability.from_env()
    manager = JobManager(
        r,
        make_sessionmaker(eng),
        prices={"preview": 0, "hd": hd_price()},
        heartbeat_ttl=reliability.heartbeat_ttl,
        max_lost=reliability.max_lost,
    )
    images = renders_dir()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            schema.ensure()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            log.warning("database not reachable at start-up, will migrate on first use: %s", exc)
        reaper = Reaper(manager, reliability.reap_interval)
        reaper.start()
        try:
            yield
        finally:
            reaper.stop()
            r.close()
            eng.dispose()

    app = FastAPI(title="renderfarm", version="1", lifespan=lifespan)
    app.state.settings = cfg
    app.state.redis = r
    app.state.engine = eng
    app.state.schema = schema
    app.state.manager = manager

    app.add_middleware(BodyLimit, limit=MAX_BODY)

    @app.post("/renders", status_code=202, response_model=Accepted)
    def post_render(body: RenderRequest, jm: Manager) -> Accepted:
        """Queue a render. A fresh job goes to pq. HD costs credits (402 when too few, nothing charged)."""
        v = jm.post(body.user, body.quality.value, body.scene.model_dump(mode="json"))
        return Accepted(mjid=v.mjid, queue=v.queue.value, status=v.state)

    @app.get("/renders/{mjid}", response_model=JobOut)
    def get_render(mjid: str, jm: Manager) -> JobOut:
        """The job's state from mq: queued, started, finished or failed; the image URL once finished."""
        return JobOut.of(jm.get(mjid))

    @app.get("/renders/{mjid}/image", response_class=FileResponse, responses={200: {"content": {"image/png": {}}}})
    def get_image(mjid: str, jm: Manager) -> FileResponse:
        """The PNG once the job is finished (what the UI's "refresh" fetches); 409 before that."""
        v = jm.get(mjid)
        if v.state is not JobState.FINISHED or not v.image:
            raise ImageNotReady(mjid, v.state.value)
        path = images / Path(v.image).name
        if not path.is_file():
            raise ImageNotReady(mjid, f"{v.state.value}, but its image {path.name} is missing")
        return FileResponse(path, media_type="image/png", filename=f"{mjid}.png")

    @app.get("/users/{email}/credits", response_model=Credits)
    def get_credits(email: str, jm: Manager) -> Credits:
        return Credits(user=email, balance=jm.credits(email))

    app.add_api_route("/healthz", healthz, methods=["GET"])
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    statuses: list[tuple[type[Exception], int]] = [
        (NoSuchJob, 404),
        (UnknownUser, 404),
        (InsufficientCredits, 402),
        (ImageNotReady, 409),
        (RenderfarmError, 500),
    ]

    def handler_for(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(request: Request, exc: Exception) -> Response:
            body: dict[str, Any] = {"detail": str(exc)}
            if isinstance(exc, InsufficientCredits):
                body.update(balance=exc.balance, price=exc.price)
            if isinstance(exc, ImageNotReady):
                body.update(state=exc.state)
            return JSONResponse(body, status_code=status)

        return handle

    for exc_type, status in statuses:
        app.add_exception_handler(exc_type, handler_for(status))

    async def unavailable(request: Request, exc: Exception) -> Response:
        what = "redis" if isinstance(exc, redis.exceptions.RedisError) else "database"
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return JSONResponse(
            {"detail": f"{what} unavailable, try again shortly", "service": what, "error": first},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    for exc_type in (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
    ):
        app.add_exception_handler(exc_type, unavailable)

    async def invalid(request: Request, exc: Exception) -> Response:
        """422 naming each field, as FastAPI does; the values it echoes are made JSON-safe (NaN, infinity)."""
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)


def _json_safe(value: Any) -> Any:
    """value with every NaN or infinity replaced by its text: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


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
