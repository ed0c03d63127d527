"""Credits: add to a user's append-only ledger (creating the user, with an API token, on first use)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from renderfarm.db import CreditEntry, User, balance
from renderfarm.errors import RenderfarmError
from renderfarm.keys import CreditReason
from renderfarm.tokens import issue_token

# Letters, digits and ._%+- before the @, a dotted domain after it: no quotes, spaces, slashes or shell
# metacharacters ($ ` ; | & < > ( ) \), even where RFC 5322 would allow them.
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
MAX_GRANT = 1_000_000


class BadCredits(RenderfarmError):
    pass


def parse_amount(raw: str | int) -> int:
    """A positive whole number of credits; anything else is refused with the value named."""
    text = str(raw).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise BadCredits(f"credits must be a positive whole number, got {raw!r}")
    amount = int(text)
    if not 1 <= amount <= MAX_GRANT:
        raise BadCredits(f"credits must be from 1 to {MAX_GRANT}, got {amount}")
    return amount


def check_email(email: str) -> str:
    if not EMAIL.fullmatch(email) or len(email) > 320:
        raise BadCredits(f"not an email address: {email!r}")
    return email


@dataclass(frozen=True)
class Seeded:
    """What add_credits did: the new balance, and the user's new API token when one was made (a new user, a
    user who had none, or a rotation): the only time the token exists in clear."""

    email: str
    balance: int
    token: str | None


def add_credits(sessions: sessionmaker[Session], email: str, amount: int, *, rotate_token: bool = False) -> Seeded:
    """Create the user if needed (with an API token), append a 'seed' entry of `amount` (none for 0), make a
    new token if asked, and return the balance: one transaction, the user's row locked, so two seeds at once
    never give one user two tokens."""
    check_email(email)
    if amount < 0:
        raise BadCredits(f"credits must be a positive whole number, got {amount}")
    with sessions.begin() as s:
        s.execute(pg_insert(User).values(email=email).on_conflict_do_nothing(index_elements=["email"]))
        user = s.scalar(select(User).where(User.email == email).with_for_update())
        assert user is not None  # just inserted or already there
        token = issue_token(user, rotate=rotate_token)
        if amount:
            s.add(CreditEntry(user_id=user.id, amount=amount, reason=CreditReason.SEED))
        s.flush()
        return Seeded(email=email, balance=balance(s, user.id), token=token)
