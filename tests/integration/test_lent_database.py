"""The database connection a worker lends its forked work horses (renderfarm.worker.lent_database), on the stack's real
Postgres: reused while each horse leaves it clean; replaced, with the dead horse's transaction and locks,
when a horse ends with it in use (exited mid-transaction, killed mid-query)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from docker import DockerClient
from sqlalchemy import create_engine, text

from provisioner.config import Settings
from provisioner.services import db_url
from provisioner.worker import farm_settings
from renderfarm.jobs import JobManager
from renderfarm.worker.lent_database import LentDatabase
from tests.stackutil import isolated_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    with isolated_stack(docker_client, tmp_path_factory.mktemp("horse-db"), blender_link=host_blender) as settings:
        yield settings


@pytest.fixture
def lent(stack: Settings) -> Iterator[LentDatabase]:
    db = LentDatabase(farm_settings(stack).service)
    db.open(warm=lambda sessions: JobManager(None, sessions).warm_statements())  # type: ignore[arg-type]
    yield db
    db.close()


def horse(lent: LentDatabase, body: Callable[[LentDatabase], str], *, kill_after: float | None = None) -> str | None:
    """Fork a horse the way the worker does; return what body() answered (None if it was killed)."""
    read, write = os.pipe()
    lent.before_horse()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        code = 0
        try:
            os.write(write, body(lent).encode())
        except BaseException:  # noqa: BLE001 - report by exit code
            code = 1
        os._exit(code)
    os.close(write)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    lent.after_horse()
    with os.fdopen(read, "rb") as f:
        answer = f.read().decode()
    return answer or None


def backend_pid(lent: LentDatabase) -> str:
    with lent.borrow().begin() as s:
        pid = s.scalar(text("SELECT pg_backend_pid()"))
    lent.release()
    return str(pid)


def test_clean_horses_share_one_backend(lent: LentDatabase) -> None:
    first = horse(lent, backend_pid)
    assert first is not None and first == horse(lent, backend_pid) == horse(lent, backend_pid)


def test_horse_gone_mid_transaction_takes_its_lock_with_it(lent: LentDatabase, stack: Settings) -> None:
    def hold_lock_and_exit(db: LentDatabase) -> str:
        s = db.borrow()()
        s.execute(text("SELECT pg_advisory_xact_lock(4242)"))
        pid = s.scalar(text("SELECT pg_backend_pid()"))
        return str(pid)  # never committed, closed or released: the horse just ends

    before = horse(lent, hold_lock_and_exit)
    other = create_engine(db_url(stack))
    try:
        deadline = time.monotonic() + 10
        with other.connect() as conn:
            while not conn.scalar(text("SELECT pg_try_advisory_lock(4242)")):
                assert time.monotonic() < deadline, "the dead horse's transaction still holds its lock"
                time.sleep(0.1)
            conn.scalar(text("SELECT pg_advisory_unlock(4242)"))
    finally:
        other.dispose()
    after = horse(lent, backend_pid)
    assert after is not None and after != before, "the connection was replaced"


def test_horse_killed_mid_query_leaves_no_stale_answer(lent: LentDatabase) -> None:
    def slow(db: LentDatabase) -> str:
        with db.borrow().begin() as s:
            s.execute(text("SELECT pg_sleep(3), 'stale'"))
        return "finished"

    assert horse(lent, slow, kill_after=0.5) is None

    def fresh(db: LentDatabase) -> str:
        started = time.monotonic()
        with db.borrow().begin() as s:
            value = s.scalar(text("SELECT 'fresh'"))
        db.release()
        return f"{value} {time.monotonic() - started:.1f}"

    answer = horse(lent, fresh)
    assert answer is not None
    value, seconds = answer.split()
    assert value == "fresh" and float(seconds) < 2.0
