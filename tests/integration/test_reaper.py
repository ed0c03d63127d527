"""The reaper against a real Redis and the real Postgres (the kit's stack): a started job whose heartbeat expired is
retried on sq, then failed and refunded past max_lost; a queued job taken off its queue and never started is
rescued onto sq (unless a worker's claim on it lives), then failed and refunded past ORPHAN_LIMIT rescues. No
worker: the tests take jobs off rq's queues and start them as a worker would, and let heartbeats expire."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from rq import Queue
from rq.job import Job

from renderfarm.errors import StaleRqJob
from renderfarm.jobs import JobManager
from renderfarm.keys import CreditReason, JobState, Outcome, QueueName, limbo_key, mq_key, queued_key, started_key
from renderfarm.reaper import ORPHAN_LIMIT, Reaper
from tests.integration.conftest import CREDITS

pytestmark = pytest.mark.integration
SCENE = {"objects": [{"kind": "box"}]}
TTL = 0.3  # seconds: the heartbeat of these tests' jobs, and the orphans' grace
CHARGE, REFUND = CreditReason.CHARGE.value, CreditReason.REFUND.value


def reaper_for(jm: JobManager) -> Reaper:
    return Reaper(jm, interval=TTL)  # not started: the tests run its rounds themselves


def take_off(jm: JobManager, queue: QueueName) -> str:
    """What a worker's dequeue does: the queue's first rq job moves to the queue's intermediate list (rq 2+)."""
    q = Queue(queue.value, connection=jm.redis)
    rq_id = jm.redis.lmove(q.key, q.intermediate_queue_key, "LEFT", "RIGHT")
    assert rq_id is not None, f"nothing queued on {queue}"
    return rq_id.decode()


def outcomes(jm: JobManager, mjid: str) -> list[tuple[str, str | None]]:
    return [(a["queue"], a.get("outcome")) for a in jm.attempts(mjid)]


def test_a_lost_job_is_retried_on_sq_then_failed_past_max_lost_with_a_refund(
    make_manager: Callable[..., JobManager], payer: str, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = make_manager(heartbeat_ttl=TTL, max_lost=1)
    reaper = reaper_for(jm)
    mjid = jm.post(payer, "hd", SCENE).mjid
    jm.mark_started(mjid, "worker-a", rq_job=take_off(jm, QueueName.PREEMPTIBLE))
    assert reaper.reap_lost() == [], "its heartbeat lives"
    time.sleep(TTL + 0.2)
    assert reaper.reap_lost() == [(mjid, QueueName.STANDARD)]
    v = jm.get(mjid)
    assert (v.state, v.queue) == (JobState.QUEUED, QueueName.STANDARD) and outcomes(jm, mjid) == [("pq", "lost")]
    assert Queue(QueueName.STANDARD.value, connection=jm.redis).job_ids == [f"{mjid}-2"]
    assert reaper.reap_lost() == [], "moved once"

    jm.mark_started(mjid, "worker-b", rq_job=take_off(jm, QueueName.STANDARD))
    time.sleep(TTL + 0.2)
    assert reaper.reap_lost() == [(mjid, JobState.FAILED)]
    v = jm.get(mjid)
    assert v.state is JobState.FAILED and v.error == "worker lost 2 times (limit 1); last on worker-b (lost)"
    assert outcomes(jm, mjid) == [("pq", Outcome.LOST), ("sq", Outcome.LOST)]
    assert credit_reasons(mjid) == [CHARGE, REFUND] and jm.credits(payer) == CREDITS
    assert reaper.reap_lost() == [] and not jm.redis.sismember(started_key(), mjid)


def test_an_orphan_is_rescued_onto_sq_as_a_new_rq_job_and_its_old_one_is_fenced(
    make_manager: Callable[..., JobManager], payer: str
) -> None:
    jm = make_manager(heartbeat_ttl=TTL)
    reaper = reaper_for(jm)
    mjid = jm.post(payer, "preview", SCENE).mjid
    assert reaper.reap_orphans() == [], "waiting its turn on pq"
    old = take_off(jm, QueueName.PREEMPTIBLE)  # ... and its worker dies before starting it
    assert reaper.reap_orphans() == [] and jm.redis.exists(limbo_key(mjid)), "off its queue, within the grace"
    time.sleep(TTL + 0.2)
    assert reaper.reap_orphans() == [(mjid, QueueName.STANDARD)]
    v = jm.get(mjid)
    assert (v.state, v.queue) == (JobState.QUEUED, QueueName.STANDARD)
    assert jm.redis.hget(mq_key(mjid), "orphaned") == b"1" and not jm.redis.exists(limbo_key(mjid))
    pq = Queue(QueueName.PREEMPTIBLE.value, connection=jm.redis)
    assert jm.redis.lrange(pq.intermediate_queue_key, 0, -1) == [], "no late worker picks the old rq job"
    assert Queue(QueueName.STANDARD.value, connection=jm.redis).job_ids == [f"{mjid}-q1"]
    with pytest.raises(StaleRqJob):
        jm.mark_started(mjid, "worker-late", rq_job=old)
    assert jm.mark_started(mjid, "worker-b", rq_job=take_off(jm, QueueName.STANDARD)).queue is QueueName.STANDARD
    assert reaper.reap_orphans() == [] and not jm.redis.sismember(queued_key(), mjid)


def test_a_live_claim_keeps_the_rescue_away_and_a_gone_rq_job_is_rescued_at_once(
    make_manager: Callable[..., JobManager], payer: str
) -> None:
    jm = make_manager(heartbeat_ttl=TTL)
    reaper = reaper_for(jm)
    claimed = jm.post(payer, "preview", SCENE).mjid
    jm.claim(claimed, take_off(jm, QueueName.PREEMPTIBLE), ttl=30)  # a worker whose warm Blender is starting
    gone = jm.post(payer, "preview", SCENE).mjid
    jm.redis.delete(Job.key_for(take_off(jm, QueueName.PREEMPTIBLE)))  # rq no longer has the job at all
    assert reaper.reap_orphans(grace=3600) == [(gone, QueueName.STANDARD)]
    time.sleep(TTL + 0.2)
    assert reaper.reap_orphans() == [] and jm.get(claimed).queue is QueueName.PREEMPTIBLE


def test_an_orphan_rescued_orphan_limit_times_fails_refunded(
    make_manager: Callable[..., JobManager], payer: str, credit_reasons: Callable[[str], list[str]]
) -> None:
    jm = make_manager(heartbeat_ttl=TTL)
    reaper = reaper_for(jm)
    mjid = jm.post(payer, "hd", SCENE).mjid
    queue = QueueName.PREEMPTIBLE
    for n in range(ORPHAN_LIMIT):
        take_off(jm, queue)
        assert reaper.reap_orphans(grace=0) == [(mjid, QueueName.STANDARD)], n
        queue = QueueName.STANDARD
    last = take_off(jm, queue)
    assert last == f"{mjid}-q{ORPHAN_LIMIT}"
    assert reaper.reap_orphans(grace=0) == [(mjid, JobState.FAILED)]
    v = jm.get(mjid)
    assert v.state is JobState.FAILED and v.error is not None
    assert f"rescued {ORPHAN_LIMIT} times" in v.error and last in v.error
    assert credit_reasons(mjid) == [CHARGE, REFUND] and jm.credits(payer) == CREDITS
    assert reaper.reap_orphans(grace=0) == [] and not jm.redis.sismember(queued_key(), mjid)


def test_the_reaper_thread_reaps_by_itself_until_stopped(make_manager: Callable[..., JobManager], payer: str) -> None:
    jm = make_manager(heartbeat_ttl=TTL)
    mjid = jm.post(payer, "preview", SCENE).mjid
    jm.mark_started(mjid, "worker-a", rq_job=take_off(jm, QueueName.PREEMPTIBLE))
    reaper = Reaper(jm, interval=0.1)
    reaper.start()
    try:
        deadline = time.monotonic() + 10
        while jm.get(mjid).state is not JobState.QUEUED:
            assert time.monotonic() < deadline, f"{mjid} still {jm.get(mjid).state} 10 s after its heartbeat TTL"
            time.sleep(0.05)
    finally:
        reaper.stop()
        reaper.join(timeout=5)
    assert not reaper.is_alive() and jm.get(mjid).queue is QueueName.STANDARD
