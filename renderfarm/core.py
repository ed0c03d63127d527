"""The render system's HTTP API: renders in, images out, and a health check.

Run it with `uvicorn renderfarm.core:create_app --factory`. Clients are made by `create_app` (they
connect lazily, on first use) and closed when the app shuts down. The schema is migrated at start-up
(and again on the first request that needs it, if Postgres was down at start-up).

Every route but /healthz (and the schema) needs the token of the user whose job or balance it touches
(`Authorization: Bearer`, renderfarm.tokens); another user's job is the same 404 as an unknown id.

Errors: the render system's exceptions are mapped to statuses here, and only here. Each operation documents
every status it can answer, with its body model (`_answers`); an error body echoes at most a short preview of
what was sent, and a 503 names the service that is away, never its address.
"""

from __future__ import annotations

import logging
import math
import os
import reprlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
import redis.exceptions
import sqlalchemy.exc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
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
from renderfarm.tokens import Authenticator, Forbidden, TokenUser, Unauthenticated

log = logging.getLogger("renderfarm.api")
MAX_BODY = 1_000_000  # bytes: a scene is a few KB; anything this big is a mistake or an attack
ECHO = 80  # characters: the most of a submitted value (or of a path id) an error answer repeats
MAX_FIELD_ERRORS = 20  # a 422 names at most this many fields (then says how many more there were)


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
    user: str | None = Field(
        default=None,
        pattern=EMAIL.pattern,
        max_length=320,
        description="optional: the token's user pays; if given it must be that user's email (else 403)",
    )
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


# -- error bodies: one model per kind of answer, so the schema tells a client what each status carries ---------
class ErrorOut(BaseModel):
    detail: str = Field(description="what was refused and why, with the command to run next where there is one")


class InsufficientOut(ErrorOut):
    balance: int
    price: int


class NotReadyOut(ErrorOut):
    state: str = Field(description="the job's state (the image exists only once it is finished)")


class UnavailableOut(ErrorOut):
    service: Literal["database", "redis"] = Field(description="which service does not answer")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where the value is: body, then field names and list indexes")
    msg: str
    type: str
    input: str | None = Field(default=None, description=f"a short preview of the value (at most {ECHO} characters)")
    ctx: dict[str, str | int | float | bool] | None = Field(default=None, description="the limit it broke")


class ValidationOut(BaseModel):
    detail: list[FieldError]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: str = Field(description='"ok", or "error: <kind>"')
    db: str = Field(description='"ok", or "error: <kind>"')


def _answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of an operation: each status it can answer besides its success, with its body."""
    retry = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
    known: dict[int, dict[str, Any]] = {
        400: {"model": ErrorOut, "description": "the body cannot be read (not UTF-8 text)"},
        401: {
            "model": ErrorOut,
            "description": "no API token, or an unknown one",
            "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
        },
        402: {"model": InsufficientOut, "description": "too few credits for an HD render: nothing queued or charged"},
        403: {"model": ErrorOut, "description": "the token belongs to another user"},
        404: {"model": ErrorOut, "description": "no such job (or not the token's user's), or no such user"},
        409: {"model": NotReadyOut, "description": "the job is not finished: no image yet"},
        413: {"model": ErrorOut, "description": f"request body over {MAX_BODY} bytes"},
        422: {"model": ValidationOut, "description": "invalid input: each field named, values shortened"},
        503: {"model": UnavailableOut, "description": "Redis or Postgres does not answer", "headers": retry},
    }
    # Error bodies are JSON whatever the operation's own media type (a PNG, an event stream): FastAPI files a
    # "model" under the route's media type, so each one is also named under application/json explicitly.
    return {
        status: {**known[status], "content": {"application/json": {"schema": _ref(known[status]["model"])}}}
        for status in statuses
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


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
bearer = HTTPBearer(auto_error=False, description="the user's API token, made by `invoke seed-credits`")


def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> TokenUser:
    """The user whose token the request carries: 401 without one (before any lookup), or with an unknown one."""
    token = credentials.credentials if credentials is not None else None
    if token:
        request.app.state.schema.ensure()
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.verify(token)


Me = Annotated[TokenUser, Depends(current_user)]


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
    authenticator = Authenticator(make_sessionmaker(eng))

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

    app.add_middleware(BodyLimit, limit=MAX_BODY)

    @app.post(
        "/renders",
        status_code=202,
        response_model=Accepted,
        responses=_answers(400, 401, 402, 403, 413, 422, 503),
    )
    def post_render(body: RenderRequest, me: Me, jm: Manager) -> Accepted:
        """Queue a render for the token's user. A fresh job goes to pq. HD costs credits (402 when too few,
        nothing charged). `user`, if given, must be the token's user (403 otherwise)."""
        if body.user is not None and body.user != me.email:
            raise Forbidden(f"this token is {me.email}'s: it cannot post renders for {_clip(body.user)}")
        v = jm.post(me.email, body.quality.value, body.scene.model_dump(mode="json"))
        return Accepted(mjid=v.mjid, queue=v.queue.value, status=v.state)

    def own_job(jm: JobManager, mjid: str, me: TokenUser) -> JobView:
        """The job, if it is the token's user's; another user's job is `no such job`, as an unknown id is (ids
        cannot be probed)."""
        v = jm.get(mjid)
        if v.user != me.email:
            raise NoSuchJob(mjid)
        return v

    @app.get("/renders/{mjid}", response_model=JobOut, responses=_answers(401, 404, 422, 503))
    def get_render(mjid: str, me: Me, jm: Manager) -> JobOut:
        """The job's state from mq: queued, started, finished or failed; the image URL once finished."""
        return JobOut.of(own_job(jm, mjid, me))

    @app.get(
        "/renders/{mjid}/image",
        response_class=FileResponse,
        responses={200: {"content": {"image/png": {}}}, **_answers(401, 404, 409, 422, 503)},
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

    @app.get("/users/{email}/credits", response_model=Credits, responses=_answers(401, 403, 404, 422, 503))
    def get_credits(email: str, me: Me, jm: Manager) -> Credits:
        """The token's user's balance; another user's is 403."""
        if email != me.email:
            raise Forbidden(f"this token is {me.email}'s: it cannot read the credits of {_clip(email)}")
        return Credits(user=email, balance=jm.credits(email))

    app.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        response_model=Health,
        responses={503: {"model": Health, "description": "Redis or Postgres does not answer"}},
    )
    _add_error_handlers(app)
    from renderfarm.page import router as page_router  # imported here: renderfarm.page imports this module

    app.include_router(page_router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    statuses: list[tuple[type[Exception], int]] = [
        (NoSuchJob, 404),
        (UnknownUser, 404),
        (InsufficientCredits, 402),
        (ImageNotReady, 409),
        (Unauthenticated, 401),
        (Forbidden, 403),
        (RenderfarmError, 500),
    ]

    def handler_for(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(request: Request, exc: Exception) -> Response:
            body: dict[str, Any] = {"detail": str(exc)}
            headers: dict[str, str] = {}
            if isinstance(exc, NoSuchJob):
                body["detail"] = f"no such job: {_clip(exc.mjid)}"  # the id comes from the URL: echo a little
            if isinstance(exc, InsufficientCredits):
                body.update(balance=exc.balance, price=exc.price)
            if isinstance(exc, ImageNotReady):
                body.update(state=exc.state)
            if isinstance(exc, Unauthenticated):
                headers["WWW-Authenticate"] = "Bearer"
            return JSONResponse(body, status_code=status, headers=headers)

        return handle

    for exc_type, status in statuses:
        app.add_exception_handler(exc_type, handler_for(status))

    async def unavailable(request: Request, exc: Exception) -> Response:
        """503 naming the service, never its address: the driver's message (host, port) goes to the log."""
        service = "redis" if isinstance(exc, redis.exceptions.RedisError) else "database"
        log.warning("%s %s: %s unavailable: %s", request.method, request.url.path, service, _first_line(exc))
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
            "loc": [x if isinstance(x, int) else _clip(str(x)) for x in err.get("loc", ())],
            "msg": _clip(str(err.get("msg", "")), 4 * ECHO),
            "type": _clip(str(err.get("type", ""))),
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
    return _clip(_preview.repr(value))


def _clip(text: str, limit: int = ECHO) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


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
        log.warning("healthz: %s: %s: %s", name, type(exc).__name__, _first_line(exc))
        return f"error: {type(exc).__name__}"
    return "ok"
