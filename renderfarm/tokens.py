"""API tokens: one per user, made by `invoke seed-credits`, and one per worker credential, made by
`invoke worker-config`; both kept in Postgres only as a sha256.

A token is `secrets.token_urlsafe(32)` (256 random bits), so a plain sha256 is the right hash for it: no
salt or slow hash is needed against guessing, and the hash can be looked up directly (a unique index on
users.token_hash), which also leaves no secret-dependent comparison to time.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import sqlalchemy.exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from renderfarm.db import AUTOCOMMIT, User, WorkerCredential
from renderfarm.errors import RenderfarmError

TOKEN_BYTES = 32


class Unauthenticated(RenderfarmError):
    """No token, or one that belongs to nobody (never made, or rotated away): HTTP 401."""


class Forbidden(RenderfarmError):
    """A valid token asking for another user's data: HTTP 403."""


@dataclass(frozen=True)
class TokenUser:
    """Whom a request's token belongs to."""

    user_id: int
    email: str


@dataclass(frozen=True)
class TokenWorker:
    """The worker credential a request's worker token belongs to (its name, which its Redis user shares)."""

    name: str


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(user: User, *, rotate: bool = False) -> str | None:
    """Give `user` (a row loaded FOR UPDATE in the caller's transaction) a token when they have none, or a
    new one when `rotate`: the old one stops working when the transaction commits. Returns the new token
    (the only time it exists in clear), or None when the user keeps theirs."""
    if user.token_hash is not None and not rotate:
        return None
    token = new_token()
    user.token_hash = token_hash(token)
    return token


def find_token_user(session: Session, token: str) -> TokenUser | None:
    query = select(User.id, User.email).where(User.token_hash == token_hash(token))
    row = session.connection(execution_options=AUTOCOMMIT).execute(query).first()  # one read: no transaction
    return None if row is None else TokenUser(user_id=row.id, email=row.email)


def missing_token() -> Unauthenticated:
    return Unauthenticated(
        "missing API token: send 'Authorization: Bearer <token>' (the token is made by"
        " invoke seed-credits --user EMAIL, and kept in the state folder's tokens/)"
    )


def unknown_token() -> Unauthenticated:
    return Unauthenticated(
        "unknown API token (never made, or replaced): read it again from the state folder's tokens/,"
        " or make a new one: invoke seed-credits --user EMAIL --rotate-token"
    )


class Authenticator:
    """Finds a token's user in Postgres. While Postgres does not answer, a token verified there within the
    last `grace` seconds is still accepted (so a client can keep polling its jobs, which live in Redis);
    any other token then gets the database's error (503). Postgres, when it answers, always decides: a
    token it does not know is dropped from the memory at once."""

    def __init__(self, sessions: sessionmaker[Session], *, grace: float = 300.0, size: int = 1024) -> None:
        self.sessions = sessions
        self.grace = grace
        self.size = size
        self._known: OrderedDict[str, tuple[TokenUser, float]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str | None) -> TokenUser:
        if not token:
            raise missing_token()
        digest = token_hash(token)
        try:
            with self.sessions() as s:
                found = find_token_user(s, token)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError):
            remembered = self._recall(digest)
            if remembered is None:
                raise
            return remembered
        with self._lock:
            if found is None:
                self._known.pop(digest, None)
            else:
                self._known[digest] = (found, time.monotonic())
                self._known.move_to_end(digest)
                while len(self._known) > self.size:
                    self._known.popitem(last=False)
        if found is None:
            raise unknown_token()
        return found

    def _recall(self, digest: str) -> TokenUser | None:
        with self._lock:
            entry = self._known.get(digest)
        if entry is None or time.monotonic() - entry[1] > self.grace:
            return None
        return entry[0]


def find_token_worker(session: Session, token: str) -> TokenWorker | None:
    """The credential whose token this is, unless it is revoked."""
    row = session.execute(
        select(WorkerCredential.name).where(
            WorkerCredential.token_hash == token_hash(token), WorkerCredential.revoked_at.is_(None)
        )
    ).first()
    return None if row is None else TokenWorker(name=row.name)


class WorkerAuthenticator:
    """Finds a worker token's credential in Postgres on every request, with no memory: a revoked credential is
    refused at its next request. While Postgres is away a worker's request gets 503 and the worker retries (its
    job's heartbeat lives in Redis meanwhile; the outcome it reports needs Postgres anyway)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def verify(self, token: str | None) -> TokenWorker:
        if not token:
            raise Unauthenticated(
                "missing worker token: send 'Authorization: Bearer <token>' (a worker's token is in the file"
                " invoke worker-config --name NAME writes)"
            )
        with self.sessions() as s:
            found = find_token_worker(s, token)
        if found is None:
            raise Unauthenticated(
                "unknown or revoked worker token: make a new worker file with invoke worker-config --name NAME --rotate"
            )
        return found
