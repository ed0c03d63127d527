from __future__ import annotations

import pytest

from renderfarm.core import JobOut, field_errors, hd_price
from renderfarm.credits import BadCredits, check_email, parse_amount
from renderfarm.db import User
from renderfarm.errors import InsufficientCredits, NoSuchJob, RenderfarmError, UnknownUser
from renderfarm.jobs import JobManager, JobView
from renderfarm.keys import (
    TRANSITIONS,
    JobState,
    QueueName,
    attempts_key,
    can_move,
    is_mjid,
    mq_index_key,
    mq_key,
    scene_key,
)
from renderfarm.tokens import issue_token, token_hash


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


def test_validation_errors_echo_a_short_preview_and_only_scalar_limits() -> None:
    errors = [
        {"type": "too_long", "loc": ("body", "scene", "camera", "position"), "msg": "List should have at most 3",
         "input": [1.5] * 100_000, "ctx": {"field_type": "List", "max_length": 3, "actual_length": 100_000}},
        {"type": "value_error", "loc": ("body", "x" * 1000), "msg": "Value error, " + "y" * 5000,
         "input": "z" * 10_000, "ctx": {"error": ValueError("z" * 10_000)}},
        {"type": "finite_number", "loc": ("body", "energy"), "msg": "Input should be a finite number",
         "input": float("nan"), "ctx": {"le": float("inf")}},
    ]  # fmt: skip
    position, custom, nan = field_errors(errors)
    assert position["input"].startswith("[1.5, 1.5") and len(position["input"]) <= 80
    assert position["ctx"] == {"field_type": "List", "max_length": 3, "actual_length": 100_000}
    assert len(custom["loc"][1]) == 80 and custom["loc"][1].endswith("…") and len(custom["msg"]) <= 320
    assert len(custom["input"]) <= 80 and "ctx" not in custom, "an exception in ctx is not sent back"
    assert nan["input"] == "nan" and nan["ctx"] == {"le": "inf"}, "JSON has no NaN or infinity"
    many = field_errors([errors[2]] * 50)
    assert len(many) == 21 and many[-1]["msg"] == "and 30 more invalid values"


def test_a_token_is_kept_as_its_sha256_and_only_a_new_or_rotated_one_is_returned() -> None:
    user = User(email="a@b.c")
    first = issue_token(user)
    assert first is not None and len(first) >= 43 and user.token_hash == token_hash(first) != first
    assert issue_token(user) is None and user.token_hash == token_hash(first), "kept"
    second = issue_token(user, rotate=True)
    assert second not in (None, first) and user.token_hash == token_hash(second)  # type: ignore[arg-type]
