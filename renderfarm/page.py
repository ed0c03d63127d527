"""The render page: a browser UI served by the API itself, and the routes it needs beyond the render API.

- `GET /`: the page (renderfarm/static/index.html), and `GET /static/...` its scripts, styles and the vendored
  three.js, every one with a Content-Security-Policy that allows no inline script (the page's one inline
  element, its import map, is allowed by its sha256) and nothing from another origin.
- `GET /examples`, `GET /examples/{name}`: the example scenes shipped in renderfarm/examples.
- `GET /users/{email}/renders`: the token's user's jobs, newest first, with their attempts, whether a failed
  one was refunded, the balance and the prices.
- `GET /users/{email}/renders/events`: Server-Sent Events, one `job` event each time one of the user's jobs
  changes. Pushed by Redis keyspace notifications on the jobs' ledger hashes (`renderfarm:mq:<mjid>`, class
  `Kh`: the Redis image's config enables them, and the stream turns them on with CONFIG SET if a Redis lacks
  them). A Redis that refuses CONFIG and sends none gets `ready` with `push: false`: the page then polls the
  list as it does while the stream is down. The stream also re-reads the user's unfinished jobs every few
  seconds, in case a notification was missed.

The API routes take the token as every other route does (`Authorization: Bearer`, renderfarm.api_deps's
`current_user`), so the page reads the event stream with fetch(), not EventSource (which sends no headers).
`create_app` includes `router`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import anyio
import redis.asyncio as aredis
import redis.exceptions
import sqlalchemy.exc
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field
from sqlalchemy import and_, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from renderfarm.api_deps import Manager, Me, answers, clip, first_line
from renderfarm.clients import CONNECT_TIMEOUT
from renderfarm.db import CreditEntry, Render, balance
from renderfarm.errors import RenderfarmError
from renderfarm.jobs import JobManager, JobView
from renderfarm.keys import PREFIX, CreditReason, JobState, is_mjid, mq_key
from renderfarm.keys import attempts_key as attempts_list_key
from renderfarm.settings import ServiceSettings
from renderfarm.tokens import Forbidden, TokenUser

log = logging.getLogger("renderfarm.page")

STATIC = Path(__file__).parent / "static"
LIST_DEFAULT, LIST_MAX = 20, 100  # jobs the list shows, and the most a client may ask for
NOTIFY_CLASSES = "Kh"  # keyspace events (K) of hash commands (h): every JobManager write to a job's ledger hash
FALLBACK_POLL = 5.0  # seconds: the user's unfinished jobs are re-read this often anyway (a missed notification)
SETTLE_TIMEOUT = 2.0  # seconds: how long an ending job's event waits for Postgres to record the end (and refund)
SETTLE_POLL = 0.02
OWNERS_KEPT = 4096  # per stream: which mjids are the user's (a notification names the job, not its user)
RETRY_MS = 2000  # the reconnection delay the stream suggests to its client
TICK = 0.5  # seconds: how often an idle stream looks whether the server is stopping


class ExampleScene(BaseModel):
    name: str = Field(description="what GET /examples/{name} takes")
    title: str
    objects: int


class AttemptOut(BaseModel):
    """One try at rendering a job, as the JobManager recorded it."""

    attempt: int
    queue: str
    worker: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    outcome: str | None = Field(default=None, description="finished, failed, preempted, lost, interrupted; none yet")
    error: str | None = None


class JobItem(BaseModel):
    """A job as the page shows it: its live state from Redis, its record (and refund) from Postgres."""

    mjid: str
    state: JobState
    queue: str
    quality: str
    price: int
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    worker: str | None = Field(default=None, description="the worker of the current (or last) attempt")
    error: str | None = None
    refunded: bool = Field(default=False, description="a failed HD render's price went back to the user")
    orphaned: int = Field(default=0, description="times it was queued again after a worker took it and vanished")
    attempts: list[AttemptOut] = Field(default_factory=list)
    image_url: str | None = None


class JobList(BaseModel):
    user: str
    balance: int
    prices: dict[str, int]
    jobs: list[JobItem]


class JobEvent(BaseModel):
    """The data of one `job` event: the job as it is now; the balance when the job is new or has ended."""

    job: JobItem
    balance: int | None = None
    sent_at: float = Field(description="server time (Unix seconds) the event was sent: for latency measurements")


# -- static files --------------------------------------------------------------------------------------------
IMPORT_MAP = re.compile(rb'<script type="importmap">(.*?)</script>', re.S)
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    "": "text/plain; charset=utf-8",  # LICENSE
    ".txt": "text/plain; charset=utf-8",
}


def content_security_policy(index_html: bytes) -> str:
    """The page's CSP: scripts only from this origin, plus the import map (an inline <script> by CSP's rules)
    by its hash; no inline script or style, no other origin, no framing, no form posting anywhere."""
    found = IMPORT_MAP.search(index_html)
    if found is None:
        raise RenderfarmError(f'{STATIC / "index.html"} has no <script type="importmap">: the page cannot load')
    digest = base64.b64encode(hashlib.sha256(found.group(1)).digest()).decode()
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' 'sha256-{digest}'",
            "style-src 'self'",
            "img-src 'self' blob:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


@dataclass(frozen=True)
class StaticFiles:
    """The page's files, found once: a request names one of these or gets 404, so no path from a URL ever
    reaches the file system. (Starlette's StaticFiles serves a folder; this also puts the security headers on
    every answer and serves index.html at `/`.)"""

    files: dict[str, Path]
    headers: dict[str, str]

    @classmethod
    def load(cls, root: Path = STATIC) -> StaticFiles:
        files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
        if "index.html" not in files:
            raise RenderfarmError(f"no index.html in {root}: the renderfarm package was installed without its page")
        headers = {
            "Content-Security-Policy": content_security_policy(files["index.html"].read_bytes()),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Cache-Control": "no-cache",  # revalidated by ETag: a new version of the page is seen at once
        }
        return cls(files=files, headers=headers)

    def response(self, name: str) -> Response:
        path = self.files.get(name)
        if path is None:
            return Response("not found", status_code=404, media_type="text/plain", headers=self.headers)
        media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        return FileResponse(path, media_type=media, headers=self.headers)


# -- the job list --------------------------------------------------------------------------------------------
def _decode(h: Any) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in dict(h).items()
    }


def attempts_of(raw: Iterable[str | bytes]) -> list[AttemptOut]:
    """The JobManager's attempt records (JSON), as the page shows them."""
    out = []
    for record in raw:
        data = json.loads(record)
        out.append(AttemptOut.model_validate({k: v for k, v in data.items() if k in AttemptOut.model_fields}))
    return out


def item_of_view(view: JobView, h: dict[str, str], attempts: list[AttemptOut], *, refunded: bool) -> JobItem:
    """A job from its ledger hash in Redis (`h`, of which `view` is the JobView)."""
    return JobItem(
        mjid=view.mjid,
        state=view.state,
        queue=view.queue.value,
        quality=view.quality,
        price=view.price,
        created_at=view.created_at,
        started_at=view.started_at,
        finished_at=view.finished_at,
        worker=h.get("worker") or (attempts[-1].worker if attempts else None),
        error=view.error,
        refunded=refunded,
        orphaned=int(h.get("orphaned") or 0),
        attempts=attempts,
        image_url=f"/renders/{view.mjid}/image" if view.state is JobState.FINISHED else None,
    )


def item_of_row(row: Any, attempts: list[AttemptOut]) -> JobItem:
    """A job Redis no longer has (its data was lost): what Postgres recorded of it."""
    states = {s.value for s in JobState}
    return JobItem(
        mjid=row.mjid,
        state=JobState(row.status) if row.status in states else JobState.FAILED,
        queue="?",
        quality=row.quality,
        price=row.price,
        created_at=row.created_at.isoformat(timespec="milliseconds"),
        finished_at=row.finished_at.isoformat(timespec="milliseconds") if row.finished_at else None,
        error=row.error,
        refunded=bool(row.refunded),
        attempts=attempts,
    )


def list_jobs(jm: JobManager, me: TokenUser, limit: int) -> JobList:
    """The user's newest `limit` jobs: Postgres has every job and its refund; Redis (one pipelined round trip
    for all of them) their live state and attempts. A job Redis has lost shows its Postgres record."""
    refund = CreditEntry.__table__.alias("refund")
    query = (
        select(
            Render.mjid,
            Render.quality,
            Render.price,
            Render.status,
            Render.error,
            Render.created_at,
            Render.finished_at,
            refund.c.id.is_not(None).label("refunded"),
        )
        .outerjoin(refund, and_(refund.c.mjid == Render.mjid, refund.c.reason == CreditReason.REFUND))
        .where(Render.user_id == me.user_id)
        .order_by(Render.created_at.desc(), Render.mjid.desc())
        .limit(limit)
    )
    with jm.sessions() as s:
        rows = s.execute(query).all()
        have = balance(s, me.user_id)
    with jm.redis.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.hgetall(mq_key(row.mjid))
            pipe.lrange(attempts_list_key(row.mjid), 0, -1)
        found = pipe.execute() if rows else []
    jobs = []
    for i, row in enumerate(rows):
        h, attempts = _decode(found[2 * i]), attempts_of(found[2 * i + 1])
        if h:
            jobs.append(item_of_view(JobView.from_hash(h), h, attempts, refunded=bool(row.refunded)))
        else:
            jobs.append(item_of_row(row, attempts))
    return JobList(user=me.email, balance=have, prices=dict(jm.prices), jobs=jobs)


def settled(sessions: sessionmaker[Session], mjid: str, user_id: int, *, final: bool) -> tuple[bool, int]:
    """(refunded, balance) for an event. For a job that has ended in Redis, waits (SETTLE_TIMEOUT at most) until
    Postgres has recorded the end too: the JobManager writes Redis first, then the render's row and the refund in
    one transaction, so the refund and the balance sent are the ones that follow the end."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    refund = CreditEntry.__table__.alias("refund")
    query = (
        select(Render.status, refund.c.id.is_not(None).label("refunded"))
        .outerjoin(refund, and_(refund.c.mjid == Render.mjid, refund.c.reason == CreditReason.REFUND))
        .where(Render.mjid == mjid)
    )
    while True:
        with sessions() as s:
            row = s.execute(query).first()
            have = balance(s, user_id)
        ended = row is not None and row.status in (JobState.FINISHED.value, JobState.FAILED.value)
        if not final or ended or time.monotonic() > deadline:
            return (bool(row.refunded) if row is not None else False), have
        time.sleep(SETTLE_POLL)


# -- the event stream ----------------------------------------------------------------------------------------
def make_async_redis(settings: ServiceSettings) -> aredis.Redis:
    """An asyncio client for the event streams' subscriptions (each stream holds one connection while open)."""
    return aredis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password(),
        socket_connect_timeout=CONNECT_TIMEOUT,
    )


async def ensure_notifications(r: aredis.Redis) -> bool:
    """Keyspace notifications for hashes on: True when they are (already, or now by CONFIG SET, keeping the
    classes already set). False when this Redis refuses CONFIG (a managed Redis): the stream then polls."""
    try:
        current = (await r.config_get("notify-keyspace-events")).get("notify-keyspace-events", "")
        flags = current.decode() if isinstance(current, bytes) else str(current)
        if "K" in flags and ("h" in flags or "A" in flags):
            return True
        wanted = flags + "".join(c for c in NOTIFY_CLASSES if c not in flags)
        await r.config_set("notify-keyspace-events", wanted)
        log.info("Redis keyspace notifications were %r, now %r (for the page's job events)", flags, wanted)
        return True
    except redis.exceptions.ResponseError as exc:
        log.warning("Redis refuses CONFIG (%s): the page's job events fall back to polling", exc)
        return False


class JobStream:
    """One client's stream: which notified jobs are its user's, and what it last sent of each."""

    def __init__(self, r: aredis.Redis, jm: JobManager, me: TokenUser) -> None:
        self.r, self.jm, self.me = r, jm, me
        self.owners: OrderedDict[str, bool] = OrderedDict()
        self.sent: dict[str, str] = {}  # mjid -> the JSON of the JobItem last sent
        self.open: set[str] = set()  # the user's jobs not yet finished or failed

    async def start(self) -> None:
        """The user's recent unfinished jobs are what the fallback re-reads; the rest are found as they change."""
        jobs = await run_in_threadpool(list_jobs, self.jm, self.me, LIST_MAX)
        for job in jobs.jobs:
            self._own(job.mjid, True)
            self.sent[job.mjid] = job.model_dump_json()
            if not job.state.final:
                self.open.add(job.mjid)

    def _own(self, mjid: str, mine: bool) -> None:
        self.owners[mjid] = mine
        self.owners.move_to_end(mjid)
        while len(self.owners) > OWNERS_KEPT:
            self.owners.popitem(last=False)

    async def is_mine(self, mjid: str) -> bool:
        if mjid not in self.owners:
            user = await self.r.hget(mq_key(mjid), "user")
            if user is None:
                return False  # not written yet: its next notification asks again
            self._own(mjid, (user.decode() if isinstance(user, bytes) else user) == self.me.email)
        return self.owners[mjid]

    async def changed(self, mjid: str) -> JobEvent | None:
        """The job's event if it is the user's and differs from what was last sent, else None."""
        if not await self.is_mine(mjid):
            return None
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(mq_key(mjid))
            pipe.lrange(attempts_list_key(mjid), 0, -1)
            raw_hash, raw_attempts = await pipe.execute()
        h = _decode(raw_hash)
        if not h:
            return None
        view = JobView.from_hash(h)
        new = mjid not in self.sent
        item = item_of_view(view, h, attempts_of(raw_attempts), refunded=False)
        have: int | None = None
        if new or view.state.final:
            refunded, have = await run_in_threadpool(
                settled, self.jm.sessions, mjid, self.me.user_id, final=view.state.final
            )
            item.refunded = refunded
        text = item.model_dump_json()
        if self.sent.get(mjid) == text:
            return None
        self.sent[mjid] = text
        if view.state.final:
            self.open.discard(mjid)
        else:
            self.open.add(mjid)
        return JobEvent(job=item, balance=have, sent_at=time.time())


def page_redis(app: Any) -> aredis.Redis:
    """The app's asyncio Redis client for the event streams, made on first use (it connects lazily too)."""
    client: aredis.Redis | None = getattr(app.state, "page_redis", None)
    if client is None:
        client = app.state.page_redis = make_async_redis(app.state.settings)
    return client


def on_stop_signals(notify: Callable[[], None]) -> Callable[[], None]:
    """Call `notify` (too) when the process gets SIGTERM or SIGINT, then the handler that was there (uvicorn's,
    which starts the shutdown). Returns what puts the old handlers back. Nothing outside the main thread (a
    test client's app), where signals cannot be handled.

    Why: uvicorn's graceful shutdown waits for every open response to end, and an event stream never ends by
    itself, so one open page would keep `docker compose stop` waiting until its timeout kills the server. The
    app hears of the shutdown only after the responses have ended (lifespan), hence the signal."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        notify()
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        else:  # the default (or ignore): put it back and let it act
            signal.signal(signum, before)
            signal.raise_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, before in previous.items():
            signal.signal(sig, before)

    return restore


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Ends the event streams when the server is told to stop; closes their Redis client when the app stops."""
    loop = asyncio.get_running_loop()
    stopping = app.state.page_stopping = asyncio.Event()

    def notify() -> None:
        loop.call_soon_threadsafe(stopping.set)  # from a signal handler: the loop may be busy

    restore = on_stop_signals(notify)
    try:
        yield
    finally:
        restore()
        client: aredis.Redis | None = getattr(app.state, "page_redis", None)
        if client is not None:
            await client.aclose()


router = APIRouter(lifespan=lifespan)
_static: StaticFiles | None = None


def static_files() -> StaticFiles:
    global _static
    if _static is None:
        _static = StaticFiles.load()
    return _static


@router.get("/", include_in_schema=False)
def index() -> Response:
    """The render page."""
    return static_files().response("index.html")


@router.get("/static/{name:path}", include_in_schema=False)
def static(name: str) -> Response:
    return static_files().response(name)


def _examples() -> dict[str, Path]:
    folder = Path(str(resources.files("renderfarm.examples")))
    return {p.stem: p for p in sorted(folder.glob("*.json"))}


@router.get("/examples", response_model=list[ExampleScene], responses=answers(401, 503))
def examples(me: Me) -> list[ExampleScene]:
    """The example scenes shipped with the render system (for the page's scene picker)."""
    out = []
    for name, path in _examples().items():
        data = json.loads(path.read_text(encoding="utf-8"))
        out.append(ExampleScene(name=name, title=name.replace("_", " "), objects=len(data.get("objects", []))))
    return out


@router.get("/examples/{name}", responses={200: {"content": {"application/json": {}}}, **answers(401, 404, 503)})
def example(name: str, me: Me) -> Response:
    """One example scene's JSON, as a client would POST it in `scene`."""
    path = _examples().get(name)
    if path is None:
        return Response(
            json.dumps({"detail": f"no example scene {clip(name)!r}: GET /examples lists them"}),
            status_code=404,
            media_type="application/json",
        )
    return Response(path.read_bytes(), media_type="application/json")


def same_user(email: str, me: Me) -> TokenUser:
    """The token's user, when `email` (from the path) is theirs; 403 otherwise. A dependency, so that the event
    stream refuses before it starts (an error inside a stream could no longer change its status)."""
    if email != me.email:
        raise Forbidden(f"this token is {me.email}'s: it cannot read the renders of {clip(email)}")
    return me


Owner = Annotated[TokenUser, Depends(same_user)]


@router.get("/users/{email}/renders", response_model=JobList, responses=answers(401, 403, 422, 503))
def user_renders(
    me: Owner,
    jm: Manager,
    limit: Annotated[int, Query(ge=1, le=LIST_MAX, description="how many of the newest jobs")] = LIST_DEFAULT,
) -> JobList:
    """The token's user's jobs, newest first: state, queue, attempts (worker, outcome), error and refund; with
    the balance and the prices. Another user's list is 403."""
    return list_jobs(jm, me, limit)


@router.get(
    "/users/{email}/renders/events",
    response_class=EventSourceResponse,
    responses=answers(401, 403, 503),
)
async def user_render_events(me: Owner, jm: Manager, request: Request) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: `ready` once subscribed (then a client re-reads the list, so nothing is missed), then
    a `job` event (data: JobEvent) each time one of the user's jobs changes, within milliseconds of the
    JobManager's write. The stream ends after `unavailable` (Redis or Postgres went away) or `closing` (the API
    is stopping): reconnect. A keep-alive comment comes every 15 s when nothing else does."""
    r = page_redis(request.app)
    stopping: asyncio.Event = getattr(request.app.state, "page_stopping", None) or asyncio.Event()
    db = request.app.state.settings.redis_db
    stream = JobStream(r, jm, me)
    pubsub = r.pubsub()
    try:
        notified = await ensure_notifications(r)
        await pubsub.psubscribe(f"__keyspace@{db}__:{PREFIX}:mq:*")
        await stream.start()
        yield ServerSentEvent(event="ready", data={"push": notified}, retry=RETRY_MS)
        last_poll = time.monotonic()
        while True:
            due: list[str] = []
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=TICK)
            if stopping.is_set():
                yield ServerSentEvent(event="closing", data={"reason": "the API is stopping"}, retry=RETRY_MS)
                return
            while message is not None:  # take every notification already here: one event per job
                channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
                mjid = channel.rpartition(":mq:")[2]
                if is_mjid(mjid) and mjid not in due:
                    due.append(mjid)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            if time.monotonic() - last_poll >= FALLBACK_POLL:
                last_poll = time.monotonic()
                due.extend(m for m in sorted(stream.open) if m not in due)
            for mjid in due:
                event = await stream.changed(mjid)
                if event is not None:
                    yield ServerSentEvent(event="job", data=event)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        log.warning("job events for %s: redis unavailable: %s", me.email, first_line(exc))
        yield ServerSentEvent(event="unavailable", data={"service": "redis"}, retry=RETRY_MS)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        log.warning("job events for %s: database unavailable: %s", me.email, first_line(exc))
        yield ServerSentEvent(event="unavailable", data={"service": "database"}, retry=RETRY_MS)
    finally:
        with anyio.CancelScope(shield=True):  # the client may be gone (the stream cancelled): still unsubscribe
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await pubsub.aclose()
