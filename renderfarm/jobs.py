"""The JobManager ("render-manager"): the ledger `mq` in Redis, the rq queues `pq`/`sq`, and Postgres.

Every status lookup goes through `mq`. A fresh job goes to `pq`; a job retried after its preemptible
worker was lost goes to `sq`. Credits are charged in the same Postgres transaction that records the
render, exactly once (a unique key on (mjid, reason)), and refunded once when the job finally fails.
Each transition of a job (started, heartbeat, finished, failed, retried on sq) is one Redis Lua script
(renderfarm.ledger_scripts): its checks and all its writes in one atomic server-side step.
Jobs whose worker is gone are moved on by renderfarm.reaper, through the transitions defined here.

An HD job may be posted in tiles (renderfarm.tiles): the job the user sees is then a parent that is never on a queue,
and each tile a job of its own with the parent's mjid in its hash, queued, started, retried and failed like any job.
The parent is started by its first tile, finished by its last (which stitches the image) and failed, and refunded
once, by the first tile that fails for good.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq import Queue
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from renderfarm.db import AUTOCOMMIT, CreditEntry, Render, User, balance, find_user, utcnow
from renderfarm.errors import (
    InsufficientCredits,
    InvalidTransition,
    NoSuchJob,
    RenderfarmError,
    StaleAttempt,
    StaleRqJob,
    UnknownUser,
)
from renderfarm.images import stitch
from renderfarm.keys import (
    CreditReason,
    JobState,
    Outcome,
    QueueName,
    attempts_key,
    claim_key,
    heartbeat_key,
    image_name,
    is_mjid,
    limbo_key,
    mq_index_key,
    mq_key,
    queued_key,
    scene_key,
    started_key,
    tiles_done_key,
)
from renderfarm.ledger_scripts import LedgerScripts, Refusal
from renderfarm.quality import profile_for
from renderfarm.settings import FarmSettings, Reliability

log = logging.getLogger("renderfarm.jobs")
RENDER_FUNC = "renderfarm.worker.job.render_job"  # imported by the worker only: the API never loads Blender code
JOB_TIMEOUT = 3600
# The Postgres side as plain SQL on db's tables, each step one statement run on its own (autocommit: no BEGIN or
# COMMIT round trips): a work horse is forked for each job, and the ORM's paths cost a fresh fork several
# milliseconds more than this.
RENDERS, CREDITS, USERS = Render.__tablename__, CreditEntry.__tablename__, User.__tablename__
# A free render: recorded for the user named by email (no row: no such user).
POST_FREE = text(
    f"INSERT INTO {RENDERS} (mjid, user_id, quality, price, status, created_at)"
    f" SELECT :mjid, id, :quality, 0, :status, :now FROM {USERS} WHERE email = :email RETURNING user_id"
)
# A paid render, in a transaction: the user's row locked first (LOCK_USER; no row: no such user), so that two
# posts of one user are checked one after the other; then one statement reads the balance, a statement of its
# own so that it sees a charge committed while it waited for the lock, and records the render and its charge
# only when the balance covers the price (it answers the balance either way).
LOCK_USER = text(f"SELECT id FROM {USERS} WHERE email = :email FOR UPDATE")
POST_PAID = text(
    f"WITH have AS (SELECT coalesce(sum(amount), 0) AS credits FROM {CREDITS} WHERE user_id = :user_id),"
    f" render AS (INSERT INTO {RENDERS} (mjid, user_id, quality, price, status, created_at)"
    "  SELECT :mjid, :user_id, :quality, :price, :status, :now FROM have WHERE credits >= :price"
    "  RETURNING user_id, price),"
    f" charge AS (INSERT INTO {CREDITS} (user_id, amount, reason, mjid, created_at)"
    "  SELECT user_id, -price, :charge, :mjid, :now FROM render)"
    " SELECT credits FROM have"
)
# The end of a job: the render's row updated (which locks it, as SELECT ... FOR UPDATE would) and, for a failed
# paid render, its refund, once (the unique key on (mjid, reason)), in one statement.
END_RENDER = text(
    f"WITH ended AS (UPDATE {RENDERS} SET status = :status, error = :error, finished_at = :finished_at"
    "  WHERE mjid = :mjid RETURNING user_id, price)"
    f" INSERT INTO {CREDITS} (user_id, amount, reason, mjid, created_at)"
    " SELECT user_id, price, :refund_reason, :mjid, :finished_at FROM ended WHERE :refund AND price > 0"
    " ON CONFLICT ON CONSTRAINT uq_credit_entries_mjid_reason DO NOTHING"
)


def ledger_time() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class JobView:
    mjid: str
    state: JobState
    queue: QueueName
    quality: str
    user: str
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    image: str | None
    price: int
    credential: str | None = None  # the worker credential that started the current attempt through the API
    tiles: int = 1  # a parent: how many tiles it was split into; a tile: how many its parent has
    parent: str | None = None  # a tile: the job it is a tile of
    tile: int | None = None  # a tile: its index, 0 at the top

    @property
    def tile_of(self) -> tuple[int, int] | None:
        """(index, count) for a tile, None for any other job."""
        return None if self.tile is None else (self.tile, self.tiles)

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> JobView:
        return cls(
            mjid=h["mjid"],
            state=JobState(h["state"]),
            queue=QueueName(h["queue"]),
            quality=h["quality"],
            user=h["user"],
            attempts=int(h.get("attempts", 0)),
            created_at=h["created_at"],
            started_at=h.get("started_at") or None,
            finished_at=h.get("finished_at") or None,
            error=h.get("error") or None,
            image=h.get("image") or None,
            price=int(h.get("price", 0)),
            credential=h.get("credential") or None,
            tiles=int(h.get("tiles", 1)),
            parent=h.get("parent") or None,
            tile=int(h["tile"]) if "tile" in h else None,
        )


class JobManager:
    def __init__(
        self,
        redis: Redis,
        sessions: sessionmaker[Session],
        *,
        prices: dict[str, int] | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        heartbeat_ttl: float = Reliability.heartbeat_ttl,
        max_lost: int = Reliability.max_lost,
        job_func: str = RENDER_FUNC,
        images_dir: Path | None = None,
    ) -> None:
        """job_func: the dotted path of the function rq runs for a job (given the mjid); the render job
        unless a caller (the benchmark's queue pair) wants the JobManager side with another renderer.
        images_dir: the renders folder, where the last tile of a tiled job stitches the job's image (None: this
        manager finishes no tile)."""
        self.redis = redis
        self.sessions = sessions
        self.prices = prices if prices is not None else {"preview": 0, "hd": FarmSettings.hd_price}
        self.new_id = new_id
        self.heartbeat_ttl = heartbeat_ttl
        self.max_lost = max_lost
        self.job_func = job_func
        self.images_dir = images_dir
        # (mjid, scene JSON) as the last mark_started read it, in the same step: what its caller asks for next
        self._started_scene: tuple[str, str] | None = None

    # -- reading -------------------------------------------------------------------------------------------
    # Every read checks the id first: an mjid from outside (a URL) never becomes a Redis key unless it is one
    # JobManager could have made (`<mjid>:scene` would otherwise name the job's scene string).
    def get(self, mjid: str) -> JobView:
        return JobView.from_hash(self._hash(self._checked(mjid)))

    def scene(self, mjid: str) -> dict[str, Any]:
        """The job's scene. Right after mark_started, the one its script read (a scene never changes once posted)."""
        key = scene_key(self._checked(mjid))
        kept, self._started_scene = self._started_scene, None
        raw = kept[1] if kept is not None and kept[0] == mjid else self.redis.get(key)
        if raw is None:
            raise NoSuchJob(mjid)
        data: dict[str, Any] = json.loads(raw)
        return data

    def attempts(self, mjid: str) -> list[dict[str, Any]]:
        key = attempts_key(self._checked(mjid))
        return [json.loads(x) for x in decode_list(self.redis.lrange(key, 0, -1))]

    def credits(self, email: str) -> int:
        with self.sessions() as s:
            user = find_user(s, email)
            if user is None:
                raise UnknownUser(email)
            return balance(s, user.id)

    # -- posting -------------------------------------------------------------------------------------------
    def post(self, email: str, quality: str, scene: dict[str, Any], *, tiles: int = 1) -> JobView:
        """Check user and credits, record and charge in Postgres, then put the job in mq and on pq; with `tiles` > 1,
        the job in mq and each of its tiles, a job of its own, in mq and on pq (the job is charged, the tiles not)."""
        price = self.prices[quality]
        mjid = self.new_id()
        children = [self.new_id() for _ in range(tiles)] if tiles > 1 else []
        for made in (mjid, *children):
            if not is_mjid(made):  # a caller's new_id must make ids the reads accept
                raise RenderfarmError(f"new_id made {made!r}, which is not an mjid (32 lowercase hex digits)")
        now = ledger_time()
        row = {"mjid": mjid, "email": email, "quality": quality, "status": JobState.QUEUED.value, "now": utcnow()}
        if not price:
            with self.sessions() as s:
                if s.connection(execution_options=AUTOCOMMIT).execute(POST_FREE, row).first() is None:
                    raise UnknownUser(email)
        else:
            with self.sessions.begin() as s:
                user_id = s.scalar(LOCK_USER, {"email": email})
                if user_id is None:
                    raise UnknownUser(email)
                paid = {**row, "user_id": user_id, "price": price, "charge": CreditReason.CHARGE.value}
                have = int(s.scalar(POST_PAID, paid) or 0)
                if have < price:
                    raise InsufficientCredits(email, have, price)
        fields: dict[Any, Any] = {
            "mjid": mjid,
            "state": JobState.QUEUED.value,
            "queue": QueueName.PREEMPTIBLE.value,
            "quality": quality,
            "user": email,
            "attempts": "0",
            "price": str(price),
            "created_at": now,
        }
        if children:
            fields["tiles"] = str(tiles)
            fields["children"] = ",".join(children)
        scene_json = json.dumps(scene, separators=(",", ":"))
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.multi()  # explicit MULTI first: rq's enqueue joins the transaction we opened
                pipe.hset(mq_key(mjid), mapping=fields)
                pipe.set(scene_key(mjid), scene_json)
                pipe.zadd(mq_index_key(), {mjid: datetime.now(UTC).timestamp()})
                for index, child in enumerate(children):
                    tile = {**fields, "mjid": child, "price": "0", "parent": mjid, "tile": str(index)}
                    tile.pop("children", None)
                    pipe.hset(mq_key(child), mapping=tile)
                    pipe.set(scene_key(child), scene_json)
                    self.enqueue(QueueName.PREEMPTIBLE, child, job_id=child, pipe=pipe)
                if not children:
                    self.enqueue(QueueName.PREEMPTIBLE, mjid, job_id=mjid, pipe=pipe)
                pipe.execute()
        except Exception:
            # Postgres has the render and the charge but Redis does not: undo the charge, keep the record.
            self.record_end(mjid, JobState.FAILED, "could not queue the job (Redis unavailable)")
            raise
        return JobView.from_hash(fields)  # what the transaction wrote: no second read

    def enqueue(self, queue: QueueName, mjid: str, *, job_id: str, pipe: Pipeline) -> None:
        """Put the job on `queue` as the rq job `job_id`, in the caller's transaction (`pipe`, after its MULTI).
        The job's hash says which rq job carries the mjid now, and since when: what the orphan rescue checks."""
        pipe.hset(mq_key(mjid), mapping={"rq_job": job_id, "queued_at": str(time.time())})
        pipe.sadd(queued_key(), mjid)
        self._enqueue_rq_job(queue, mjid, job_id=job_id, pipe=pipe)

    def _enqueue_rq_job(self, queue: QueueName, mjid: str, *, job_id: str, pipe: Pipeline) -> None:
        """rq's own enqueue of the rq job `job_id`, which runs job_func on mjid, in the caller's transaction."""
        Queue(queue.value, connection=self.redis).enqueue_call(
            self.job_func,
            args=(mjid,),
            job_id=job_id,
            timeout=JOB_TIMEOUT,
            result_ttl=86400,
            failure_ttl=7 * 86400,
            pipeline=pipe,
        )

    # -- worker side ---------------------------------------------------------------------------------------
    # Every change after "started" names the attempt it belongs to (a fencing token): a worker that was
    # presumed lost and comes back cannot finish, fail or requeue a job that has moved on without it.
    # Each transition is one Lua script (renderfarm.ledger_scripts): the checks and every write at once, on the
    # server, in one round trip.
    def mark_started(
        self,
        mjid: str,
        worker: str,
        *,
        rq_job: str,
        heartbeat_ttl: float | None = None,
        credential: str | None = None,
    ) -> JobView:
        """The job's next attempt begins on `worker`. Fenced by `rq_job`, the rq job that brought the mjid to the
        worker: when the job was queued again meanwhile (the orphan rescue made another rq job carry it), this
        raises StaleRqJob and changes nothing, so a job is never started through two rq jobs. `credential`: the
        worker credential that started it through the API (renderfarm.worker_api); only that one may report on
        this attempt (JobView.credential)."""
        ttl = heartbeat_ttl or self.heartbeat_ttl
        keys = [
            mq_key(mjid),
            attempts_key(mjid),
            heartbeat_key(mjid),
            started_key(),
            queued_key(),
            limbo_key(mjid),
            scene_key(mjid),
        ]
        args: list[str | int] = [mjid, rq_job, worker, credential or "", ledger_time(), int(ttl * 1000)]
        scene, *job = self._answer(mjid, JobState.STARTED, self._scripts.start(keys, args), rq_job=rq_job)
        self._started_scene = (mjid, scene) if scene else None
        view = JobView.from_hash(pairs(job))
        if view.parent is not None:
            self._scripts.tile_started([mq_key(view.parent)], [ledger_time()])
        return view

    def claim(self, mjid: str, rq_job: str, *, ttl: float | None = None) -> None:
        """A worker has taken `rq_job` (which carries mjid) off its queue and is getting ready to start it (its
        warm Blender may take a while): the orphan rescue leaves the job alone while this claim lives. The
        worker refreshes it every third of its TTL (renderfarm.worker.liveness.Claim) until the job is done with; a
        worker that dies stops refreshing, and the claim expires after `heartbeat_ttl`. It is never deleted:
        once the job has started, or is carried by another rq job, an old claim no longer matters."""
        self.redis.set(claim_key(mjid), rq_job, px=int((ttl or self.heartbeat_ttl) * 1000))

    def heartbeat(self, mjid: str, attempt: int, *, ttl: float | None = None) -> bool:
        """Keep the job's heartbeat alive; False when the attempt is no longer the job's current one."""
        ttl_ms = int((ttl or self.heartbeat_ttl) * 1000)
        return bool(self._scripts.heartbeat([mq_key(mjid), heartbeat_key(mjid)], [attempt, ttl_ms]))

    def mark_finished(self, mjid: str, image: str, *, attempt: int) -> JobView:
        keys = [mq_key(mjid), attempts_key(mjid), heartbeat_key(mjid), started_key()]
        reply = self._scripts.finish(keys, [mjid, attempt, ledger_time(), image, Outcome.FINISHED.value])
        view = JobView.from_hash(pairs(self._answer(mjid, JobState.FINISHED, reply, attempt=attempt)))
        if view.parent is not None:
            self._tile_finished(view)
        else:
            self.record_end(mjid, JobState.FINISHED, None)
        return view

    def mark_failed(
        self, mjid: str, error: str, *, attempt: int | None = None, outcome: str = Outcome.FAILED
    ) -> JobView:
        """The job fails (refunded if it was paid for); a started one's attempt ends with `outcome` (an Outcome)."""
        ended = Outcome(outcome)
        keys = [mq_key(mjid), attempts_key(mjid), heartbeat_key(mjid), started_key(), queued_key()]
        fence = "" if attempt is None else attempt
        reply = self._scripts.fail(keys, [mjid, fence, ledger_time(), error, ended.value])
        view = JobView.from_hash(pairs(self._answer(mjid, JobState.FAILED, reply, attempt=attempt)))
        self._ended_failed(view, error)
        return view

    def retry_on_standard(self, mjid: str, reason: str, *, attempt: int, error: str | None = None) -> JobView:
        """A started job whose worker was preempted, interrupted or lost goes back to queued, on sq, as a
        new rq job. `reason` is how the attempt ended (an Outcome). Losses without notice (Outcome.counted:
        lost, interrupted) are counted: past max_lost the job fails instead, and an HD charge is refunded.
        `error` (what interrupted it, e.g. the Blender that was killed) is kept in the attempt's record, and in
        the job's error when it fails. One step: the checks, the ledger's writes and rq's enqueue of the new rq
        job (made by rq here, run by the script only once the checks pass)."""
        ended = Outcome(reason)
        queue, job_id = QueueName.STANDARD, f"{mjid}-{attempt + 1}"
        keys = [mq_key(mjid), attempts_key(mjid), heartbeat_key(mjid), started_key(), queued_key()]
        args: list[Any] = [
            mjid,
            attempt,
            ledger_time(),
            ended.value,
            "1" if ended.counted else "0",
            self.max_lost,
            error or "",
            queue.value,
            job_id,
            str(time.time()),
        ]
        for command in self._rq_enqueue(queue, mjid, job_id=job_id):
            args += [len(command), *command]
        view = JobView.from_hash(
            pairs(self._answer(mjid, JobState.QUEUED, self._scripts.retry(keys, args), attempt=attempt))
        )
        if view.state is JobState.FAILED:  # lost more than max_lost times
            self._ended_failed(view, view.error or "")
        return view

    def warm_statements(self) -> None:
        """Run the worker side's SQL once against no row (an UPDATE matching nothing), so that SQLAlchemy has
        it compiled: a worker does this before it forks work horses, which then inherit it compiled."""
        self.record_end("", JobState.FINISHED, None)

    # -- tiles ---------------------------------------------------------------------------------------------
    def _tile_finished(self, view: JobView) -> None:
        """A tile finished: counted in its parent; the tile that completes the count stitches the parent's image and
        finishes it. A stitch that cannot be made fails the parent (refunded once)."""
        assert view.parent is not None and view.tile is not None
        parent = view.parent
        done = int(self._scripts.tile_finished([mq_key(parent), tiles_done_key(parent)], [view.tile]))
        if done < view.tiles:  # more to come, or the parent has ended (-1)
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for child in self.children(parent):
                pipe.hget(mq_key(child), "image")
            parts = [str(x) for x in decode_list(pipe.execute()) if x]
        name = image_name(parent, 1)
        try:
            if self.images_dir is None:
                raise RenderfarmError("this JobManager has no renders folder (images_dir) to stitch into")
            if len(parts) != view.tiles:
                raise RenderfarmError(f"{len(parts)} of its {view.tiles} tiles have an image")
            stitch(self.images_dir, parts, name, profile_for(view.quality).size)
        except RenderfarmError as exc:
            log.error("job %s: cannot stitch its %d tiles: %s", parent, view.tiles, exc)
            self._end_parent(parent, JobState.FAILED, error=f"the tiles could not be stitched: {exc}")
            return
        self._end_parent(parent, JobState.FINISHED, image=name)

    def _ended_failed(self, view: JobView, error: str) -> None:
        """A job failed for good: its render's row ended (and refunded); for a tile, its parent's, once."""
        if view.parent is None:
            self.record_end(view.mjid, JobState.FAILED, error)
            return
        which = f"tile {(view.tile or 0) + 1} of {view.tiles} ({view.mjid})"
        self._end_parent(view.parent, JobState.FAILED, error=f"{which} failed: {error}")

    def _end_parent(self, parent: str, state: JobState, *, image: str = "", error: str = "") -> None:
        """The tiled job ends (finished with its stitched image, or failed): in mq and in Postgres, once."""
        if int(self._scripts.parent_end([mq_key(parent)], [state.value, ledger_time(), image, error])):
            self.record_end(parent, state, error or None)

    def children(self, parent: str) -> list[str]:
        """A tiled job's tiles, top to bottom (each a job of its own); [] for a job that is not tiled."""
        raw = self.redis.hget(mq_key(self._checked(parent)), "children")
        text = raw.decode() if isinstance(raw, bytes) else raw
        return text.split(",") if text else []

    # -- internals -----------------------------------------------------------------------------------------
    @functools.cached_property
    def _scripts(self) -> LedgerScripts:
        return LedgerScripts.register(self.redis)

    def _rq_enqueue(self, queue: QueueName, mjid: str, *, job_id: str) -> list[tuple[Any, ...]]:
        """The commands rq's own enqueue of the rq job `job_id` (carrying mjid) on `queue` sends, as `enqueue`
        makes them, recorded on a transaction that is never sent: a script runs them once its checks pass."""
        with self.redis.pipeline(transaction=True) as recorder:
            recorder.multi()
            self._enqueue_rq_job(queue, mjid, job_id=job_id, pipe=recorder)
            return [args for args, _options in recorder.command_stack]

    def _answer(
        self,
        mjid: str,
        new: JobState,
        reply: Any,
        *,
        attempt: int | None = None,
        rq_job: str | None = None,
    ) -> list[str]:
        """What a transition script answered after `ok` (the job's hash as it left it, flat), or the exception for
        its refusal (the script changed nothing then): NoSuchJob, StaleRqJob (with the rq job that carries the job
        now), StaleAttempt (with the job's current attempt and state) or InvalidTransition."""
        answer = decode_list(reply)
        match Refusal(answer[0]):
            case Refusal.OK:
                return answer[1:]
            case Refusal.NO_SUCH_JOB:
                raise NoSuchJob(mjid)
            case Refusal.STALE_RQ_JOB:
                raise StaleRqJob(mjid, rq_job or "", answer[1])
            case Refusal.STALE_ATTEMPT:
                raise StaleAttempt(mjid, attempt or 0, int(answer[1]), answer[2])
            case Refusal.INVALID_TRANSITION:
                raise InvalidTransition(mjid, answer[1], new.value)

    def record_end(self, mjid: str, state: JobState, error: str | None) -> None:
        """Record the end in the render's row and, for a failed paid render, refund it once: one statement."""
        values = {
            "status": state.value,
            "error": error,
            "finished_at": datetime.now(UTC),
            "mjid": mjid,
            "refund": state is JobState.FAILED,
            "refund_reason": CreditReason.REFUND.value,
        }
        with self.sessions() as s:
            s.connection(execution_options=AUTOCOMMIT).execute(END_RENDER, values)

    @staticmethod
    def _checked(mjid: str) -> str:
        if not is_mjid(mjid):
            raise NoSuchJob(mjid)
        return mjid

    def _hash(self, mjid: str) -> dict[str, str]:
        h = decode_hash(self.redis.hgetall(mq_key(mjid)))
        if not h:
            raise NoSuchJob(mjid)
        return h


def decode_hash(h: Any) -> dict[str, str]:
    """A Redis hash as text (the JobManager's client answers bytes)."""
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in dict(h).items()
    }


def pairs(flat: list[str]) -> dict[str, str]:
    """A hash as HGETALL answers it (field, value, field, value...) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def decode_list(items: Any) -> list[Any]:
    """Redis replies as text: each bytes item decoded, None and the rest as they are."""
    return [x.decode() if isinstance(x, bytes) else x for x in items]
