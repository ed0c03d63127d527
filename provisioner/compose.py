"""The compose driver: `docker compose` (v2) when it exists, else `docker-compose` (v1).

Both are run the same way, `-p <project> -f compose/compose.yaml ...`, with the RENDERDEV_* variables
compose.yaml reads (image names, host ports, secrets folder). Nothing here relies on v2-only
features (no `up --wait`): readiness is waited for through the Docker API (provisioner.services).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from provisioner import proc
from provisioner.config import SERVICES, Settings
from provisioner.errors import CommandError, DockerError
from provisioner.secrets import secrets_dir

UP_TIMEOUT = 900.0  # `up` waits for redis and db to be healthy before it starts api
DOWN_TIMEOUT = 300.0
VERSION_TIMEOUT = 30.0
WORKER_SERVICE = "worker"  # compose.yaml's render worker service, under the profile below (`invoke workers`)
WORKERS_PROFILE = "workers"
INSTALL_HINT = (
    "install Compose v2 (the `docker compose` plugin; see README 'Prerequisites'),"
    " or Compose v1 (apt-get install docker-compose), then re-run"
)


@dataclass(frozen=True)
class ComposeDriver:
    argv: tuple[str, ...]  # ("/usr/bin/docker", "compose") or ("/usr/bin/docker-compose",)
    version: str  # e.g. "2.26.1"

    @property
    def major(self) -> int:
        head = self.version.lstrip("v").split(".", 1)[0]
        return int(head) if head.isdigit() else 0

    def describe(self) -> str:
        name = "docker compose" if len(self.argv) > 1 else "docker-compose"
        return f"{name} {self.version}"


_detected: dict[str, ComposeDriver] = {}


def detect_driver(path: str | None = None) -> ComposeDriver:
    """Find the compose command once per PATH: v2 plugin first, then the v1 (or standalone v2) binary."""
    search = path if path is not None else os.environ.get("PATH", os.defpath)
    if search in _detected:
        return _detected[search]
    driver = _probe_v2(search) or _probe_standalone(search)
    if driver is None:
        raise DockerError(
            f"neither `docker compose` (Compose v2) nor `docker-compose` (Compose v1) was found on PATH={search}",
            hint=INSTALL_HINT,
        )
    _detected[search] = driver
    return driver


def _version(argv: list[str]) -> str | None:
    try:
        out = proc.run([*argv, "version", "--short"], timeout=VERSION_TIMEOUT).stdout
    except CommandError:
        return None
    return out.strip().splitlines()[0].strip() if out.strip() else None


def _probe_v2(search: str) -> ComposeDriver | None:
    docker = shutil.which("docker", path=search)
    if docker is None:
        return None
    version = _version([docker, "compose"])
    return ComposeDriver((docker, "compose"), version) if version else None


def _probe_standalone(search: str) -> ComposeDriver | None:
    binary = shutil.which("docker-compose", path=search)
    if binary is None:
        return None
    version = _version([binary])
    return ComposeDriver((binary,), version) if version else None


CONTAINER_UID = 10001  # the worker image's user (compose/worker/Dockerfile); the api runs as it too


def container_user(uid: int | None = None, gid: int | None = None) -> str:
    """The uid:gid the api and worker containers run as: the host user's, or the worker image's own user for root
    (never root), so that the renders folder they share with host workers is theirs."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    return f"{CONTAINER_UID}:{CONTAINER_UID}" if uid == 0 else f"{uid}:{gid}"


def compose_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables compose.yaml reads. Pure: the same settings (and `extra`) give the same mapping. `extra`: the
    worker service's own variables (provisioner.workers), which its containers' config hash covers too."""
    env = {f"RENDERDEV_{svc.upper()}_IMAGE": settings.image(svc) for svc in (*SERVICES, WORKER_SERVICE)}
    env.update(
        RENDERDEV_BIND_HOST=settings.bind_host,
        RENDERDEV_REDIS_PORT=str(settings.redis_port),
        RENDERDEV_DB_PORT=str(settings.db_port),
        RENDERDEV_API_PORT=str(settings.api_port),
        RENDERDEV_DB_USER=settings.db_user,
        RENDERDEV_DB_NAME=settings.db_name,
        RENDERDEV_SECRETS_DIR=str(secrets_dir(settings)),
        RENDERDEV_RENDERS_DIR=str(settings.renders_dir),
        RENDERDEV_API_USER=container_user(),
        RENDERDEV_HD_PRICE=str(settings.hd_price),
        RENDERDEV_HEARTBEAT_TTL=str(settings.heartbeat_ttl),
        RENDERDEV_REAP_INTERVAL=str(settings.reap_interval),
        RENDERDEV_MAX_LOST=str(settings.max_lost),
    )
    if settings.live:
        env["RENDERDEV_LIVE_SOURCE"] = str(settings.live_source)
    if settings.exposed_address:  # compose/expose.yaml's variables
        from provisioner.tls import server_cert_digest

        env.update(
            RENDERDEV_EXPOSE_ADDRESS=settings.exposed_address,
            RENDERDEV_TLS_DIR=str(settings.tls_dir),
            RENDERDEV_TLS_DIGEST=server_cert_digest(settings),  # a new certificate recreates the containers
        )
    env.update(extra or {})
    env[CONFIG_HASH_VAR] = config_hash(settings, env)
    return env


CONFIG_HASH_VAR = "RENDERDEV_CONFIG_HASH"
CONFIG_HASH_LABEL = "org.renderdev.config-hash"


def config_hash(settings: Settings, env: dict[str, str]) -> str:
    """A digest of the compose files and the variables they read. Every container carries it as a label, so a
    changed file or setting shows as a stack to recreate, without asking compose."""
    h = hashlib.sha256()
    for path in settings.compose_files:
        try:
            h.update(path.read_bytes())
        except OSError:
            pass
    for key in sorted(env):
        h.update(f"\0{key}={env[key]}".encode())
    return h.hexdigest()[:16]


def compose_argv(driver: ComposeDriver, settings: Settings, *args: str) -> list[str]:
    files = [arg for path in settings.compose_files for arg in ("-f", str(path))]
    return [*driver.argv, "-p", settings.project, *files, *args]


def run_compose(
    settings: Settings,
    *args: str,
    driver: ComposeDriver | None = None,
    timeout: float = UP_TIMEOUT,
    extra_env: Mapping[str, str] | None = None,
) -> str:
    """Run one compose command for the settings' project; return its output (compose logs to stderr)."""
    drv = driver or detect_driver()
    done = proc.run(
        compose_argv(drv, settings, *args),
        env=compose_env(settings, extra_env),
        cwd=settings.compose_dir,
        timeout=timeout,
        hint=f"check {settings.compose_file} and the containers' logs"
        f" ({' '.join(drv.argv)} -p {settings.project} logs), then re-run: invoke services",
    )
    return (done.stdout or "") + (done.stderr or "")


def up(settings: Settings, *, driver: ComposeDriver | None = None, force_recreate: bool = False) -> None:
    """Create or update the project's containers, detached. Images are never built or pulled here."""
    args = ["up", "-d", "--no-build"] + (["--force-recreate"] if force_recreate else [])
    run_compose(settings, *args, driver=driver, timeout=UP_TIMEOUT)


def down(settings: Settings, *, volumes: bool, driver: ComposeDriver | None = None) -> None:
    """Remove the project's containers and network (and its named volumes with volumes=True). The workers profile is
    named so that every compose version removes the worker containers too (they stop as a preemption: SIGTERM)."""
    args = ["--profile", WORKERS_PROFILE, "down", "--remove-orphans"] + (["--volumes"] if volumes else [])
    run_compose(settings, *args, driver=driver, timeout=DOWN_TIMEOUT)
