"""Alembic environment: always run with a connection handed in by renderfarm.migrate.upgrade."""

from __future__ import annotations

from alembic import context

from renderfarm.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only renderfarm.migrate runs migrations
    raise RuntimeError("run migrations through renderfarm.migrate.upgrade(engine)")
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
