"""The render system's HTTP API: renders in, images out, and a health check.

Run it with `uvicorn renderfarm.core:create_app --factory`. Clients are made by `create_app` (they
connect lazily, on first use) and closed when the app shuts down. The schema is migrated at start-up
(and again on the first request that needs it, if Postgres was down at start-up).

Every route but /healthz (and the schema) needs the token of the user whose job or balance it touches
(`Authorization: Bearer`, renderfarm.tokens); another user's job is the same 404 as an unknown id.

Errors: the render system's exceptions are mapped to statuses here, and only here. Each operation documents
every status it can answer, with its body model (renderfarm.api_deps.answers); an error body echoes at most a short
preview of what was sent, and a 503 names the service that is away, never its address. The routes' dependencies
(`Me`, `Manager`) are in renderfarm.api_deps too; the page's routes are renderfarm.page's `router`.
"""

from __future__ import annotations

import logging
import math
import reprlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import redis
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from renderfarm import migrate
from renderfarm.api_deps import ECHO, MAX_BODY, MAX_IMAGE, Manager, Me, answers, clip, first_line
from renderfarm.clients import make_engine, make_redis
from renderfarm.credits import EMAIL
from renderfarm.db import make_sessionmaker
from renderfarm.errors import (
    ImageNotReady,
    ImageRejected,
    InsufficientCredits,
    InvalidTransition,
    NoSuchJob,
    RenderfarmError,
    StaleAttempt,
    StaleRqJob,
    StorageUnavailable,
    UnknownUser,
    UnsupportedImage,
)
from renderfarm.jobs import JobManager, JobView
from renderfarm.keys import JobState
from renderfarm.page import router as page_router
from renderfarm.quality import Quality
from renderfarm.reaper import Reaper
from renderfarm.scene import Scene
from renderfarm.settings import FarmSettings
from renderfarm.tokens import Authenticator, Forbidden, TokenUser, Unauthenticated, WorkerAuthenticator
from renderfarm.worker_api import router as worker_router

log = logging.getLogger("renderfarm.api")
MAX_TILES = 16  # an HD image (1080 rows) in bands of 67 rows at the thinnest
MAX_FIELD_ERRORS = 20  # a 422 names at most this many fields (then says how many more there were)


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413: at once when its Content-Length says so, else as it
    streams in (a chunked body declares no length). The endpoint never sees a refused body."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY, image_limit: int = MAX_IMAGE) -> None:
        self.app = app
        self.limit = limit
        self.image_limit = image_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A worker's image upload (renderfarm.worker_api) may be larger than any other body.
        path = str(scope.get("path", ""))
        limit = self.image_limit if path.startswith("/worker/") and path.endswith("/image") else self.limit
        detail = f"request body too large: over {limit} bytes"
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, detail)  # FastAPI passes it on from its body reading
            return message

        await self.app(scope, counted, send)


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(
        default=None,
        pattern=EMAIL.pattern,
        max_length=320,
        description="optional: the token's user pays; if given it must be that user's email (else 403)",
    )
    quality: Quality
    scene: Scene
    tiles: int = Field(
        default=1,
        ge=1,
        le=MAX_TILES,
        description="HD only: split the render into this many horizontal tiles, each a job any worker takes; the"
        " last to finish stitches the image (charged once, refunded once if a tile fails for good)",
    )

    @model_validator(mode="after")
    def _tiles_are_hd(self) -> RenderRequest:
        if self.tiles > 1 and self.quality is not Quality.HD:
            raise ValueError(f"tiles apply to hd renders; a {self.quality.value} render is one tile")
        return self


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
    tiles: int = Field(default=1, description="how many tiles the render was split into (1: one job)")

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
            tiles=v.tiles,
        )


class Credits(BaseModel):
    user: str
    balance: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: str = Field(description='"ok", or "error: <kind>"')
    db: str = Field(description='"ok", or "error: <kind>"')


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


def create_app(
    settings: FarmSettings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """Build the app. Settings default to the RENDERFARM_* environment, read now; clients may be passed in."""
    farm = settings if settings is not None else FarmSettings.from_env()
    cfg = farm.service
    r = redis_client if redis_client is not None else make_redis(cfg)
    eng = engine if engine is not None else make_engine(cfg)
    schema = Schema(eng)
    reliability = farm.reliability
    manager = JobManager(
        r,
        make_sessionmaker(eng),
        prices={"preview": 0, "hd": farm.hd_price},
        heartbeat_ttl=reliability.heartbeat_ttl,
        max_lost=reliability.max_lost,
        images_dir=farm.renders_dir,
    )
    images = farm.renders_dir
    authenticator = Authenticator(make_sessionmaker(eng))
    worker_authenticator = WorkerAuthenticator(make_sessionmaker(eng))

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

    app = FastAPI(
        title="renderfarm",
        version="1",
        lifespan=lifespan,
        description="Every route but /healthz needs `Authorization: Bearer <token>` (see `invoke seed-credits`).",
    )
    app.state.settings = cfg
    app.state.redis = r
    app.state.engine = eng
    app.state.schema = schema
    app.state.manager = manager
    app.state.authenticator = authenticator
    app.state.worker_authenticator = worker_authenticator
    app.state.images = images

    app.add_middleware(BodyLimit, limit=MAX_BODY)

    @app.post(
        "/renders",
        status_code=202,
        response_model=Accepted,
        responses=answers(400, 401, 402, 403, 413, 422, 503),
    )
    def post_render(body: RenderRequest, me: Me, jm: Manager) -> Accepted:
        """Queue a render for the token's user. A fresh job goes to pq. HD costs credits (402 when too few,
        nothing charged). `user`, if given, must be the token's user (403 otherwise)."""
        if body.user is not None and body.user != me.email:
            raise Forbidden(f"this token is {me.email}'s: it cannot post renders for {clip(body.user)}")
        v = jm.post(me.email, body.quality.value, body.scene.model_dump(mode="json"), tiles=body.tiles)
        return Accepted(mjid=v.mjid, queue=v.queue.value, status=v.state)

    def own_job(jm: JobManager, mjid: str, me: TokenUser) -> JobView:
        """The job, if it is the token's user's; another user's job is `no such job`, as an unknown id is (ids
        cannot be probed)."""
        v = jm.get(mjid)
        if v.user != me.email:
            raise NoSuchJob(mjid)
        return v

    @app.get("/renders/{mjid}", response_model=JobOut, responses=answers(401, 404, 422, 503))
    def get_render(mjid: str, me: Me, jm: Manager) -> JobOut:
        """The job's state from mq: queued, started, finished or failed; the image URL once finished."""
        return JobOut.of(own_job(jm, mjid, me))

    @app.get(
        "/renders/{mjid}/image",
        response_class=FileResponse,
        responses={200: {"content": {"image/png": {}}}, **answers(401, 404, 409, 422, 503)},
    )
    def get_image(mjid: str, me: Me, jm: Manager) -> FileResponse:
        """The PNG once the job is finished (what the UI's "refresh" fetches); 409 before that."""
        v = own_job(jm, mjid, me)
        if v.state is not JobState.FINISHED or not v.image:
            raise ImageNotReady(mjid, v.state.value)
        path = images / Path(v.image).name
        if not path.is_file():
            raise ImageNotReady(mjid, f"{v.state.value}, but its image {path.name} is missing")
        return FileResponse(path, media_type="image/png", filename=f"{mjid}.png")

    @app.get("/users/{email}/credits", response_model=Credits, responses=answers(401, 403, 404, 422, 503))
    def get_credits(email: str, me: Me, jm: Manager) -> Credits:
        """The token's user's balance; another user's is 403."""
        if email != me.email:
            raise Forbidden(f"this token is {me.email}'s: it cannot read the credits of {clip(email)}")
        return Credits(user=email, balance=jm.credits(email))

    app.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        response_model=Health,
        responses={503: {"model": Health, "description": "Redis or Postgres does not answer"}},
    )
    _add_error_handlers(app)
    app.include_router(page_router)
    app.include_router(worker_router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    statuses: list[tuple[type[Exception], int]] = [
        (NoSuchJob, 404),
        (UnknownUser, 404),
        (InsufficientCredits, 402),
        (ImageNotReady, 409),
        (StaleAttempt, 409),
        (StaleRqJob, 409),
        (InvalidTransition, 409),
        (UnsupportedImage, 415),
        (ImageRejected, 422),
        (StorageUnavailable, 503),
        (Unauthenticated, 401),
        (Forbidden, 403),
        (RenderfarmError, 500),
    ]

    def handler_for(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(request: Request, exc: Exception) -> Response:
            body: dict[str, Any] = {"detail": str(exc)}
            headers: dict[str, str] = {}
            if isinstance(exc, NoSuchJob):
                body["detail"] = f"no such job: {clip(exc.mjid)}"  # the id comes from the URL: echo a little
            if isinstance(exc, InsufficientCredits):
                body.update(balance=exc.balance, price=exc.price)
            if isinstance(exc, ImageNotReady | StaleAttempt | StaleRqJob):
                body.update(state=exc.state)
            if isinstance(exc, InvalidTransition):
                body.update(state=exc.old)
            if isinstance(exc, ImageRejected) and not isinstance(exc, UnsupportedImage):
                body["detail"] = [{"loc": ["body"], "msg": clip(exc.reason, 4 * ECHO), "type": "image_rejected"}]
            if isinstance(exc, Unauthenticated):
                headers["WWW-Authenticate"] = "Bearer"
            if isinstance(exc, StorageUnavailable):
                body["service"] = "storage"
                headers["Retry-After"] = "2"
            return JSONResponse(body, status_code=status, headers=headers)

        return handle

    for exc_type, status in statuses:
        app.add_exception_handler(exc_type, handler_for(status))

    async def unavailable(request: Request, exc: Exception) -> Response:
        """503 naming the service, never its address: the driver's message (host, port) goes to the log."""
        service = "redis" if isinstance(exc, redis.exceptions.RedisError) else "database"
        log.warning("%s %s: %s unavailable: %s", request.method, request.url.path, service, first_line(exc))
        return JSONResponse(
            {"detail": f"{service} unavailable, try again shortly", "service": service},
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
        """422 in FastAPI's shape, naming each field; the values are only previewed (a 500 KB array is not
        sent back), and at most MAX_FIELD_ERRORS fields are listed."""
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": field_errors(exc.errors())}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)


def field_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's validation errors made safe to send back: `loc`, `msg` and `type` as they are (clipped),
    `input` as a short preview, and only the scalar limits of `ctx` (the pattern, the bound), which are the
    schema's, not the client's: a `ctx` value that is an exception or a structure is left out."""
    out: list[dict[str, Any]] = []
    for err in errors[:MAX_FIELD_ERRORS]:
        item: dict[str, Any] = {
            "loc": [x if isinstance(x, int) else clip(str(x)) for x in err.get("loc", ())],
            "msg": clip(str(err.get("msg", "")), 4 * ECHO),
            "type": clip(str(err.get("type", ""))),
        }
        if "input" in err:
            item["input"] = preview(err["input"])
        limits = {
            str(k): _json_safe(v)
            for k, v in (err.get("ctx") or {}).items()
            if isinstance(v, bool | int | float) or isinstance(v, str) and len(v) <= ECHO
        }
        if limits:
            item["ctx"] = limits
        out.append(item)
    if len(errors) > MAX_FIELD_ERRORS:
        more = len(errors) - MAX_FIELD_ERRORS
        out.append({"loc": ["body"], "msg": f"and {more} more invalid values", "type": "too_many_errors"})
    return out


def _make_preview() -> reprlib.Repr:
    shortened = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
    shortened.maxlevel = 2
    shortened.maxlist = shortened.maxtuple = shortened.maxdict = 4
    shortened.maxstring = shortened.maxother = ECHO
    return shortened


_preview = _make_preview()


def preview(value: Any) -> str:
    """At most ECHO characters of repr(value), "…" marking a cut. reprlib bounds the work too: a 500 KB
    list is never turned into a 500 KB string first."""
    return clip(_preview.repr(value))


def _json_safe(value: Any) -> Any:
    """value with every NaN or infinity replaced by its text: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def healthz(request: Request) -> JSONResponse:
    """200 {"status": "ok", "redis": "ok", "db": "ok"}, or 503 naming what failed (the kind of error only:
    the driver's message, which names hosts and ports, goes to the log)."""
    state = request.app.state
    checks = {
        "redis": _probe("redis", lambda: state.redis.ping()),
        "db": _probe("db", lambda: _select_one(state.engine)),
    }
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ok else "unavailable", **checks}
    return JSONResponse(body, status_code=200 if ok else 503)


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).one()


def _probe(name: str, check: Callable[[], Any]) -> str:
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer: report it, never raise
        log.warning("healthz: %s: %s: %s", name, type(exc).__name__, first_line(exc))
        return f"error: {type(exc).__name__}"
    return "ok"
