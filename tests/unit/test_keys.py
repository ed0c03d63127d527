"""renderfarm.keys: job states and their transitions, attempt outcomes, queue names, credit reasons, Redis keys."""

from __future__ import annotations

import pytest

from renderfarm.keys import (
    TRANSITIONS,
    CreditReason,
    JobState,
    Outcome,
    QueueName,
    attempts_key,
    can_move,
    mq_index_key,
    mq_key,
    scene_key,
)


def test_keys_are_built_in_one_place() -> None:
    assert mq_key("abc") == "renderfarm:mq:abc"
    assert mq_index_key() == "renderfarm:mq"
    assert attempts_key("abc") == "renderfarm:mq:abc:attempts"
    assert scene_key("abc") == "renderfarm:mq:abc:scene"
    assert [q.value for q in QueueName] == ["pq", "sq"]


def test_values_are_what_redis_postgres_and_the_api_carry() -> None:
    assert [s.value for s in JobState] == ["queued", "started", "finished", "failed"]
    assert {o.value for o in Outcome} == {"finished", "failed", "preempted", "interrupted", "lost"}
    assert [r.value for r in CreditReason] == ["seed", "charge", "refund"]


def test_only_losses_without_notice_count_against_max_lost() -> None:
    assert {o for o in Outcome if o.counted} == {Outcome.LOST, Outcome.INTERRUPTED}


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        (JobState.QUEUED, JobState.STARTED, True),
        (JobState.STARTED, JobState.FINISHED, True),
        (JobState.STARTED, JobState.FAILED, True),
        (JobState.STARTED, JobState.QUEUED, True),  # retried on sq after preemption
        (JobState.QUEUED, JobState.FINISHED, False),
        (JobState.FINISHED, JobState.STARTED, False),
        (JobState.FAILED, JobState.QUEUED, False),
        (JobState.FINISHED, JobState.FAILED, False),
    ],
)
def test_transitions(old: JobState, new: JobState, ok: bool) -> None:
    assert can_move(old, new) is ok


def test_final_states_have_no_way_out() -> None:
    for state in JobState:
        assert state.final == (TRANSITIONS[state] == frozenset())
