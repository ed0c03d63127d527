"""Job states, queue names and Redis keys: defined here and nowhere else."""

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
