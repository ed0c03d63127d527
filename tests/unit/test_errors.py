"""renderfarm.errors: one root exception, and messages that name the thing."""

from __future__ import annotations

from renderfarm.errors import InsufficientCredits, NoSuchJob, RenderfarmError, UnknownUser


def test_errors_share_one_root_and_name_the_thing() -> None:
    for exc in (NoSuchJob("j1"), UnknownUser("a@b.c"), InsufficientCredits("a@b.c", 3, 10)):
        assert isinstance(exc, RenderfarmError)
    assert str(NoSuchJob("j1")) == "no such job: j1"
    msg = str(InsufficientCredits("a@b.c", 3, 10))
    assert "has 3" in msg and "price is 10" in msg and "invoke seed-credits" in msg
