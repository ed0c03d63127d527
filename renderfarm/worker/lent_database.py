"""One Postgres connection per worker, lent to each of its work horses in turn.

rq forks a work horse for every job. A database connection of the horse's own costs every job a TCP
connect, SCRAM authentication, a new server backend and SQLAlchemy's first-connect queries (about
10-25 ms here: more than all the rest of the JobManager's side of a job). Instead the worker's main
process opens one connection, never uses it itself, and each horse inherits it (the RenderWorker's `lent`,
renderfarm.worker.render_worker), with the already initialised engine.

Use is serialised: a worker runs one horse at a time, and its main process does not touch the
connection while a horse lives. A flag shared with the main process says whether the connection may be
in use: a horse sets it before it can send anything (`borrow()`), and clears it only when it is done
and the connection is clean: open, idle, outside any transaction, no command in flight (`release()`).
Right after the horse has ended, the main process replaces the connection if the flag is still set (a
horse killed mid-query or mid-transaction, a Postgres restart, any doubt), so a dead horse's transaction
and row locks end with it, as they would with a connection of its own. Automatic server-side prepared
statements are off, so a horse creates no session state the next horse's copy of the connection would
not know about. The SQL the horses run is compiled once, here (`open(warm=...)`), and inherited.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from collections.abc import Callable

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, configure_mappers, sessionmaker
from sqlalchemy.pool import StaticPool

from renderfarm.clients import CONNECT_TIMEOUT
from renderfarm.db import make_sessionmaker
from renderfarm.settings import ServiceSettings

log = logging.getLogger("renderfarm.worker.lent_database")
CLEAN, IN_USE = 1, 0


class LentDatabase:
    def __init__(self, settings: ServiceSettings) -> None:
        self.engine: Engine = create_engine(
            settings.db_url(),
            poolclass=StaticPool,  # exactly one connection, the one lent
            pool_pre_ping=True,  # a horse finds a dead connection (Postgres restarted) and reconnects
            connect_args={"connect_timeout": int(CONNECT_TIMEOUT), "prepare_threshold": None},
        )
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self._flag = mmap.mmap(-1, 1)  # MAP_SHARED | MAP_ANONYMOUS: the horses write, the main process reads
        self._dbapi: object | None = None
        self._warm: Callable[[sessionmaker[Session]], object] | None = None
        self._owner = os.getpid()

    # -- the worker's main process ---------------------------------------------------------------------
    def open(self, warm: Callable[[sessionmaker[Session]], object] | None = None) -> None:
        """Connect (SQLAlchemy initialises its dialect) once, here, for every horse to come; then run
        `warm(sessions)`, which should run the statements the horses will, so they inherit them compiled."""
        configure_mappers()
        with self.engine.connect() as conn:
            self._dbapi = conn.connection.dbapi_connection
        self._warm = warm
        if warm is not None:
            warm(self.sessions)
        self._flag[0] = CLEAN

    def before_horse(self) -> None:
        """Just before a fork: a connection to lend (if Postgres answers), not in use."""
        if self._dbapi is None:
            self._reopen()
        self._flag[0] = CLEAN

    def after_horse(self) -> None:
        """Right after a horse ended: replace the connection if the horse may have left it in use."""
        if self._flag[0] != CLEAN:
            log.info("the last work horse may have left the lent database connection in use: replacing it")
            self._reopen()

    def close(self) -> None:
        self.engine.dispose()
        self._dbapi = None

    def _reopen(self) -> None:
        self.close()
        try:
            self.open(self._warm)
        except Exception as exc:  # noqa: BLE001 - Postgres away: the next horse connects on its own
            log.warning("cannot open the database connection to lend (%s): the next job connects itself", exc)

    # -- a work horse ----------------------------------------------------------------------------------
    def borrow(self) -> sessionmaker[Session]:
        """In a horse, before any use: the sessions on the lent connection, now marked in use."""
        self._flag[0] = IN_USE
        return self.sessions

    def release(self) -> None:
        """As a horse's job ends: the connection is no longer in use, if it is left clean."""
        self._flag[0] = CLEAN if self.clean() else IN_USE

    def clean(self) -> bool:
        """Open, idle, outside a transaction, nothing in flight (libpq's own view of the connection)."""
        conn = self._dbapi
        if conn is None or os.getpid() == self._owner:
            return conn is not None
        with contextlib.suppress(Exception):
            from psycopg.pq import TransactionStatus

            return bool(
                not conn.closed  # type: ignore[attr-defined]
                and not conn.broken  # type: ignore[attr-defined]
                and conn.info.transaction_status == TransactionStatus.IDLE  # type: ignore[attr-defined]
            )
        return False
