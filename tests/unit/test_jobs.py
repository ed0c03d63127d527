"""renderfarm.jobs without Redis: the ledger's view of a job, and ids checked before any key is built.
(The JobManager's transitions against a real Redis and Postgres: tests/integration/test_jobmanager.py.)"""

from __future__ import annotations

import pytest

from renderfarm.errors import NoSuchJob, RenderfarmError
from renderfarm.jobs import JobManager, JobView
from renderfarm.keys import JobState, QueueName, is_mjid


def test_job_view_from_the_ledger_hash() -> None:
    h = {"mjid": "m1", "state": "queued", "queue": "pq", "quality": "hd", "user": "a@b.c", "attempts": "0",
         "created_at": "t0", "price": "10"}  # fmt: skip
    v = JobView.from_hash(h)
    assert v.state is JobState.QUEUED and v.queue is QueueName.PREEMPTIBLE and v.price == 10
    assert v.started_at is None and v.error is None and v.image is None


def test_an_mjid_is_what_jobmanager_makes_and_nothing_else() -> None:
    made = JobManager(None, None).new_id()  # type: ignore[arg-type]
    assert is_mjid(made)
    for bad in (f"{made}:scene", f"{made}:attempts", made.upper(), made[:-1], f"{made}-1", "", "no-such-mjid"):
        assert not is_mjid(bad), bad


@pytest.mark.parametrize("read", ["get", "scene", "attempts"])
def test_reads_refuse_a_malformed_id_before_any_lookup(read: str) -> None:
    """No Redis at all: a malformed id must be refused before a key is built from it."""
    jm = JobManager(None, None)  # type: ignore[arg-type]
    with pytest.raises(NoSuchJob) as err:
        getattr(jm, read)("0" * 32 + ":scene")
    assert str(err.value) == f"no such job: {'0' * 32}:scene"


def test_a_caller_new_id_that_is_not_an_mjid_is_refused_before_anything_is_written() -> None:
    jm = JobManager(None, None, new_id=lambda: "bench-1")  # type: ignore[arg-type]
    with pytest.raises(RenderfarmError, match="not an mjid"):
        jm.post("a@b.c", "preview", {})
