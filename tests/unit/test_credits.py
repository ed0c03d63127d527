"""renderfarm.credits: amounts and emails are checked before anything is written."""

from __future__ import annotations

import pytest

from renderfarm.credits import BadCredits, check_email, parse_amount


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
