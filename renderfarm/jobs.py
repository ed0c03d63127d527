"""The JobManager ("render-manager"): the ledger `mq` in Redis, the rq queues `pq`/`sq`, and Postgres.

Every status lookup goes through `mq`. A fresh job goes to `pq`; a job retried after its preemptible
worker was lost goes to `sq`. Credits are charged in the same Postgres transaction that records the
render, exactly once (a unique key on (mjid, reason)), and refunded once when the job finally fails.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq import Queue
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from renderfarm.db import CreditEntry, Render, User, balance, find_user
from renderfarm.errors import (
    InsufficientCredits,
    InvalidTransition,
    NoSuchJob,
    UnknownUser,
)
from renderfarm.keys import JobState, QueueName, attempts_key, can_move, mq_index_key, mq_key

RENDER_FUNC = "renderfarm.work.render_job"  # imported by the worker only: the API never loads Blender code
JOB_TIMEOUT = 3600


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
    ) -> None:
        self.redis = redis
        self.sessions = sessions
        self.prices = prices if prices is not None else {"preview": 0, "hd": 10}
        self.new_id = new_id

    # -- reading -------------------------------------------------------------------------------------------
    def get(self, mjid: str) -> JobView:
        h = self._hash(mjid)
        return JobView.from_hash(h)

    def scene(self, mjid: str) -> dict[str, Any]:
        return json.loads(self._hash(mjid)["scene"])

    def attempts(self, mjid: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self._decode_list(self.redis.lrange(attempts_key(mjid), 0, -1))]

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
            "scene": json.dumps(scene, separators=(",", ":")),
        }
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.multi()  # explicit MULTI first: rq's enqueue joins the transaction we opened
                pipe.hset(mq_key(mjid), mapping=fields)
                pipe.zadd(mq_index_key(), {mjid: datetime.now(UTC).timestamp()})
                self._enqueue(QueueName.PREEMPTIBLE, mjid, job_id=mjid, pipe=pipe)
                pipe.execute()
        except Exception:
            # Postgres has the render and the charge but Redis does not: undo the charge, keep the record.
            self._finish_in_db(mjid, JobState.FAILED, "could not queue the job (Redis unavailable)")
            raise
        return self.get(mjid)

    def _enqueue(self, queue: QueueName, mjid: str, *, job_id: str, pipe: Pipeline) -> None:
        Queue(queue.value, connection=self.redis).enqueue_call(
            RENDER_FUNC,
            args=(mjid,),
            job_id=job_id,
            timeout=JOB_TIMEOUT,
            result_ttl=86400,
            failure_ttl=7 * 86400,
            pipeline=pipe,
        )

    # -- worker side ---------------------------------------------------------------------------------------
    def mark_started(self, mjid: str, worker: str) -> JobView:
        def change(h: dict[str, str], pipe: Pipeline) -> None:
            n = int(h.get("attempts", 0)) + 1
            now = _now()
            pipe.hset(
                mq_key(mjid),
                mapping={"state": JobState.STARTED.value, "attempts": str(n), "started_at": now, "worker": worker},
            )
            pipe.rpush(
                attempts_key(mjid), json.dumps({"attempt": n, "queue": h["queue"], "worker": worker, "started_at": now})
            )

        return self._move(mjid, JobState.STARTED, change)

    def mark_finished(self, mjid: str, image: str) -> JobView:
        def change(h: dict[str, str], pipe: Pipeline) -> None:
            now = _now()
            pipe.hset(mq_key(mjid), mapping={"state": JobState.FINISHED.value, "finished_at": now, "image": image})
            self._end_attempt(mjid, pipe, "finished", now)

        view = self._move(mjid, JobState.FINISHED, change)
        self._finish_in_db(mjid, JobState.FINISHED, None)
        return view

    def mark_failed(self, mjid: str, error: str) -> JobView:
        def change(h: dict[str, str], pipe: Pipeline) -> None:
            now = _now()
            pipe.hset(mq_key(mjid), mapping={"state": JobState.FAILED.value, "finished_at": now, "error": error})
            if h["state"] == JobState.STARTED:
                self._end_attempt(mjid, pipe, "failed", now, error)

        view = self._move(mjid, JobState.FAILED, change)
        self._finish_in_db(mjid, JobState.FAILED, error)
        return view

    def retry_on_standard(self, mjid: str, reason: str) -> JobView:
        """A started job whose worker was lost goes back to queued, on sq, as a new rq job."""

        def change(h: dict[str, str], pipe: Pipeline) -> None:
            now = _now()
            pipe.hset(mq_key(mjid), mapping={"state": JobState.QUEUED.value, "queue": QueueName.STANDARD.value})
            self._end_attempt(mjid, pipe, reason, now)
            self._enqueue(QueueName.STANDARD, mjid, job_id=f"{mjid}-{int(h.get('attempts', 0)) + 1}", pipe=pipe)

        return self._move(mjid, JobState.QUEUED, change)

    # -- internals -----------------------------------------------------------------------------------------
    def _end_attempt(self, mjid: str, pipe: Pipeline, outcome: str, now: str, error: str | None = None) -> None:
        # The last attempt record is rewritten with its ending; read outside the MULTI is fine because
        # the caller WATCHes the job's hash, and only the worker that holds the job ends its attempt.
        raw = self.redis.lindex(attempts_key(mjid), -1)
        if raw is None:
            return
        rec = json.loads(raw)
        rec.update(ended_at=now, outcome=outcome)
        if error:
            rec["error"] = error[-2000:]
        pipe.lset(attempts_key(mjid), -1, json.dumps(rec))

    def _move(self, mjid: str, new: JobState, change: Callable[[dict[str, str], Pipeline], None]) -> JobView:
        key = mq_key(mjid)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    h = self._decode(pipe.hgetall(key))
                    if not h:
                        raise NoSuchJob(mjid)
                    old = JobState(h["state"])
                    if not can_move(old, new):
                        raise InvalidTransition(mjid, old.value, new.value)
                    pipe.multi()
                    change(h, pipe)
                    pipe.execute()
                    break
                except Exception as exc:
                    from redis.exceptions import WatchError

                    if isinstance(exc, WatchError):
                        continue
                    raise
        return self.get(mjid)

    def _finish_in_db(self, mjid: str, state: JobState, error: str | None) -> None:
        with self.sessions.begin() as s:
            render = s.get(Render, mjid, with_for_update=True)
            if render is None:
                return
            s.execute(
                update(Render)
                .where(Render.mjid == mjid)
                .values(status=state.value, error=error, finished_at=datetime.now(UTC))
            )
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
    def _decode_list(items: Any) -> list[str]:
        return [x.decode() if isinstance(x, bytes) else x for x in items]
