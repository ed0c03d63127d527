"""The JobManager's transitions against a real Redis and the real Postgres (the kit's stack): post, mark_started
fenced by its rq job, heartbeat, mark_finished, mark_failed and retry_on_standard, each with what it writes to the
ledger, to rq's queues and to the credits. No worker: the tests move the jobs as a worker would."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from rq import Queue
from rq.job import Job

from renderfarm.errors import (
    InsufficientCredits,
    InvalidTransition,
    NoSuchJob,
    StaleAttempt,
    StaleRqJob,
    UnknownUser,
)
from renderfarm.jobs import JobManager
from renderfarm.keys import (
    CreditReason,
    JobState,
    Outcome,
    QueueName,
    heartbeat_key,
    mq_index_key,
    mq_key,
    queued_key,
    started_key,
)
from tests.integration.conftest import CREDITS, HD_PRICE

pytestmark = pytest.mark.integration
SCENE = {"objects": [{"kind": "box"}]}  # the JobManager keeps a scene as it is given (the API validates it)
CHARGE, REFUND = CreditReason.CHARGE.value, CreditReason.REFUND.value


def queued_on(r: redis.Redis, queue: QueueName) -> list[str]:
    return Queue(queue.value, connection=r).job_ids


def outcomes(jm: JobManager, mjid: str) -> list[tuple[str, str | None]]:
    return [(a["queue"], a.get("outcome")) for a in jm.attempts(mjid)]


def test_post_charges_in_postgres_and_queues_on_pq_as_the_rq_job_named_by_the_mjid(
    make_manager: Callable[..., JobManager], payer: str, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = make_manager()
    v = jm.post(payer, "hd", SCENE)
    assert (v.state, v.queue, v.price, v.attempts) == (JobState.QUEUED, QueueName.PREEMPTIBLE, HD_PRICE, 0)
    assert v.user == payer
    assert jm.get(v.mjid) == v and jm.scene(v.mjid) == SCENE and jm.attempts(v.mjid) == []
    assert queued_on(jm.redis, QueueName.PREEMPTIBLE) == [v.mjid] and queued_on(jm.redis, QueueName.STANDARD) == []
    assert jm.redis.zscore(mq_index_key(), v.mjid) is not None and jm.redis.sismember(queued_key(), v.mjid)
    assert credit_reasons(v.mjid) == [CHARGE] and jm.credits(payer) == CREDITS - HD_PRICE
    preview = jm.post(payer, "preview", SCENE)
    assert preview.price == 0 and credit_reasons(preview.mjid) == [] and jm.credits(payer) == CREDITS - HD_PRICE


def test_post_refuses_a_user_without_the_credits_or_unknown_and_queues_nothing(
    make_manager: Callable[..., JobManager], payer: str
) -> None:
    jm = make_manager(prices={"preview": 0, "hd": CREDITS + 1})
    with pytest.raises(InsufficientCredits) as err:
        jm.post(payer, "hd", SCENE)
    assert (err.value.balance, err.value.price) == (CREDITS, CREDITS + 1)
    with pytest.raises(UnknownUser):
        jm.post("nobody@example.com", "preview", SCENE)
    assert jm.redis.zcard(mq_index_key()) == 0 and queued_on(jm.redis, QueueName.PREEMPTIBLE) == []
    assert jm.credits(payer) == CREDITS


def test_mark_started_is_fenced_by_the_rq_job_that_carries_the_job(
    make_manager: Callable[..., JobManager], payer: str
) -> None:
    jm = make_manager(heartbeat_ttl=30)
    mjid = jm.post(payer, "preview", SCENE).mjid
    with pytest.raises(StaleRqJob):
        jm.mark_started(mjid, "worker-a", rq_job=f"{mjid}-2")
    assert jm.get(mjid).state is JobState.QUEUED and jm.attempts(mjid) == [], "a stale rq job changes nothing"

    v = jm.mark_started(mjid, "worker-a", rq_job=mjid)
    assert (v.state, v.attempts) == (JobState.STARTED, 1) and v.started_at
    [record] = jm.attempts(mjid)
    assert (record["attempt"], record["queue"], record["worker"]) == (1, "pq", "worker-a") and "outcome" not in record
    assert jm.redis.get(heartbeat_key(mjid)) == b"1" and 0 < jm.redis.pttl(heartbeat_key(mjid)) <= 30_000
    assert jm.redis.sismember(started_key(), mjid) and not jm.redis.sismember(queued_key(), mjid)
    with pytest.raises(InvalidTransition):
        jm.mark_started(mjid, "worker-b", rq_job=mjid)  # a second worker with the same rq job


def test_heartbeat_lives_only_while_its_attempt_is_the_current_one(
    make_manager: Callable[..., JobManager], payer: str
) -> None:
    jm = make_manager(heartbeat_ttl=30)
    mjid = jm.post(payer, "preview", SCENE).mjid
    assert jm.heartbeat(mjid, 1) is False, "not started yet"
    jm.mark_started(mjid, "worker-a", rq_job=mjid, heartbeat_ttl=1)
    assert jm.redis.pttl(heartbeat_key(mjid)) <= 1000
    assert jm.heartbeat(mjid, 1) is True and jm.redis.pttl(heartbeat_key(mjid)) > 1000, "refreshed with the TTL"
    assert jm.heartbeat(mjid, 2) is False
    jm.mark_finished(mjid, f"{mjid}-1.png", attempt=1)
    assert jm.heartbeat(mjid, 1) is False and not jm.redis.exists(heartbeat_key(mjid))


def test_mark_finished_records_the_image_and_keeps_the_charge(
    make_manager: Callable[..., JobManager], payer: str, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = make_manager()
    mjid = jm.post(payer, "hd", SCENE).mjid
    jm.mark_started(mjid, "worker-a", rq_job=mjid)
    with pytest.raises(StaleAttempt):
        jm.mark_finished(mjid, "x.png", attempt=2)
    v = jm.mark_finished(mjid, f"{mjid}-1.png", attempt=1)
    assert (v.state, v.image) == (JobState.FINISHED, f"{mjid}-1.png") and v.finished_at
    assert outcomes(jm, mjid) == [("pq", Outcome.FINISHED)] and jm.attempts(mjid)[0]["ended_at"]
    assert not jm.redis.sismember(started_key(), mjid)
    assert credit_reasons(mjid) == [CHARGE] and jm.credits(payer) == CREDITS - HD_PRICE
    with pytest.raises(StaleAttempt):
        jm.mark_failed(mjid, "too late", attempt=1)
    with pytest.raises(InvalidTransition):
        jm.mark_failed(mjid, "too late")


def test_mark_failed_refunds_a_paid_render_once(
    make_manager: Callable[..., JobManager], payer: str, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = make_manager()
    started = jm.post(payer, "hd", SCENE).mjid
    jm.mark_started(started, "worker-a", rq_job=started)
    v = jm.mark_failed(started, "blender exploded", attempt=1)
    assert (v.state, v.error) == (JobState.FAILED, "blender exploded")
    assert outcomes(jm, started) == [("pq", Outcome.FAILED)] and jm.attempts(started)[0]["error"] == "blender exploded"
    assert credit_reasons(started) == [CHARGE, REFUND] and jm.credits(payer) == CREDITS
    with pytest.raises(InvalidTransition):
        jm.mark_failed(started, "again")
    assert credit_reasons(started) == [CHARGE, REFUND], "refunded once"

    queued = jm.post(payer, "hd", SCENE).mjid  # failed before any worker started it: no attempt to end
    jm.mark_failed(queued, "cancelled")
    assert jm.get(queued).state is JobState.FAILED and jm.attempts(queued) == []
    assert not jm.redis.sismember(queued_key(), queued) and jm.credits(payer) == CREDITS


def test_retry_on_standard_queues_a_new_rq_job_on_sq_and_fences_the_old_one(
    make_manager: Callable[..., JobManager], payer: str, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = make_manager(max_lost=0)  # a preemption is not a loss: max_lost does not apply
    mjid = jm.post(payer, "hd", SCENE).mjid
    jm.redis.delete(Queue(QueueName.PREEMPTIBLE.value, connection=jm.redis).key)  # a worker took it
    jm.mark_started(mjid, "worker-a", rq_job=mjid)
    v = jm.retry_on_standard(mjid, Outcome.PREEMPTED, attempt=1)
    assert (v.state, v.queue) == (JobState.QUEUED, QueueName.STANDARD)
    assert queued_on(jm.redis, QueueName.STANDARD) == [f"{mjid}-2"] and outcomes(jm, mjid) == [("pq", "preempted")]
    assert jm.redis.sismember(queued_key(), mjid) and not jm.redis.sismember(started_key(), mjid)
    with pytest.raises(StaleAttempt):
        jm.mark_finished(mjid, "late.png", attempt=1)  # the preempted worker's late finish
    with pytest.raises(StaleRqJob):
        jm.mark_started(mjid, "worker-late", rq_job=mjid)  # the old rq job, picked up late
    v = jm.mark_started(mjid, "worker-b", rq_job=f"{mjid}-2")
    assert v.attempts == 2 and jm.mark_finished(mjid, f"{mjid}-2.png", attempt=2).state is JobState.FINISHED
    assert outcomes(jm, mjid) == [("pq", "preempted"), ("sq", "finished")] and credit_reasons(mjid) == [CHARGE]


def test_losses_are_counted_and_past_max_lost_the_job_fails_refunded(
    make_manager: Callable[..., JobManager], payer: str, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = make_manager(max_lost=1)
    mjid = jm.post(payer, "hd", SCENE).mjid
    jm.mark_started(mjid, "worker-a", rq_job=mjid)
    assert jm.retry_on_standard(mjid, Outcome.INTERRUPTED, attempt=1, error="blender vanished").state is JobState.QUEUED
    jm.mark_started(mjid, "worker-b", rq_job=f"{mjid}-2")
    v = jm.retry_on_standard(mjid, Outcome.LOST, attempt=2)
    assert v.state is JobState.FAILED and v.error == "worker lost 2 times (limit 1); last on worker-b (lost)"
    assert outcomes(jm, mjid) == [("pq", "interrupted"), ("sq", "lost")]
    assert jm.attempts(mjid)[0]["error"] == "blender vanished"
    assert credit_reasons(mjid) == [CHARGE, REFUND] and jm.credits(payer) == CREDITS
    assert queued_on(jm.redis, QueueName.STANDARD) == [f"{mjid}-2"], "no third rq job"


def test_a_refused_transition_changes_nothing_and_a_move_answers_the_hash_it_left(
    make_manager: Callable[..., JobManager], payer: str
) -> None:
    """Each transition is one script: a refusal (the attempt or rq job fence, no such job) writes nothing, rq's
    enqueue of a retry included, and a move answers the job as the script left it."""
    jm = make_manager(heartbeat_ttl=30, max_lost=1)
    mjid = jm.post(payer, "preview", SCENE).mjid
    with pytest.raises(NoSuchJob):
        jm.mark_started("0" * 32, "worker-a", rq_job="0" * 32)
    v = jm.mark_started(mjid, "worker-a", rq_job=mjid, credential="cred-a")
    assert v == jm.get(mjid) and (v.attempts, v.credential) == (1, "cred-a")
    assert jm.attempts(mjid)[0]["credential"] == "cred-a"

    def ledger() -> tuple[object, ...]:
        return jm.redis.hgetall(mq_key(mjid)), jm.attempts(mjid), jm.redis.get(heartbeat_key(mjid))

    before = ledger()
    with pytest.raises(StaleAttempt) as err:
        jm.retry_on_standard(mjid, Outcome.LOST, attempt=2)
    assert (err.value.current, err.value.state) == (1, "started")
    assert ledger() == before, "nothing written"
    assert queued_on(jm.redis, QueueName.STANDARD) == [] and not Job.exists(f"{mjid}-3", connection=jm.redis)

    error = "é" * 2500 + "ü"  # the record keeps its last 2000 characters, not bytes
    v = jm.retry_on_standard(mjid, Outcome.INTERRUPTED, attempt=1, error=error)
    assert v == jm.get(mjid) and (v.state, v.queue) == (JobState.QUEUED, QueueName.STANDARD)
    [record] = jm.attempts(mjid)
    assert (record["error"], record["outcome"]) == (error[-2000:], "interrupted") and record["ended_at"]
    assert tuple(Job.fetch(f"{mjid}-2", connection=jm.redis).args) == (mjid,)
    assert jm.redis.hget(mq_key(mjid), "lost") == b"1" and jm.redis.hget(mq_key(mjid), "rq_job") == f"{mjid}-2".encode()

    jm.mark_started(mjid, "worker-b", rq_job=f"{mjid}-2")
    v = jm.retry_on_standard(mjid, Outcome.LOST, attempt=2)  # past max_lost: failed, no new rq job
    assert v == jm.get(mjid) and v.state is JobState.FAILED and jm.redis.hget(mq_key(mjid), "lost") == b"2"
    assert not Job.exists(f"{mjid}-3", connection=jm.redis) and not jm.redis.sismember(queued_key(), mjid)
    assert jm.attempts(mjid)[1]["error"] == v.error == "worker lost 2 times (limit 1); last on worker-b (lost)"
