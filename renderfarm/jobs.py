"""The JobManager ("render-manager"): the ledger `mq` in Redis, the rq queues `pq`/`sq`, and Postgres.

Every status lookup goes through `mq`. A fresh job goes to `pq`; a job retried after its preemptible
worker was lost goes to `sq`. Credits are charged in the same Postgres transaction that records the
render, exactly once (a unique key on (mjid, reason)), and refunded once when the job finally fails.
Jobs whose worker is gone are moved on by renderfarm.reaper, through the transitions defined here.
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
    CreditReason,
    JobState,
    Outcome,
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
from renderfarm.settings import FarmSettings, Reliability

RENDER_FUNC = "renderfarm.worker.job.render_job"  # imported by the worker only: the API never loads Blender code
JOB_TIMEOUT = 3600
# The statement every job's end runs, as plain SQL on db.Render's table: a work horse is forked for each
# job, and the ORM's bulk-update path costs a fresh fork several milliseconds more than this.
FINISH_RENDER = text(
    f"UPDATE {Render.__tablename__} SET status = :status, error = :error, finished_at = :finished_at"
    " WHERE mjid = :mjid RETURNING user_id, price"
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
    ) -> None:
        """job_func: the dotted path of the function rq runs for a job (given the mjid); the render job
        unless a caller (the benchmark's queue pair) wants the JobManager side with another renderer."""
        self.redis = redis
        self.sessions = sessions
        self.prices = prices if prices is not None else {"preview": 0, "hd": FarmSettings.hd_price}
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
        return [json.loads(x) for x in decode_list(self.redis.lrange(key, 0, -1))]

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
        now = ledger_time()
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
                s.add(CreditEntry(user_id=user.id, amount=-price, reason=CreditReason.CHARGE, mjid=mjid))
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

        def change(h: dict[str, str], pipe: Pipeline) -> dict[str, str]:
            n = int(h.get("attempts", 0)) + 1
            now = ledger_time()
            fields: dict[Any, Any] = {
                "state": JobState.STARTED.value,
                "attempts": str(n),
                "started_at": now,
                "worker": worker,
                "credential": credential or "",
            }
            pipe.hset(mq_key(mjid), mapping=fields)
            record = {"attempt": n, "queue": h["queue"], "worker": worker, "started_at": now}
            if credential:
                record["credential"] = credential
            pipe.rpush(attempts_key(mjid), json.dumps(record))
            pipe.set(heartbeat_key(mjid), str(n), px=int(ttl * 1000))
            pipe.sadd(started_key(), mjid)
            pipe.srem(queued_key(), mjid)
            pipe.delete(limbo_key(mjid))
            return fields

        return self._move(mjid, JobState.STARTED, change, rq_job=rq_job)

    def claim(self, mjid: str, rq_job: str, *, ttl: float | None = None) -> None:
        """A worker has taken `rq_job` (which carries mjid) off its queue and is getting ready to start it (its
        warm Blender may take a while): the orphan rescue leaves the job alone while this claim lives. The
        worker refreshes it every third of its TTL (renderfarm.worker.liveness.Claim) until the job is done with; a
        worker that dies stops refreshing, and the claim expires after `heartbeat_ttl`. It is never deleted:
        once the job has started, or is carried by another rq job, an old claim no longer matters."""
        self.redis.set(claim_key(mjid), rq_job, px=int((ttl or self.heartbeat_ttl) * 1000))

    def heartbeat(self, mjid: str, attempt: int, *, ttl: float | None = None) -> bool:
        """Keep the job's heartbeat alive; False when the attempt is no longer the job's current one."""
        state, attempts = decode_list(self.redis.hmget(mq_key(mjid), ["state", "attempts"]))
        if state != JobState.STARTED or int(attempts or 0) != attempt:
            return False
        self.redis.set(heartbeat_key(mjid), str(attempt), px=int((ttl or self.heartbeat_ttl) * 1000))
        return True

    def mark_finished(self, mjid: str, image: str, *, attempt: int) -> JobView:
        def change(h: dict[str, str], pipe: Pipeline) -> dict[str, str]:
            now = ledger_time()
            fields: dict[Any, Any] = {"state": JobState.FINISHED.value, "finished_at": now, "image": image}
            pipe.hset(mq_key(mjid), mapping=fields)
            self._leave_started(mjid, pipe, Outcome.FINISHED, now)
            return fields

        view = self._move(mjid, JobState.FINISHED, change, attempt=attempt)
        self.record_end(mjid, JobState.FINISHED, None)
        return view

    def mark_failed(
        self, mjid: str, error: str, *, attempt: int | None = None, outcome: str = Outcome.FAILED
    ) -> JobView:
        """The job fails (refunded if it was paid for); a started one's attempt ends with `outcome` (an Outcome)."""
        ended = Outcome(outcome)

        def change(h: dict[str, str], pipe: Pipeline) -> dict[str, str]:
            now = ledger_time()
            fields: dict[Any, Any] = {"state": JobState.FAILED.value, "finished_at": now, "error": error}
            pipe.hset(mq_key(mjid), mapping=fields)
            if h["state"] == JobState.STARTED:
                self._leave_started(mjid, pipe, ended, now, error)
            pipe.srem(queued_key(), mjid)
            return fields

        view = self._move(mjid, JobState.FAILED, change, attempt=attempt)
        self.record_end(mjid, JobState.FAILED, error)
        return view

    def retry_on_standard(self, mjid: str, reason: str, *, attempt: int, error: str | None = None) -> JobView:
        """A started job whose worker was preempted, interrupted or lost goes back to queued, on sq, as a
        new rq job. `reason` is how the attempt ended (an Outcome). Losses without notice (Outcome.counted:
        lost, interrupted) are counted: past max_lost the job fails instead, and an HD charge is refunded.
        `error` (what interrupted it, e.g. the Blender that was killed) is kept in the attempt's record, and in
        the job's error when it fails."""
        ended = Outcome(reason)
        counted = ended.counted
        lost = int(self._hash(mjid).get("lost", 0)) + (1 if counted else 0)
        if counted and lost > self.max_lost:
            worker = self._hash(mjid).get("worker", "?")
            msg = f"worker lost {lost} times (limit {self.max_lost}); last on {worker} ({reason})"
            if error:
                msg += f": {error}"
            view = self.mark_failed(mjid, msg, attempt=attempt, outcome=ended)
            self.redis.hset(mq_key(mjid), "lost", str(lost))
            return view

        def change(h: dict[str, str], pipe: Pipeline) -> dict[str, str]:
            now = ledger_time()
            fields: dict[Any, Any] = {"state": JobState.QUEUED.value, "queue": QueueName.STANDARD.value}
            pipe.hset(mq_key(mjid), mapping=fields)
            if counted:
                pipe.hincrby(mq_key(mjid), "lost", 1)
            self._leave_started(mjid, pipe, ended, now, error)
            self.enqueue(QueueName.STANDARD, mjid, job_id=f"{mjid}-{attempt + 1}", pipe=pipe)
            return fields

        return self._move(mjid, JobState.QUEUED, change, attempt=attempt)

    def warm_statements(self) -> None:
        """Run the worker side's SQL once against no row (an UPDATE matching nothing), so that SQLAlchemy has
        it compiled: a worker does this before it forks work horses, which then inherit it compiled."""
        self.record_end("", JobState.FINISHED, None)

    # -- internals -----------------------------------------------------------------------------------------
    def _leave_started(self, mjid: str, pipe: Pipeline, outcome: Outcome, now: str, error: str | None = None) -> None:
        pipe.srem(started_key(), mjid)
        pipe.delete(heartbeat_key(mjid))
        self._end_attempt(mjid, pipe, outcome, now, error)

    def _end_attempt(self, mjid: str, pipe: Pipeline, outcome: Outcome, now: str, error: str | None = None) -> None:
        # The last attempt record is rewritten with its ending; read outside the MULTI is fine because
        # the caller WATCHes the job's hash, and only the holder of the current attempt ends it.
        raw = self.redis.lindex(attempts_key(mjid), -1)
        if raw is None:
            return
        rec = json.loads(raw)
        rec.update(ended_at=now, outcome=outcome.value)
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
                    h = decode_hash(pipe.hgetall(key))
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

    def record_end(self, mjid: str, state: JobState, error: str | None) -> None:
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
                        reason=CreditReason.REFUND,
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


def decode_list(items: Any) -> list[Any]:
    """Redis replies as text: each bytes item decoded, None and the rest as they are."""
    return [x.decode() if isinstance(x, bytes) else x for x in items]
