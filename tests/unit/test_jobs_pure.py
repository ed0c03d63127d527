from __future__ import annotations

import pytest

from renderfarm.core import JobOut, hd_price
from renderfarm.credits import BadCredits, check_email, parse_amount
from renderfarm.errors import InsufficientCredits, NoSuchJob, RenderfarmError, UnknownUser
from renderfarm.jobs import JobView
from renderfarm.keys import TRANSITIONS, JobState, QueueName, attempts_key, can_move, mq_index_key, mq_key, scene_key


def test_keys_are_built_in_one_place() -> None:
    assert mq_key("abc") == "renderfarm:mq:abc"
    assert mq_index_key() == "renderfarm:mq"
    assert attempts_key("abc") == "renderfarm:mq:abc:attempts"
    assert scene_key("abc") == "renderfarm:mq:abc:scene"
    assert [q.value for q in QueueName] == ["pq", "sq"]


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


@pytest.mark.parametrize(("raw", "value"), [("1", 1), ("100", 100), (" 7 ", 7), (42, 42)])
def test_amounts_accepted(raw: str | int, value: int) -> None:
    assert parse_amount(raw) == value


@pytest.mark.parametrize("raw", ["-5", "0", "2.5", "1e3", "ten", "", "99999999"])
def test_amounts_refused_naming_the_value(raw: str) -> None:
    with pytest.raises(BadCredits) as err:
        parse_amount(raw)
    assert "credits must be" in str(err.value)


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "a b@c.d", "x@y/z.com", "../x@y.z"])
def test_bad_emails_refused(email: str) -> None:
    with pytest.raises(BadCredits):
        check_email(email)


def test_errors_share_one_root_and_name_the_thing() -> None:
    for exc in (NoSuchJob("j1"), UnknownUser("a@b.c"), InsufficientCredits("a@b.c", 3, 10)):
        assert isinstance(exc, RenderfarmError)
    assert str(NoSuchJob("j1")) == "no such job: j1"
    msg = str(InsufficientCredits("a@b.c", 3, 10))
    assert "has 3" in msg and "price is 10" in msg and "invoke seed-credits" in msg


def test_hd_price_from_env_at_call_time() -> None:
    assert hd_price({}) == 10
    assert hd_price({"RENDERFARM_HD_PRICE": "25"}) == 25
    with pytest.raises(RenderfarmError):
        hd_price({"RENDERFARM_HD_PRICE": "-1"})


def test_job_view_round_trip_and_image_url_only_when_finished() -> None:
    h = {
        "mjid": "m1",
        "state": "queued",
        "queue": "pq",
        "quality": "hd",
        "user": "a@b.c",
        "attempts": "0",
        "created_at": "t0",
        "price": "10",
    }
    v = JobView.from_hash(h)
    assert v.state is JobState.QUEUED and v.queue is QueueName.PREEMPTIBLE and v.price == 10
    assert JobOut.of(v).image_url is None
    done = JobView.from_hash({**h, "state": "finished", "image": "m1.png", "attempts": "1"})
    assert JobOut.of(done).image_url == "/renders/m1/image"
