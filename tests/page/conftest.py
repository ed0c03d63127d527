"""Fixtures of the page tests: a Chromium for the session, users of the kit's stack, a tab signed in as one, and a
JobManager on the stack's Redis and Postgres for tests that move a job the way a worker would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, sync_playwright
from rq import Queue
from sqlalchemy import create_engine, select

from renderdev.testing import RenderStack, TestUser, seed_user
from renderfarm.db import Render, User, make_sessionmaker
from renderfarm.errors import InvalidTransition
from renderfarm.jobs import JobManager
from renderfarm.keys import JobState, QueueName, mq_key
from tests.page.browser import CHROMIUM, DESKTOP, LAUNCH_ARGS, PageSession, new_session

HD_PRICE = 10  # the kit's stack keeps the default price


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"the page tests drive Debian's chromium at {CHROMIUM}: run bash scripts/install-host.sh")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def manager(renderdev_stack: RenderStack) -> Iterator[JobManager]:
    """A JobManager on the stack's Redis and Postgres: what a worker uses to move jobs."""
    engine = create_engine(renderdev_stack.database_url)
    r = redis.Redis.from_url(renderdev_stack.redis_url)
    try:
        yield JobManager(r, make_sessionmaker(engine), prices={"preview": 0, "hd": HD_PRICE})
    finally:
        r.close()
        engine.dispose()


@pytest.fixture
def new_user(renderdev_stack: RenderStack, manager: JobManager) -> Iterator[Callable[..., TestUser]]:
    """Makes users (credits, token) in the stack. At the end, their jobs still queued are failed and taken off
    their queues, so that no later test's worker renders what a test without a worker left behind."""
    made: list[TestUser] = []

    def make(credits: int = 100) -> TestUser:
        user = seed_user(renderdev_stack.database_url, credits=credits)
        made.append(user)
        return user

    yield make
    for user in made:
        cancel_queued(manager, user.email)


def cancel_queued(jm: JobManager, email: str) -> None:
    with jm.sessions() as s:
        mjids = s.scalars(select(Render.mjid).join(User, User.id == Render.user_id).where(User.email == email)).all()
    for mjid in mjids:
        view = jm.get(mjid)
        if view.state is not JobState.QUEUED:
            continue
        rq_job = (jm.redis.hget(mq_key(mjid), "rq_job") or mjid.encode()).decode()
        for name in QueueName:
            Queue(name.value, connection=jm.redis).remove(rq_job)
        try:
            jm.mark_failed(mjid, "the test that made it has ended")
        except InvalidTransition:
            pass  # a worker took it meanwhile


@pytest.fixture
def open_page(
    chromium: Browser, renderdev_stack: RenderStack, new_user: Callable[..., TestUser]
) -> Iterator[Callable[..., PageSession]]:
    """Opens tabs on the page (a new browser context each: its own session storage). At the end each tab must
    have seen no page error and no dialog."""
    sessions: list[PageSession] = []

    def open_tab(user: TestUser | None = None, *, viewport: dict[str, int] = DESKTOP, **options: Any) -> PageSession:
        session = new_session(chromium, renderdev_stack.api_url, user or new_user(), viewport=viewport, **options)
        sessions.append(session)
        session.open()
        return session

    yield open_tab
    problems = [p for s in sessions for p in s.problems]
    for s in sessions:
        s.context.close()
    assert not problems, problems
