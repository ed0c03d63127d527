"""The render system's RENDERFARM_* variables: where Redis and Postgres are (read here, when asked), and the
others, each with the one module that reads it. The api container gets them from compose/compose.yaml; a host
worker from provisioner.worker (out of renderdev's RENDERDEV_* settings).

| variable                        | default        | read by                                       |
| ------------------------------- | -------------- | --------------------------------------------- |
| RENDERFARM_REDIS_HOST           | 127.0.0.1      | ServiceSettings (here)                        |
| RENDERFARM_REDIS_PORT           | 6379           | ServiceSettings                               |
| RENDERFARM_REDIS_DB             | 0              | ServiceSettings                               |
| RENDERFARM_REDIS_PASSWORD_FILE  | (none)         | ServiceSettings                               |
| RENDERFARM_DB_HOST              | 127.0.0.1      | ServiceSettings                               |
| RENDERFARM_DB_PORT              | 5432           | ServiceSettings                               |
| RENDERFARM_DB_USER              | renderfarm     | ServiceSettings                               |
| RENDERFARM_DB_NAME              | renderfarm     | ServiceSettings                               |
| RENDERFARM_DB_PASSWORD_FILE     | (none)         | ServiceSettings                               |
| RENDERFARM_HEARTBEAT_TTL        | 20             | Reliability (here)                            |
| RENDERFARM_REAP_INTERVAL        | 5              | Reliability                                   |
| RENDERFARM_MAX_LOST             | 2              | Reliability                                   |
| RENDERFARM_HD_PRICE             | 10             | renderfarm.core (the API's price of HD)       |
| RENDERFARM_RENDERS_DIR          | /srv/renders   | renderfarm.core (serves); renderfarm.work (writes) |
| RENDERFARM_BLENDER              | blender        | renderfarm.work (Blender for a job without a warm one) |
| RENDERFARM_PREVIEW_SAMPLES      | 16             | renderfarm.render (the preview profile)       |
| RENDERFARM_HD_SAMPLES           | 32             | renderfarm.render (the HD profile)            |

Passwords live in files (compose mounts them at /run/secrets/...); they are read each time a
connection is configured, so a rotated secret needs no restart of the reader's settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

from renderfarm.errors import RenderConfigError

PREFIX = "RENDERFARM_"


@dataclass(frozen=True)
class ServiceSettings:
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 0
    redis_password_file: Path | None = None
    db_host: str = "127.0.0.1"
    db_port: int = 5432
    db_user: str = "renderfarm"
    db_name: str = "renderfarm"
    db_password_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read RENDERFARM_* from environ (default: os.environ, now). Unset variables keep the defaults."""
        env = os.environ if environ is None else environ
        d = cls()

        def text(name: str, default: str) -> str:
            return env.get(PREFIX + name, "").strip() or default

        def number(name: str, default: int, low: int, high: int) -> int:
            raw = env.get(PREFIX + name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise RenderConfigError(f"{PREFIX}{name}={raw!r} is not a whole number") from None
            if not low <= value <= high:
                raise RenderConfigError(f"{PREFIX}{name}={value} is out of range ({low}..{high})")
            return value

        def path(name: str) -> Path | None:
            raw = env.get(PREFIX + name, "").strip()
            return Path(raw) if raw else None

        return cls(
            redis_host=text("REDIS_HOST", d.redis_host),
            redis_port=number("REDIS_PORT", d.redis_port, 1, 65535),
            redis_db=number("REDIS_DB", d.redis_db, 0, 15),
            redis_password_file=path("REDIS_PASSWORD_FILE"),
            db_host=text("DB_HOST", d.db_host),
            db_port=number("DB_PORT", d.db_port, 1, 65535),
            db_user=text("DB_USER", d.db_user),
            db_name=text("DB_NAME", d.db_name),
            db_password_file=path("DB_PASSWORD_FILE"),
        )

    def redis_password(self) -> str | None:
        return _read_secret(self.redis_password_file, "REDIS_PASSWORD_FILE")

    def db_password(self) -> str | None:
        return _read_secret(self.db_password_file, "DB_PASSWORD_FILE")

    def db_url(self) -> URL:
        """The SQLAlchemy URL (psycopg 3 driver); the password is read from its file now."""
        return URL.create(
            "postgresql+psycopg",
            username=self.db_user,
            password=self.db_password(),
            host=self.db_host,
            port=self.db_port,
            database=self.db_name,
        )


def _read_secret(path: Path | None, variable: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise RenderConfigError(f"cannot read {PREFIX}{variable}={path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class Reliability:
    """How lost workers are found: the heartbeat's TTL, how often the reaper looks, how many losses a job
    survives. Read from RENDERFARM_HEARTBEAT_TTL / RENDERFARM_REAP_INTERVAL / RENDERFARM_MAX_LOST when asked."""

    heartbeat_ttl: float = 20.0
    reap_interval: float = 5.0
    max_lost: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Reliability:
        env = os.environ if environ is None else environ
        d = cls()

        def number(name: str, default: float, low: float, high: float) -> float:
            raw = env.get(PREFIX + name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise RenderConfigError(f"{PREFIX}{name}={raw!r} is not a number") from None
            if not low <= value <= high:
                raise RenderConfigError(f"{PREFIX}{name}={value} is out of range ({low}..{high})")
            return value

        return cls(
            heartbeat_ttl=number("HEARTBEAT_TTL", d.heartbeat_ttl, 1, 3600),
            reap_interval=number("REAP_INTERVAL", d.reap_interval, 0.1, 3600),
            max_lost=int(number("MAX_LOST", d.max_lost, 0, 100)),
        )
