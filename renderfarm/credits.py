"""Credits: add to a user's append-only ledger (creating the user on first use) and read the balance."""

from __future__ import annotations

import re

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from renderfarm.db import CreditEntry, User, balance, find_user
from renderfarm.errors import RenderfarmError

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


def add_credits(sessions: sessionmaker[Session], email: str, amount: int) -> int:
    """Create the user if needed, append a 'seed' entry, return the new balance (one transaction)."""
    check_email(email)
    with sessions.begin() as s:
        s.execute(pg_insert(User).values(email=email).on_conflict_do_nothing(index_elements=["email"]))
        user = find_user(s, email)
        assert user is not None  # just inserted or already there
        s.add(CreditEntry(user_id=user.id, amount=amount, reason="seed"))
        s.flush()
        return balance(s, user.id)
