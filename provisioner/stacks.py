"""The stacks on this host, and a way into one: `invoke ls` and `invoke shell`.

Every renderdev stack's containers carry compose's project label and renderdev's config-hash label, so the stacks
are found through the Docker API whatever their names, state folders or ports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from provisioner.compose import CONFIG_HASH_LABEL
from provisioner.config import SERVICES, Settings
from provisioner.dockerapi import PROJECT_LABEL, SERVICE_LABEL, service_container
from provisioner.errors import ConfigError, DockerError

if TYPE_CHECKING:
    import docker
    from rich.console import Console

# The user each service's own process runs as (the redis and db entrypoints start as root only to drop to it).
SERVICE_USERS = {"redis": "redis", "db": "postgres", "api": "renderfarm"}
API_SERVICE, API_PORT = "api", "8000/tcp"


@dataclass
class StackInfo:
    project: str
    services: dict[str, str] = field(default_factory=dict)  # service -> state ("running, healthy")
    ports: dict[str, str] = field(default_factory=dict)  # service -> "127.0.0.1:8000"

    @property
    def state(self) -> str:
        running = sum(s.startswith("running") for s in self.services.values())
        return "running" if running == len(SERVICES) else f"{running}/{len(SERVICES)} running"

    @property
    def urls(self) -> list[str]:
        api = self.ports.get(API_SERVICE)
        return [f"http://{api}/", f"http://{api}/docs"] if api else []


def list_stacks(client: docker.DockerClient) -> list[StackInfo]:
    """Every renderdev stack on this host (running or not), sorted by project name."""
    stacks: dict[str, StackInfo] = {}
    for c in client.containers.list(all=True, filters={"label": CONFIG_HASH_LABEL}):
        project, service = c.labels.get(PROJECT_LABEL), c.labels.get(SERVICE_LABEL)
        if not project or not service:
            continue
        info = stacks.setdefault(project, StackInfo(project))
        health = ((c.attrs.get("State") or {}).get("Health") or {}).get("Status")
        info.services[service] = c.status + (f", {health}" if health else "")
        for bindings in ((c.attrs.get("NetworkSettings") or {}).get("Ports") or {}).values():
            for b in bindings or []:
                info.ports.setdefault(service, f"{b['HostIp']}:{b['HostPort']}")
    return [stacks[p] for p in sorted(stacks)]


def show_stacks(client: docker.DockerClient, console: Console) -> list[StackInfo]:
    """`invoke ls`: per stack, its project, state and ports, then its URLs (plain lines: nothing cut off)."""
    stacks = list_stacks(client)
    if not stacks:
        console.print("No renderdev stacks on this host: invoke setup (RENDERDEV_PROJECT=NAME for another one)")
    for s in stacks:
        ports = "  ".join(f"{svc} {s.ports.get(svc, '-')}" for svc in SERVICES)
        console.print(f"{s.project}  {s.state}  {ports}", highlight=False, soft_wrap=True)
        if s.urls:
            console.print("  " + "  ".join(s.urls), highlight=False, soft_wrap=True)
    return stacks


def shell_argv(client: docker.DockerClient, settings: Settings, service: str, command: str | None) -> list[str]:
    """`docker exec` into the service's container as the service's own user: an interactive shell, or `sh -c CMD`."""
    if service not in SERVICE_USERS:
        raise ConfigError(
            f"no service {service!r} in a renderdev stack (there are: {', '.join(SERVICE_USERS)})",
            hint="e.g. invoke shell db -c 'psql -U renderfarm renderfarm'",
        )
    c = service_container(client, settings.project, service)
    if c is None or c.status != "running":
        state = "missing" if c is None else c.status
        raise DockerError(
            f"service {service} of compose project {settings.project} is not running ({state})", hint="invoke services"
        )
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise DockerError("the docker command is not on PATH", hint="bash scripts/install-host.sh")
    if command is None:
        return [docker_cli, "exec", "-it", "-u", SERVICE_USERS[service], str(c.name), "sh"]
    return [docker_cli, "exec", "-i", "-u", SERVICE_USERS[service], str(c.name), "sh", "-c", command]


def shell(client: docker.DockerClient, settings: Settings, service: str, command: str | None) -> NoReturn:
    """`invoke shell SERVICE [-c CMD]`: become `docker exec` (the terminal is the user's; its exit code is ours)."""
    argv = shell_argv(client, settings, service, command)
    if command is None:
        os.execv(argv[0], argv)  # an interactive shell owns the terminal: nothing of ours stays in between
    raise SystemExit(subprocess.run(argv, check=False).returncode)
