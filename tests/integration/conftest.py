"""A JobManager on the kit's stack (renderdev_stack) for the tests that drive it directly: test_jobmanager.py and
test_reaper.py. Its Redis is a database of its own on the stack's Redis, flushed around each test (as rq's own tests
do): the stack's API and its reaper work in database 0 and never see these jobs. Credits are in the stack's Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from renderdev.testing import RenderStack
from renderfarm import migrate
from renderfarm.credits import add_credits
from renderfarm.db import CreditEntry, make_sessionmaker
from renderfarm.jobs import JobManager

LEDGER_DB = 1  # the stack's Redis database for these tests' jobs; the API uses 0
HD_PRICE = 10
CREDITS = 100  # what each test's user starts with


@pytest.fixture
def ledger_redis(renderdev_stack: RenderStack) -> Iterator[redis.Redis]:
    base, _, _db = renderdev_stack.redis_url.rpartition("/")
    client = redis.Redis.from_url(f"{base}/{LEDGER_DB}")
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def ledger_sessions(renderdev_stack: RenderStack) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(renderdev_stack.database_url)
    migrate.upgrade(engine)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@pytest.fixture
def make_manager(ledger_redis: redis.Redis, ledger_sessions: sessionmaker[Session]) -> Callable[..., JobManager]:
    """JobManager(**options) on the tests' Redis database and the stack's Postgres (HD at HD_PRICE unless `prices`)."""

    def make(**options: Any) -> JobManager:
        return JobManager(ledger_redis, ledger_sessions, **{"prices": {"preview": 0, "hd": HD_PRICE}, **options})

    return make


@pytest.fixture
def payer(ledger_sessions: sessionmaker[Session]) -> str:
    """A fresh user with CREDITS credits (made as `invoke seed-credits` makes one); returns the email."""
    return add_credits(ledger_sessions, f"u{uuid.uuid4().hex[:12]}@example.com", CREDITS).email


@pytest.fixture
def credit_reasons(ledger_sessions: sessionmaker[Session]) -> Callable[[str], list[str]]:
    """The reasons of a render's credit entries in Postgres, oldest first: ["charge"], ["charge", "refund"]..."""

    def reasons(mjid: str) -> list[str]:
        with ledger_sessions() as s:
            return list(s.scalars(select(CreditEntry.reason).where(CreditEntry.mjid == mjid).order_by(CreditEntry.id)))

    return reasons
