"""Job states, attempt outcomes, queue names, credit reasons and the JobManager's Redis keys: defined here and
nowhere else. Their values are what Redis, Postgres and the HTTP API carry. rq's own keys (its queues, jobs and
their intermediate lists) are built by rq's helpers (`Queue(...).key`, `Job.key_for`), never here."""

from __future__ import annotations

import re
from enum import StrEnum

PREFIX = "renderfarm"

# What a job id (an mjid) looks like: JobManager makes them with `uuid.uuid4().hex`. Every id from outside
# (a URL, a worker's argument) is checked against this before any key is built from it, so that
# `<mjid>:scene` or `<mjid>:attempts` can never name another of the job's keys.
MJID = re.compile(r"[0-9a-f]{32}")


def is_mjid(value: str) -> bool:
    """True when value is an mjid as JobManager makes them (32 lowercase hex digits)."""
    return MJID.fullmatch(value) is not None


class QueueName(StrEnum):
    PREEMPTIBLE = "pq"  # a fresh job goes here first
    STANDARD = "sq"  # a job whose preemptible worker was lost is retried here


class JobState(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED)


class Outcome(StrEnum):
    """How one attempt at a job ended: the `outcome` of its record in the job's attempt history."""

    FINISHED = "finished"
    FAILED = "failed"
    PREEMPTED = "preempted"  # its preemptible (pq) worker was told to stop, and queued it again on sq
    INTERRUPTED = "interrupted"  # a standard (sq) worker told to stop, or a Blender that vanished under it
    LOST = "lost"  # its worker went without notice: the heartbeat expired (found by the reaper)

    @property
    def counted(self) -> bool:
        """A loss without notice: counted against the job's max_lost (past it the job fails, refunded)."""
        return self in (Outcome.LOST, Outcome.INTERRUPTED)


class CreditReason(StrEnum):
    """Why a credit entry was written (db.CreditEntry.reason): one charge and one refund per render at most."""

    SEED = "seed"  # credits given (`invoke seed-credits`)
    CHARGE = "charge"  # an HD render's price, taken when it is posted
    REFUND = "refund"  # the price given back when the render finally fails


# Which state may follow which. A started job may be queued again (retried on sq after preemption).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.STARTED, JobState.FAILED}),
    JobState.STARTED: frozenset({JobState.FINISHED, JobState.FAILED, JobState.QUEUED}),
    JobState.FINISHED: frozenset(),
    JobState.FAILED: frozenset(),
}


def can_move(old: JobState, new: JobState) -> bool:
    return new in TRANSITIONS[old]


def mq_key(mjid: str) -> str:
    """The manager's ledger entry for one job (a Redis hash)."""
    return f"{PREFIX}:mq:{mjid}"


def scene_key(mjid: str) -> str:
    """The job's scene JSON (a Redis string), kept out of the ledger hash so that every state change,
    which reads the whole hash, stays small whatever the scene's size."""
    return f"{PREFIX}:mq:{mjid}:scene"


def mq_index_key() -> str:
    """Every mjid the manager knows, scored by creation time (a Redis sorted set)."""
    return f"{PREFIX}:mq"


def attempts_key(mjid: str) -> str:
    """The job's attempt history (a Redis list of JSON records)."""
    return f"{PREFIX}:mq:{mjid}:attempts"


def heartbeat_key(mjid: str) -> str:
    """Exists (with a TTL) while a worker is alive and rendering the job; its value is the attempt number."""
    return f"{PREFIX}:mq:{mjid}:heartbeat"


def started_key() -> str:
    """The mjids in the started state (a Redis set): what the reaper looks at."""
    return f"{PREFIX}:started"


def queued_key() -> str:
    """The mjids in the queued state (a Redis set): what the orphan check looks at."""
    return f"{PREFIX}:queued"


def limbo_key(mjid: str) -> str:
    """When a queued job was first seen taken off its queue but not started (a Redis string, a timestamp)."""
    return f"{PREFIX}:mq:{mjid}:limbo"


def claim_key(mjid: str) -> str:
    """Exists (with a TTL the worker keeps refreshing) while a worker has taken the job off its queue and is
    getting ready to start it; its value is the id of the rq job the worker took (a Redis string)."""
    return f"{PREFIX}:mq:{mjid}:claim"


def tiles_done_key(mjid: str) -> str:
    """A tiled job's finished tiles (a Redis set of tile indexes)."""
    return f"{PREFIX}:mq:{mjid}:tiles-done"


def image_name(mjid: str, attempt: int) -> str:
    """The file name of the image one attempt made (in the API's renders folder). One file per attempt: the job
    records the one its current attempt made, so a worker that was presumed lost and comes back can never replace
    the image the job points to."""
    return f"{mjid}-{attempt}.png"
