"""The JobManager ("render-manager"): the ledger `mq` in Redis, the rq queues `pq`/`sq`, and Postgres.

Every status lookup goes through `mq`. A fresh job goes to `pq`; a job retried after its preemptible
worker was lost goes to `sq`. Credits are charged in the same Postgres transaction that records the
render, exactly once (a unique key on (mjid, reason)), and refunded once when the job finally fails.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq import Queue
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from renderfarm.db import CreditEntry, Render, User, balance, find_user
from renderfarm.errors import (
    InsufficientCredits,
    InvalidTransition,
    NoSuchJob,
    RenderfarmError,
    StaleAttempt,
    StaleRqJob,
    UnknownUser,
)
from renderfarm.keys import (
    JobState,
    QueueName,
    attempts_key,
    can_move,
    claim_key,
    heartbeat_key,
    is_mjid,
    limbo_key,
    mq_index_key,
    mq_key,
    queued_key,
    scene_key,
    started_key,
)

RENDER_FUNC = "renderfarm.work.render_job"  # imported by the worker only: the API never loads Blender code
JOB_TIMEOUT = 3600
ORPHAN_LIMIT = 3  # a job taken off its queue and never started is rescued this many times, then fails (refunded)
# The statement every job's end runs, as plain SQL on db.Render's table: a work horse is forked for each
# job, and the ORM's bulk-update path costs a fresh fork several milliseconds more than this.
FINISH_RENDER = text(
    f"UPDATE {Render.__tablename__} SET status = :status, error = :error, finished_at = :finished_at"
    " WHERE mjid = :mjid RETURNING user_id, price"
)


def _now() -> str:
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
        )


class JobManager:
    def __init__(
        self,
        redis: Redis,
        sessions: sessionmaker[Session],
        *,
        prices: dict[str, int] | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        heartbeat_ttl: float = 20.0,
        max_lost: int = 2,
        job_func: str = RENDER_FUNC,
    ) -> None:
        """job_func: the dotted path of the function rq runs for a job (given the mjid); the render job
        unless a caller (the benchmark's queue pair) wants the JobManager side with another renderer."""
        self.redis = redis
        self.sessions = sessions
        self.prices = prices if prices is not None else {"preview": 0, "hd": 10}
        self.new_id = new_id
        self.heartbeat_ttl = heartbeat_ttl
        self.max_lost = max_lost
        self.job_func = job_func

    # -- reading -------------------------------------------------------------------------------------------
    # Every read checks the id first: an mjid from outside (a URL) never becomes a Redis key unless it is one
    # JobManager could have made (`<mjid>:scene` would otherwise name the job's scene string).
    def get(self, mjid: str) -> JobView:
        return JobView.from_hash(self._hash(self._checked(mjid)))

    def scene(self, mjid: str) -> dict[str, Any]:
        key = scene_key(self._checked(mjid))
        raw = self.redis.get(key)
        if raw is None:
            raise NoSuchJob(mjid)
        data: dict[str, Any] = json.loads(raw)
        return data

    def attempts(self, mjid: str) -> list[dict[str, Any]]:
        key = attempts_key(self._checked(mjid))
        return [json.loads(x) for x in self._decode_list(self.redis.lrange(key, 0, -1))]

    def credits(self, email: str) -> int:
        with self.sessions() as s:
            user = find_user(s, email)
            if user is None:
                raise UnknownUser(email)
            return balance(s, user.id)

    # -- posting -------------------------------------------------------------------------------------------
    def post(self, email: str, quality: str, scene: dict[str, Any]) -> JobView:
        """Check user and credits, record and charge in Postgres, then put the job in mq and on pq."""
        price = self.prices[quality]
        mjid = self.new_id()
        if not is_mjid(mjid):  # a caller's new_id must make ids the reads accept
            raise RenderfarmError(f"new_id made {mjid!r}, which is not an mjid (32 lowercase hex digits)")
        now = _now()
        with self.sessions.begin() as s:
            user = s.scalar(select(User).where(User.email == email).with_for_update())
            if user is None:
                raise UnknownUser(email)
            if price:
                have = balance(s, user.id)
                if have < price:
                    raise InsufficientCredits(email, have, price)
            s.add(Render(mjid=mjid, user_id=user.id, quality=quality, price=price, status=JobState.QUEUED))
            if price:
                s.add(CreditEntry(user_id=user.id, amount=-price, reason="charge", mjid=mjid))
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
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.multi()  # explicit MULTI first: rq's enqueue joins the transaction we opened
                pipe.hset(mq_key(mjid), mapping=fields)
                pipe.set(scene_key(mjid), json.dumps(scene, separators=(",", ":")))
                pipe.zadd(mq_index_key(), {mjid: datetime.now(UTC).timestamp()})
                self._enqueue(QueueName.PREEMPTIBLE, mjid, job_id=mjid, pipe=pipe)
                pipe.execute()
        except Exception:
            # Postgres has the render and the charge but Redis does not: undo the charge, keep the record.
            self._finish_in_db(mjid, JobState.FAILED, "could not queue the job (Redis unavailable)")
            raise
        return JobView.from_hash(fields)  # what the transaction wrote: no second read

    def _enqueue(self, queue: QueueName, mjid: str, *, job_id: str, pipe: Pipeline) -> None:
        # Which rq job carries the mjid now, and since when: what reap_orphans checks.
        pipe.hset(mq_key(mjid), mapping={"rq_job": job_id, "queued_at": str(time.time())})
        pipe.sadd(queued_key(), mjid)
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
    def mark_started(self, mjid: str, worker: str, *, rq_job: str, heartbeat_ttl: float | None = None) -> JobView:
        """The job's next attempt begins on `worker`. Fenced by `rq_job`, the rq job that brought the mjid to the
        worker: when the job was queued again meanwhile (the orphan rescue made another rq job carry it), this
        raises StaleRqJob and changes nothing, so a job is never started through two rq jobs."""
        ttl = heartbeat_ttl or self.heartbeat_ttl

        def change(h: dict[str, str], pipe: Pipeline) -> dict[str, str]:
            n = int(h.get("attempts", 0)) + 1
            now = _now()
            fields: dict[Any, Any] = {
                "state": JobState.STARTED.value,
                "attempts": str(n),
                "started_at": now,
                "worker": worker,
            }
            pipe.hset(mq_key(mjid), mapping=fields)
            pipe.rpush(
                attempts_key(mjid),
                json.dumps({"attempt": n, "queue": h["queue"], "worker": worker, "started_at": now}),
            )
            pipe.set(heartbeat_key(mjid), str(n), px=int(ttl * 1000))
            pipe.sadd(started_key(), mjid)
            pipe.srem(queued_key(), mjid)
            pipe.delete(limbo_key(mjid))
            return fields

        return self._move(mjid, JobState.STARTED, change, rq_job=rq_job)

    def claim(self, mjid: str, rq_job: str, *, ttl: float | None = None) -> None:
        """A worker has taken `rq_job` (which carries mjid) off its queue and is getting ready to start it (its
        warm Blender may take a while): the orphan rescue leaves the job alone while this claim lives. The
        worker refreshes it every third of its TTL (renderfarm.work.Claim) until the job is done with; a
        worker that dies stops refreshing, and the claim expires after `heartbeat_ttl`. It is never deleted:
        once the job has started, or is carried by another rq job, an old claim no longer matters."""
        self.redis.set(claim_key(mjid), rq_job, px=int((ttl or self.heartbeat_ttl) * 1000))

    def heartbeat(self, mjid: str, attempt: int, *, ttl: float | None = None) -> bool:
        """Keep the job's heartbeat alive; False when the attempt is no longer the job's current one."""
        state, attempts = self._decode_list(self.redis.hmget(mq_key(mjid), ["state", "attempts"]))
        if state != JobState.STARTED or int(attempts or 0) != attempt:
            return False
        self.redis.set(heartbeat_key(mjid), str(attempt), px=int((ttl or self.heartbeat_ttl) * 1000))
        return True

    def mark_finished(self, mjid: str, image: str, *, attempt: int) -> JobView:
        def change(h: dict[str, str], pipe: Pipeline) -> dict[str, str]:
            now = _now()
            fields: dict[Any, Any] = {"state": JobState.FINISHED.value, "finished_at": now, "image": image}
            pipe.hset(mq_key(mjid), mapping=fields)
            self._leave_started(mjid, pipe, "finished", now)
            return fields

        view = self._move(mjid, JobState.FINISHED, change, attempt=attempt)
        self._finish_in_db(mjid, JobState.FINISHED, None)
        return view

    def mark_failed(self, mjid: str, error: str, *, attempt: int | None = None, outcome: str = "failed") -> JobView:
        def change(h: dict[str, str], pipe: Pipeline) -> dict[str, str]:
            now = _now()
            fields: dict[Any, Any] = {"state": JobState.FAILED.value, "finished_at": now, "error": error}
            pipe.hset(mq_key(mjid), mapping=fields)
            if h["state"] == JobState.STARTED:
                self._leave_started(mjid, pipe, outcome, now, error)
            pipe.srem(queued_key(), mjid)
            return fields

        view = self._move(mjid, JobState.FAILED, change, attempt=attempt)
        self._finish_in_db(mjid, JobState.FAILED, error)
        return view

    def retry_on_standard(self, mjid: str, reason: str, *, attempt: int, error: str | None = None) -> JobView:
        """A started job whose worker was preempted, interrupted or lost goes back to queued, on sq, as a
        new rq job. Losses without notice ("lost", "interrupted") are counted: past max_lost the job
        fails instead, and an HD charge is refunded. `error` (what interrupted it, e.g. the Blender that was
        killed) is kept in the attempt's record, and in the job's error when it fails."""
        counted = reason in ("lost", "interrupted")
        lost = int(self._hash(mjid).get("lost", 0)) + (1 if counted else 0)
        if counted and lost > self.max_lost:
            worker = self._hash(mjid).get("worker", "?")
            msg = f"worker lost {lost} times (limit {self.max_lost}); last on {worker} ({reason})"
            if error:
                msg += f": {error}"
            view = self.mark_failed(mjid, msg, attempt=attempt, outcome=reason)
            self.redis.hset(mq_key(mjid), "lost", str(lost))
            return view

        def change(h: dict[str, str], pipe: Pipeline) -> dict[str, str]:
            now = _now()
            fields: dict[Any, Any] = {"state": JobState.QUEUED.value, "queue": QueueName.STANDARD.value}
            pipe.hset(mq_key(mjid), mapping=fields)
            if counted:
                pipe.hincrby(mq_key(mjid), "lost", 1)
            self._leave_started(mjid, pipe, reason, now, error)
            self._enqueue(QueueName.STANDARD, mjid, job_id=f"{mjid}-{attempt + 1}", pipe=pipe)
            return fields

        return self._move(mjid, JobState.QUEUED, change, attempt=attempt)

    def reap_lost(self) -> list[tuple[str, str]]:
        """Started jobs whose heartbeat expired lost their worker (SIGKILL, a VM gone without notice):
        back to sq, or failed (and refunded) once lost more than max_lost times. Safe to run anywhere,
        from several processes at once: each move is a WATCHed transaction on the job's own keys."""
        done: list[tuple[str, str]] = []
        for mjid in self._decode_list(self.redis.smembers(started_key())):
            if self.redis.exists(heartbeat_key(mjid)):
                continue
            h = self._decode(self.redis.hgetall(mq_key(mjid)))
            if h.get("state") != JobState.STARTED:
                self.redis.srem(started_key(), mjid)
                continue
            try:
                view = self.retry_on_standard(mjid, "lost", attempt=int(h.get("attempts", 0)))
            except (StaleAttempt, InvalidTransition):
                continue  # another reaper, or the worker itself, got there first
            done.append((mjid, "sq" if view.state is JobState.QUEUED else view.state.value))
        return done

    def reap_orphans(self, *, grace: float | None = None) -> list[tuple[str, str]]:
        """Queued jobs whose rq job is gone before any worker started it: a worker stopped or killed
        between taking the job off the queue and starting it (rq then fails the job, or leaves it in the
        queue's intermediate list, which rq only cleans every 10 minutes). They are queued again on sq,
        once they have been out of their queue for `grace` seconds (default: the heartbeat TTL) and no
        worker's claim on them lives (a worker getting ready to start a job claims it: `claim`). After
        ORPHAN_LIMIT rescues such a job fails instead (refunded). Returns (mjid, "sq" or "failed") for each."""
        wait = self.heartbeat_ttl if grace is None else grace
        rescued: list[tuple[str, str]] = []
        for mjid in self._decode_list(self.redis.smembers(queued_key())):
            h = self._decode(self.redis.hgetall(mq_key(mjid)))
            if h.get("state") != JobState.QUEUED:
                self.redis.srem(queued_key(), mjid)
                continue
            rq_id = h.get("rq_job", mjid)
            queue_key = f"rq:queue:{h.get('queue', QueueName.PREEMPTIBLE.value)}"
            if self.redis.lpos(queue_key, rq_id) is not None:
                self.redis.delete(limbo_key(mjid))
                continue  # waiting its turn
            status = self.redis.hget(f"rq:job:{rq_id}", "status")
            if status in (b"queued", b"started") or status is None and self.redis.exists(f"rq:job:{rq_id}"):
                # Taken off the queue by a worker: fine, if it starts soon. Remember since when.
                self.redis.set(limbo_key(mjid), str(time.time()), nx=True, ex=3600)
                since = float(self.redis.get(limbo_key(mjid)) or time.time())
                if time.time() - since < wait:
                    continue
            where = self._rescue_orphan(mjid, rq_id, queue_key)
            if where is not None:
                rescued.append((mjid, where))
        return rescued

    def _rescue_orphan(self, mjid: str, rq_id: str, queue_key: str) -> str | None:
        """Queue the job again on sq as a new rq job ("sq"), or fail it (refunded) once it has been rescued
        ORPHAN_LIMIT times ("failed"). None, and nothing changed, while a worker's claim on `rq_id` lives or
        when the job has moved on. One transaction WATCHes the job's hash and its claim, so a worker that claims or
        starts the job meanwhile wins the race, and its mark_started is fenced by the rq job it carries."""
        key, claim = mq_key(mjid), claim_key(mjid)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key, claim)
                h = self._decode(pipe.hgetall(key))
                if h.get("state") != JobState.QUEUED or h.get("rq_job", mjid) != rq_id:
                    return None
                held = pipe.get(claim)
                if held is not None and self._decode_list([held]) == [rq_id]:
                    return None  # a live worker is getting ready to start it
                rescues = int(h.get("orphaned", 0))
                pipe.multi()
                pipe.lrem(f"{queue_key}:intermediate", 0, rq_id)  # so no late worker picks the old rq job too
                pipe.delete(limbo_key(mjid))
                if rescues >= ORPHAN_LIMIT:
                    error = (
                        f"taken off its queue and never started {rescues + 1} times"
                        f" (rescued {rescues} times, the limit; last rq job {rq_id})"
                    )
                    fields: dict[Any, Any] = {"state": JobState.FAILED.value, "finished_at": _now(), "error": error}
                    pipe.hset(key, mapping=fields)
                    pipe.srem(queued_key(), mjid)
                else:
                    error = None
                    pipe.hset(key, mapping={"queue": QueueName.STANDARD.value, "orphaned": str(rescues + 1)})
                    self._enqueue(QueueName.STANDARD, mjid, job_id=f"{mjid}-q{rescues + 1}", pipe=pipe)
                pipe.execute()
            except WatchError:
                return None  # the job or its claim changed: look again next round
        if error is None:
            return QueueName.STANDARD.value
        self._finish_in_db(mjid, JobState.FAILED, error)
        return JobState.FAILED.value

    def warm_statements(self) -> None:
        """Run the worker side's SQL once against no row (an UPDATE matching nothing), so that SQLAlchemy has
        it compiled: a worker does this before it forks work horses, which then inherit it compiled."""
        self._finish_in_db("", JobState.FINISHED, None)

    # -- internals -----------------------------------------------------------------------------------------
    def _leave_started(self, mjid: str, pipe: Pipeline, outcome: str, now: str, error: str | None = None) -> None:
        pipe.srem(started_key(), mjid)
        pipe.delete(heartbeat_key(mjid))
        self._end_attempt(mjid, pipe, outcome, now, error)

    def _end_attempt(self, mjid: str, pipe: Pipeline, outcome: str, now: str, error: str | None = None) -> None:
        # The last attempt record is rewritten with its ending; read outside the MULTI is fine because
        # the caller WATCHes the job's hash, and only the holder of the current attempt ends it.
        raw = self.redis.lindex(attempts_key(mjid), -1)
        if raw is None:
            return
        rec = json.loads(raw)
        rec.update(ended_at=now, outcome=outcome)
        if error:
            rec["error"] = error[-2000:]
        pipe.lset(attempts_key(mjid), -1, json.dumps(rec))

    def _move(
        self,
        mjid: str,
        new: JobState,
        change: Callable[[dict[str, str], Pipeline], dict[str, str]],
        *,
        attempt: int | None = None,
        rq_job: str | None = None,
    ) -> JobView:
        """Move the job to `new` in one WATCHed transaction; `change` queues the writes and returns the fields
        it sets in the job's hash. The view returned is the hash as this transaction left it. With `attempt`,
        the job must be on that attempt (StaleAttempt); with `rq_job`, carried by that rq job (StaleRqJob)."""
        key = mq_key(mjid)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    h = self._decode(pipe.hgetall(key))
                    if not h:
                        raise NoSuchJob(mjid)
                    old = JobState(h["state"])
                    if rq_job is not None and h.get("rq_job", mjid) != rq_job:
                        raise StaleRqJob(mjid, rq_job, h.get("rq_job", mjid))
                    # An attempt is current only while the job is started on it: once the reaper has queued
                    # the job again (lost), that attempt's late finish or failure is stale too.
                    if attempt is not None and (int(h.get("attempts", 0)) != attempt or old is not JobState.STARTED):
                        raise StaleAttempt(mjid, attempt, int(h.get("attempts", 0)), old.value)
                    if not can_move(old, new):
                        raise InvalidTransition(mjid, old.value, new.value)
                    pipe.multi()
                    fields = change(h, pipe)
                    pipe.execute()
                    break
                except WatchError:
                    continue
        return JobView.from_hash({**h, **fields})

    def _finish_in_db(self, mjid: str, state: JobState, error: str | None) -> None:
        """Record the end in the render's row and, for a failed paid render, refund it once. The UPDATE
        locks the row for the rest of the transaction, as SELECT ... FOR UPDATE would, in one round trip."""
        with self.sessions.begin() as s:
            values = {"status": state.value, "error": error, "finished_at": datetime.now(UTC), "mjid": mjid}
            render = s.execute(FINISH_RENDER, values).first()
            if render is None:
                return
            if state is JobState.FAILED and render.price:
                s.execute(
                    pg_insert(CreditEntry)
                    .values(
                        user_id=render.user_id,
                        amount=render.price,
                        reason="refund",
                        mjid=mjid,
                        created_at=datetime.now(UTC),
                    )
                    .on_conflict_do_nothing(constraint="uq_credit_entries_mjid_reason")
                )

    @staticmethod
    def _checked(mjid: str) -> str:
        if not is_mjid(mjid):
            raise NoSuchJob(mjid)
        return mjid

    def _hash(self, mjid: str) -> dict[str, str]:
        h = self._decode(self.redis.hgetall(mq_key(mjid)))
        if not h:
            raise NoSuchJob(mjid)
        return h

    @staticmethod
    def _decode(h: Any) -> dict[str, str]:
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in dict(h).items()
        }

    @staticmethod
    def _decode_list(items: Any) -> list[Any]:
        return [x.decode() if isinstance(x, bytes) else x for x in items]
