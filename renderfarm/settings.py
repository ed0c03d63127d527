"""Every RENDERFARM_* variable the render system reads, read here and nowhere else, when asked (never at import).

The api container gets them from compose/compose.yaml. A host worker (`invoke worker`) is given its settings as
objects by provisioner.worker, out of renderdev's RENDERDEV_* settings; it still reads the render samples (and
anything renderdev does not set) from its environment through `FarmSettings.from_env`. A worker started by rq's
own CLI reads them all from its environment the same way.

| variable                        | default        | used by                                                      |
| ------------------------------- | -------------- | ------------------------------------------------------------ |
| RENDERFARM_REDIS_HOST           | 127.0.0.1      | ServiceSettings: the API, the worker                         |
| RENDERFARM_REDIS_PORT           | 6379           | ServiceSettings                                              |
| RENDERFARM_REDIS_DB             | 0              | ServiceSettings                                              |
| RENDERFARM_REDIS_PASSWORD_FILE  | (none)         | ServiceSettings                                              |
| RENDERFARM_DB_HOST              | 127.0.0.1      | ServiceSettings                                              |
| RENDERFARM_DB_PORT              | 5432           | ServiceSettings                                              |
| RENDERFARM_DB_USER              | renderfarm     | ServiceSettings                                              |
| RENDERFARM_DB_NAME              | renderfarm     | ServiceSettings                                              |
| RENDERFARM_DB_PASSWORD_FILE     | (none)         | ServiceSettings                                              |
| RENDERFARM_HEARTBEAT_TTL        | 20             | Reliability: the API's and the worker's reaper, the worker   |
| RENDERFARM_REAP_INTERVAL        | 5              | Reliability                                                  |
| RENDERFARM_MAX_LOST             | 2              | Reliability                                                  |
| RENDERFARM_HD_PRICE             | 10             | FarmSettings.hd_price: the API's price of an HD render       |
| RENDERFARM_RENDERS_DIR          | /srv/renders   | FarmSettings.renders_dir: the API serves, the worker writes  |
| RENDERFARM_BLENDER              | blender        | FarmSettings.blender_path: a job's Blender without a warm one |
| RENDERFARM_PREVIEW_SAMPLES      | 16             | FarmSettings.samples: the preview profile (renderfarm.quality) |
| RENDERFARM_HD_SAMPLES           | 32             | FarmSettings.samples: the HD profile                         |
| RENDERFARM_WORKER_CONFIG        | (none)         | FarmSettings.access: a worker file (WorkerAccess): API only  |
| RENDERFARM_QUEUES               | pq,sq          | WorkerOptions: what `python -m renderfarm.worker` serves     |
| RENDERFARM_WARM_BLENDER         | true           | WorkerOptions: keep one Blender loaded (false: one per job)  |
| RENDERFARM_WARM_MAX_JOBS        | 50             | WorkerOptions: jobs a warm Blender serves before a fresh one |

The last three are read only by a worker that starts from its environment alone (`python -m renderfarm.worker`, the
worker image's command); a host worker gets them from renderdev's settings.

Every number goes through one parser (`_Variables.number`): a bad value is a RenderConfigError naming the
variable, the value and the range. Passwords live in files (compose mounts them at /run/secrets/...); they are
read each time a connection is configured, so a rotated secret needs no restart of the reader's settings.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.errors import RenderConfigError
from renderfarm.keys import QueueName
from renderfarm.quality import DEFAULT_PROFILES, MAX_SAMPLES, Quality, RenderProfile, profile_for

if TYPE_CHECKING:
    from sqlalchemy.engine import URL  # imported when a URL is made: `invoke setup` reads settings, never a database

PREFIX = "RENDERFARM_"


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class _Variables:
    """RENDERFARM_* of one environment (default: os.environ, now). Blank counts as unset: the default."""

    def __init__(self, environ: Mapping[str, str] | None) -> None:
        self.env = os.environ if environ is None else environ

    def raw(self, name: str) -> str:
        return self.env.get(PREFIX + name, "").strip()

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def path(self, name: str) -> Path | None:
        raw = self.raw(name)
        return Path(raw) if raw else None

    def flag(self, name: str, default: bool) -> bool:
        raw = self.raw(name).lower()
        if not raw:
            return default
        if raw in _TRUE or raw in _FALSE:
            return raw in _TRUE
        raise RenderConfigError(
            f"{PREFIX}{name}={self.raw(name)!r} is not true or false (1/0, yes/no, on/off; unset it for the default,"
            f" {str(default).lower()})"
        )

    def number(self, name: str, default: int, low: int, high: int | None = None) -> int:
        return int(self._number(name, default, low, high, whole=True))

    def real(self, name: str, default: float, low: float, high: float) -> float:
        return self._number(name, default, low, high, whole=False)

    def _number(self, name: str, default: float, low: float, high: float | None, *, whole: bool) -> float:
        raw = self.raw(name)
        if not raw:
            return default
        bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
        unset = f"unset it for the default, {default}"
        try:
            value = int(raw, 10) if whole else float(raw)
        except ValueError:
            kind = "a whole number" if whole else "a number"
            raise RenderConfigError(f"{PREFIX}{name}={raw!r} is not {kind} ({bounds}; {unset})") from None
        if value < low or (high is not None and value > high):
            raise RenderConfigError(f"{PREFIX}{name}={raw!r} is out of range ({bounds}; {unset})")
        return value


@dataclass(frozen=True)
class ServiceSettings:
    """Where Redis and Postgres are, and the files their passwords are in."""

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
        v, d = _Variables(environ), cls()
        return cls(
            redis_host=v.text("REDIS_HOST", d.redis_host),
            redis_port=v.number("REDIS_PORT", d.redis_port, 1, 65535),
            redis_db=v.number("REDIS_DB", d.redis_db, 0, 15),
            redis_password_file=v.path("REDIS_PASSWORD_FILE"),
            db_host=v.text("DB_HOST", d.db_host),
            db_port=v.number("DB_PORT", d.db_port, 1, 65535),
            db_user=v.text("DB_USER", d.db_user),
            db_name=v.text("DB_NAME", d.db_name),
            db_password_file=v.path("DB_PASSWORD_FILE"),
        )

    def redis_password(self) -> str | None:
        return _read_secret(self.redis_password_file, "REDIS_PASSWORD_FILE")

    def db_password(self) -> str | None:
        return _read_secret(self.db_password_file, "DB_PASSWORD_FILE")

    def db_url(self) -> URL:
        """The SQLAlchemy URL (psycopg 3 driver); the password is read from its file now."""
        from sqlalchemy.engine import URL

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
        v, d = _Variables(environ), cls()
        return cls(
            heartbeat_ttl=v.real("HEARTBEAT_TTL", d.heartbeat_ttl, 1, 3600),
            reap_interval=v.real("REAP_INTERVAL", d.reap_interval, 0.1, 3600),
            max_lost=v.number("MAX_LOST", d.max_lost, 0, 100),
        )


WORKER_FILE_FORMAT = "renderdev-worker/1"  # a stack on this host or its compose network: plain, no `ca`
WORKER_FILE_FORMAT_TLS = "renderdev-worker/2"  # an exposed stack: https API, Redis with TLS, and the `ca` to trust
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class WorkerAccess:
    """All a render worker on any host needs to take part in the stack's jobs: the file `invoke worker-config` writes
    (JSON, mode 0600). The API's URL and this credential's worker token (renderfarm.worker_api), and its Redis user,
    which reaches rq's keys only. No database credential, no renders folder: the worker uploads its images.

    `ca`: for a stack exposed over the network (format renderdev-worker/2), the stack's CA certificate (PEM), the only
    one the worker trusts for both the API (https) and Redis (TLS) (renderfarm.tls). None: format renderdev-worker/1,
    a stack reached over loopback or its compose network, in plain text."""

    name: str
    api_url: str
    token: str
    redis_host: str
    redis_port: int
    redis_user: str
    redis_password: str
    ca: str | None = None

    @property
    def format(self) -> str:
        return WORKER_FILE_FORMAT if self.ca is None else WORKER_FILE_FORMAT_TLS

    def to_json(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if k != "ca" or v is not None}
        return json.dumps({"format": self.format, **fields}, indent=2) + "\n"

    @classmethod
    def from_file(cls, path: Path, *, private: bool = True) -> WorkerAccess:
        """Read a worker file; RenderConfigError naming the file and what is wrong (unreadable, readable by others
        when `private`, another format, a missing field). Not `private`: the copy renderdev mounts into worker
        containers, kept in the stack's 0700 secrets folder with the mode compose mounts secrets with."""
        hint = "make one with: invoke worker-config --name NAME --output FILE"
        try:
            mode = path.stat().st_mode
            raw = json.loads(path.read_text())
        except OSError as exc:
            raise RenderConfigError(f"cannot read the worker file {path}: {exc.strerror} ({hint})") from exc
        except ValueError as exc:
            raise RenderConfigError(f"the worker file {path} is not JSON ({exc}; {hint})") from exc
        if private and mode & (stat.S_IRWXG | stat.S_IRWXO) and not path.is_relative_to("/run/secrets"):
            # compose mounts secrets with the host file's mode; anywhere else the file must be its owner's alone
            raise RenderConfigError(
                f"the worker file {path} is readable by others (mode {mode & 0o777:o}): chmod 600 {path}"
            )
        formats = (WORKER_FILE_FORMAT, WORKER_FILE_FORMAT_TLS)
        if not isinstance(raw, dict) or raw.get("format") not in formats:
            fmt = raw.get("format") if isinstance(raw, dict) else None
            raise RenderConfigError(
                f"the worker file {path} has format {fmt!r}, not {' or '.join(map(repr, formats))} ({hint})"
            )
        tls = raw["format"] == WORKER_FILE_FORMAT_TLS
        try:
            access = cls(
                name=str(raw["name"]),
                api_url=str(raw["api_url"]).rstrip("/"),
                token=str(raw["token"]),
                redis_host=str(raw["redis_host"]),
                redis_port=int(raw["redis_port"]),
                redis_user=str(raw["redis_user"]),
                redis_password=str(raw["redis_password"]),
                ca=str(raw["ca"]) if tls else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RenderConfigError(f"the worker file {path} lacks or mangles {exc} ({hint})") from exc
        if tls and (PEM_CERTIFICATE not in (access.ca or "") or not access.api_url.startswith("https://")):
            raise RenderConfigError(
                f"the worker file {path} (format {WORKER_FILE_FORMAT_TLS}) needs an https api_url and a PEM"
                f" certificate in `ca` ({hint})"
            )
        return access


def _default_samples() -> Mapping[Quality, int]:
    return {quality: profile.samples for quality, profile in DEFAULT_PROFILES.items()}


@dataclass(frozen=True)
class FarmSettings:
    """All of the render system's settings: the services, the reliability timings, the price of HD (the API),
    the renders folder (the API serves it, the worker writes it), the Blender a job runs without a warm one
    and the samples of each quality tier (the worker)."""

    service: ServiceSettings = field(default_factory=ServiceSettings)
    reliability: Reliability = field(default_factory=Reliability)
    hd_price: int = 10
    renders_dir: Path = Path("/srv/renders")
    blender_path: str = "blender"
    samples: Mapping[Quality, int] = field(default_factory=_default_samples)
    access: WorkerAccess | None = None  # a worker that reaches the stack only through the API and rq (its file)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FarmSettings:
        """Read every RENDERFARM_* from environ (default: os.environ, now). Unset variables keep the defaults."""
        v, d = _Variables(environ), cls()
        return cls(
            service=ServiceSettings.from_env(environ),
            reliability=Reliability.from_env(environ),
            hd_price=v.number("HD_PRICE", d.hd_price, 0),
            renders_dir=v.path("RENDERS_DIR") or d.renders_dir,
            blender_path=v.text("BLENDER", d.blender_path),
            samples={
                quality: v.number(samples_variable(quality), d.samples[quality], 1, MAX_SAMPLES) for quality in Quality
            },
            access=WorkerAccess.from_file(access_file) if (access_file := v.path("WORKER_CONFIG")) else None,
        )

    def profile(self, quality: Quality | str) -> RenderProfile:
        """The profile a job of this quality renders at ("preview" or "hd"), with these settings' samples."""
        return profile_for(quality, self.samples)


def samples_variable(quality: Quality) -> str:
    """The variable (without RENDERFARM_) that sets the samples of one tier: PREVIEW_SAMPLES, HD_SAMPLES."""
    return f"{quality.name}_SAMPLES"


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker that starts from its environment alone runs (`python -m renderfarm.worker`, the worker image's
    command): the queues it serves, in order, and its warm Blender."""

    queues: tuple[QueueName, ...] = (QueueName.PREEMPTIBLE, QueueName.STANDARD)
    warm_blender: bool = True
    warm_max_jobs: int = 50

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerOptions:
        v, d = _Variables(environ), cls()
        return cls(
            queues=parse_queues(v.text("QUEUES", ",".join(d.queues)), f"{PREFIX}QUEUES"),
            warm_blender=v.flag("WARM_BLENDER", d.warm_blender),
            warm_max_jobs=v.number("WARM_MAX_JOBS", d.warm_max_jobs, 1, 100_000),
        )


def parse_queues(raw: str, where: str) -> tuple[QueueName, ...]:
    """A comma list of queue names (pq, sq), in order, each once; `where` names the value in the error."""
    names = [q.strip() for q in raw.split(",") if q.strip()]
    allowed = {q.value for q in QueueName}
    unknown = [q for q in names if q not in allowed]
    if unknown or not names:
        raise RenderConfigError(
            f"{where}={raw!r}: unknown queue(s) {', '.join(unknown) or '(none given)'}; use pq, sq or pq,sq"
        )
    return tuple(QueueName(q) for q in dict.fromkeys(names))
