"""The render stack for a test session: the project's redis, db and api images run by testcontainers'
DockerCompose from the project's own compose file, on free ports, under a compose project (and so a network)
of their own.

Every container carries the label `org.renderdev.testing.owner` = "<hostname>:<pid>" of the process that made it,
so a later session removes what a killed session (SIGKILL, a CI job cancelled) left behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testcontainers.compose import DockerCompose

from provisioner.compose import WORKERS_PROFILE
from provisioner.config import SERVICES, Settings, load_settings
from provisioner.dockerapi import remove_by_label
from provisioner.errors import RenderdevError
from provisioner.ports import free_port
from provisioner.proc import alive

if TYPE_CHECKING:
    import docker

OWNER_LABEL = "org.renderdev.testing.owner"
OWNER_VAR = "RENDERDEV_TESTING_OWNER"  # compose.yaml puts it in OWNER_LABEL
PROJECT_PREFIX = "rdtc"
LOG_TAIL = 60


class StackError(RenderdevError):
    """The test stack could not be brought up; the message carries the containers' log tails."""


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Compose(DockerCompose):
    """DockerCompose with an explicit environment: the variables that place the stack (ports, secrets folder,
    images) must win over whatever RENDERDEV_* a developer exported, and compose gives the shell's environment
    precedence over --env-file. testcontainers has no parameter for it, so its one subprocess call is replaced."""

    env: dict[str, str] = field(default_factory=dict)

    def _run_command(self, cmd: str | list[str], context: str | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(cmd, capture_output=True, check=True, cwd=context or str(self.context), env=self.env)

    def stop(self, down: bool = True) -> None:
        """DockerCompose's stop (all services), with the worker service's profile named: a `compose down --volumes`
        without it leaves the worker containers `invoke workers` started running (Compose 2.26). `up` never names it
        (DockerCompose's `profiles` would: its command is made once, for every call)."""
        cmd = [*self.compose_command_property, "--profile", WORKERS_PROFILE]
        self._run_command(cmd=cmd + (["down", "--volumes"] if down else ["stop"]))


@dataclass
class RenderStack:
    """A running stack: where to reach it, and the settings a host worker needs to join it."""

    settings: Settings
    compose: DockerCompose

    @property
    def project(self) -> str:
        return self.settings.project

    @property
    def api_url(self) -> str:
        from provisioner.services import api_url

        return api_url(self.settings)

    @property
    def redis_url(self) -> str:
        from provisioner.services import redis_url

        return redis_url(self.settings)

    @property
    def database_url(self) -> str:
        from provisioner.services import db_url

        return db_url(self.settings)

    def logs(self, *services: str) -> str:
        out, err = self.compose.get_logs(*services)
        return out + err


def stack_settings(base: Path, **overrides: Any) -> Settings:
    """Settings for a throw-away project under `base`: its own name, free ports, state folder and paths, so it
    never meets the developer's own stack or files."""
    values: dict[str, Any] = dict(
        project=f"{PROJECT_PREFIX}-{uuid.uuid4().hex[:10]}",
        state_dir=base / "state",
        redis_port=free_port(),
        db_port=free_port(),
        api_port=free_port(),
        blender_install_root=base / "blender",
        blender_link=base / "bin" / "blender",
        aliases_file=base / "config" / "aliases.sh",
        rc_files=[base / "home" / ".bashrc"],
    )
    values.update(overrides)
    return load_settings(**values)


def start_stack(client: docker.DockerClient, settings: Settings) -> RenderStack:
    """Build the stack's images (redis, db, api) if missing (the provisioner's offline path), write the secrets, then
    `compose up --wait` through testcontainers. On failure the stack is removed and the error carries each
    container's log tail."""
    from provisioner.compose import compose_env
    from provisioner.console import make_console
    from provisioner.images import ensure_images
    from provisioner.secrets import ensure_secrets
    from provisioner.services import ensure_renders_folder

    ensure_images(client, settings, make_console(), only=SERVICES)
    ensure_secrets(settings)
    ensure_renders_folder(settings)  # the api container writes uploaded images there
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERDEV_")}
    env.update(compose_env(settings), COMPOSE_PROJECT_NAME=settings.project, **{OWNER_VAR: owner()})
    compose = _Compose(
        context=str(settings.compose_dir),
        compose_file_name=[p.name for p in settings.compose_files],
        wait=True,
        env=env,
    )
    try:
        compose.start()
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()[-2000:]
        logs = _log_tails(client, settings.project)
        _stop(compose)
        raise StackError(
            f"the render stack {settings.project} did not become healthy: {detail}\n{logs}",
            hint="python3 -m invoke images; then look at the logs above",
        ) from exc
    return RenderStack(settings=settings, compose=compose)


def stop_stack(stack: RenderStack) -> None:
    """Remove the stack's containers, network and volumes."""
    _stop(stack.compose)


def _stop(compose: DockerCompose) -> None:
    try:
        compose.stop(down=True)
    except subprocess.CalledProcessError:
        pass  # nothing to stop: removal by label (remove_stale) covers what is left


def _log_tails(client: docker.DockerClient, project: str) -> str:
    parts = []
    for c in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
        tail = c.logs(tail=LOG_TAIL).decode(errors="replace")
        parts.append(f"--- {c.labels.get('com.docker.compose.service', c.name)} ({c.status}) ---\n{tail}")
    return "\n".join(parts)


def remove_stale(client: docker.DockerClient) -> list[str]:
    """Remove the test stacks whose owning process on this host is gone (a session that was killed). Returns
    the compose projects removed."""
    host = socket.gethostname()
    dead: set[str] = set()
    for c in client.containers.list(all=True, filters={"label": OWNER_LABEL}, ignore_removed=True):
        who = c.labels.get(OWNER_LABEL, "")
        name, _, pid = who.rpartition(":")
        if name == host and pid.isdigit() and not alive(int(pid)):
            dead.add(c.labels.get("com.docker.compose.project", ""))
    for project in sorted(p for p in dead if p):
        remove_by_label(client, project)
    return sorted(dead)


def session_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="renderdev-testing-"))
