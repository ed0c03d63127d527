"""renderfarm.tokens: an API token is kept only as its hash."""

from __future__ import annotations

from renderfarm.db import User
from renderfarm.tokens import issue_token, token_hash


def test_a_token_is_kept_as_its_sha256_and_only_a_new_or_rotated_one_is_returned() -> None:
    user = User(email="a@b.c")
    first = issue_token(user)
    assert first is not None and len(first) >= 43 and user.token_hash == token_hash(first) != first
    assert issue_token(user) is None and user.token_hash == token_hash(first), "kept"
    second = issue_token(user, rotate=True)
    assert second not in (None, first) and user.token_hash == token_hash(second)  # type: ignore[arg-type]
