"""Apply the Alembic migrations (idempotent; serialised by a Postgres advisory lock)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 0x72656E64  # "rend": one lock id for every renderfarm migration run


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`. Safe to call from several processes at once."""
    cfg = alembic_config()
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
