"""The reaper: finds jobs whose worker is gone and moves them on, as rq's registries clean up after their own jobs.

Two kinds of job are found: started jobs whose heartbeat expired (`reap_lost`: retried on sq, or failed once
lost too often), and queued jobs taken off their queue and never started (`reap_orphans`: queued again on sq, or
failed once rescued too often). Each move is one atomic step on the job's own keys (a lost job's, the JobManager's
transition script; an orphan's, a WATCHed transaction), so reapers may run in several processes at once. A `Reaper`
is a background thread that looks every `interval` seconds; its rounds can also be run directly (`reap_lost()`,
`reap_orphans()`).

It runs in the API process and in every host worker: rq alone never moves a job to another queue, and cleans its
started-job registry only from a worker on that queue, every 10 minutes by default.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from redis.exceptions import WatchError
from rq import Queue
from rq.job import Job, JobStatus

from renderfarm.errors import InvalidTransition, StaleAttempt
from renderfarm.jobs import JobManager, decode_hash, decode_list, ledger_time
from renderfarm.keys import (
    JobState,
    Outcome,
    QueueName,
    claim_key,
    heartbeat_key,
    limbo_key,
    mq_key,
    queued_key,
    started_key,
)

log = logging.getLogger("renderfarm.reaper")

ORPHAN_LIMIT = 3  # a job taken off its queue and never started is rescued this many times, then fails (refunded)
TAKEN = (JobStatus.QUEUED, JobStatus.STARTED)  # an rq job a worker has taken but not yet started or finished

# Where a reaped job went: queued again on sq, or failed.
Moved = QueueName | JobState


class Reaper(threading.Thread):
    def __init__(self, manager: JobManager, interval: float) -> None:
        super().__init__(name="renderfarm-reaper", daemon=True)
        self.manager = manager
        self.redis = manager.redis
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.reap()
            except Exception:  # noqa: BLE001 - Redis or Postgres away: try again next round
                log.exception("reaper round failed")

    def stop(self) -> None:
        self.stopped.set()

    def reap(self) -> None:
        """One round: lost jobs, then orphans, each move logged."""
        for mjid, where in self.reap_lost():
            what = "retried on sq" if where is QueueName.STANDARD else "failed"
            log.warning("job %s lost its worker: %s", mjid, what)
        for mjid, where in self.reap_orphans():
            what = "queued again on sq" if where is QueueName.STANDARD else "failed (rescued too often)"
            log.warning("job %s was taken off its queue and never started: %s", mjid, what)

    def reap_lost(self) -> list[tuple[str, Moved]]:
        """Started jobs whose heartbeat expired lost their worker (SIGKILL, a VM gone without notice):
        back to sq, or failed (and refunded) once lost more than max_lost times. Returns (mjid, where) for each."""
        done: list[tuple[str, Moved]] = []
        for mjid in decode_list(self.redis.smembers(started_key())):
            if self.redis.exists(heartbeat_key(mjid)):
                continue
            h = decode_hash(self.redis.hgetall(mq_key(mjid)))
            if h.get("state") != JobState.STARTED:
                self.redis.srem(started_key(), mjid)
                continue
            try:
                view = self.manager.retry_on_standard(mjid, Outcome.LOST, attempt=int(h.get("attempts", 0)))
            except (StaleAttempt, InvalidTransition):
                continue  # another reaper, or the worker itself, got there first
            done.append((mjid, QueueName.STANDARD if view.state is JobState.QUEUED else view.state))
        return done

    def reap_orphans(self, *, grace: float | None = None) -> list[tuple[str, Moved]]:
        """Queued jobs whose rq job is gone before any worker started it: a worker stopped or killed
        between taking the job off the queue and starting it (rq then fails the job, or leaves it in the
        queue's intermediate list, which rq only cleans every 10 minutes). They are queued again on sq,
        once they have been out of their queue for `grace` seconds (default: the heartbeat TTL) and no
        worker's claim on them lives (a worker getting ready to start a job claims it: JobManager.claim). After
        ORPHAN_LIMIT rescues such a job fails instead (refunded). Returns (mjid, where) for each."""
        wait = self.manager.heartbeat_ttl if grace is None else grace
        mjids = decode_list(self.redis.smembers(queued_key()))
        if not mjids:
            return []
        # One round trip for every queued job's fields and one LRANGE per queue, not a few calls (and an O(queue)
        # LPOS) per job: with thousands of jobs waiting, a round would otherwise cost the API seconds of CPU.
        with self.redis.pipeline(transaction=False) as pipe:
            for mjid in mjids:
                pipe.hmget(mq_key(mjid), "state", "rq_job", "queue")
            rows = pipe.execute()
        waiting: dict[str, set[str]] = {}
        in_line: list[str] = []
        rescued: list[tuple[str, Moved]] = []
        for mjid, row in zip(mjids, rows, strict=True):
            state, rq_job, queue_name = decode_list([v or b"" for v in row])
            if state != JobState.QUEUED:
                self.redis.srem(queued_key(), mjid)  # at once, as read: a job retried since is in the set again
                continue
            rq_id = rq_job or mjid
            queue = Queue(queue_name or QueueName.PREEMPTIBLE, connection=self.redis)
            if queue.name not in waiting:
                waiting[queue.name] = set(decode_list(self.redis.lrange(queue.key, 0, -1)))
            if rq_id in waiting[queue.name]:
                in_line.append(mjid)
                continue  # waiting its turn
            if self._taken(rq_id):
                # Taken off the queue by a worker: fine, if it starts soon. Remember since when.
                self.redis.set(limbo_key(mjid), str(time.time()), nx=True, ex=3600)
                since = float(self.redis.get(limbo_key(mjid)) or time.time())
                if time.time() - since < wait:
                    continue
            where = self._rescue_orphan(mjid, rq_id, queue)
            if where is not None:
                rescued.append((mjid, where))
        if in_line:
            self.redis.delete(*(limbo_key(mjid) for mjid in in_line))  # in line: not taken (any more)
        return rescued

    def _taken(self, rq_id: str) -> bool:
        """The rq job exists and is queued or started by rq's account (or has no status yet): a worker has it."""
        job_key = Job.key_for(rq_id)
        status = self.redis.hget(job_key, "status")
        if status is None:
            return bool(self.redis.exists(job_key))
        return decode_list([status])[0] in TAKEN

    def _rescue_orphan(self, mjid: str, rq_id: str, queue: Queue) -> Moved | None:
        """Queue the job again on sq as a new rq job, or fail it (refunded) once it has been rescued
        ORPHAN_LIMIT times. None, and nothing changed, while a worker's claim on `rq_id` lives or
        when the job has moved on. One transaction WATCHes the job's hash and its claim, so a worker that claims or
        starts the job meanwhile wins the race, and its mark_started is fenced by the rq job it carries."""
        key, claim = mq_key(mjid), claim_key(mjid)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key, claim)
                h = decode_hash(pipe.hgetall(key))
                if h.get("state") != JobState.QUEUED or h.get("rq_job", mjid) != rq_id:
                    return None
                held = pipe.get(claim)
                if held is not None and decode_list([held]) == [rq_id]:
                    return None  # a live worker is getting ready to start it
                rescues = int(h.get("orphaned", 0))
                pipe.multi()
                pipe.lrem(queue.intermediate_queue_key, 0, rq_id)  # so no late worker picks the old rq job too
                pipe.delete(limbo_key(mjid))
                if rescues >= ORPHAN_LIMIT:
                    error = (
                        f"taken off its queue and never started {rescues + 1} times"
                        f" (rescued {rescues} times, the limit; last rq job {rq_id})"
                    )
                    fields: dict[Any, Any] = {
                        "state": JobState.FAILED.value,
                        "finished_at": ledger_time(),
                        "error": error,
                    }
                    pipe.hset(key, mapping=fields)
                    pipe.srem(queued_key(), mjid)
                else:
                    error = None
                    pipe.hset(key, mapping={"queue": QueueName.STANDARD.value, "orphaned": str(rescues + 1)})
                    self.manager.enqueue(QueueName.STANDARD, mjid, job_id=f"{mjid}-q{rescues + 1}", pipe=pipe)
                pipe.execute()
            except WatchError:
                return None  # the job or its claim changed: look again next round
        if error is None:
            return QueueName.STANDARD
        self.manager.record_end(mjid, JobState.FAILED, error)
        return JobState.FAILED
