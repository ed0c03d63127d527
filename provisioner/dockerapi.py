"""Docker client and compose-label lookups. The client is made here and passed in everywhere else."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Collection
from typing import TYPE_CHECKING

from provisioner.errors import DockerError

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


def docker_client() -> docker.DockerClient:
    """Connect to the engine (DOCKER_HOST or the local socket); a clear error when none answers."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=120)
        engine_version(client)  # the round trip that proves the engine answers, kept for the loopback guard's check
    except DockerException as exc:
        raise DockerError(
            f"no Docker engine answers ({exc.__class__.__name__}: {exc})",
            hint="start it (sudo systemctl start docker, or: bash scripts/install-host.sh), then re-run",
        ) from exc
    return client


_engine_versions: weakref.WeakKeyDictionary[docker.DockerClient, str] = weakref.WeakKeyDictionary()


def engine_version(client: docker.DockerClient) -> str:
    """The engine's version (`docker version`'s Server.Version), asked once per client. An engine cannot change its
    version without a restart, which a process's few seconds of setup or status do not outlive; docker_client asks it
    in place of a ping (one round trip either way), so the loopback guard's check (provisioner.firewall) costs none."""
    if client not in _engine_versions:
        _engine_versions[client] = str(client.version().get("Version", "?"))
    return _engine_versions[client]


def project_containers(client: docker.DockerClient, project: str, *, all: bool = True) -> list[Container]:
    """The compose project's containers, found by label (same in Compose v1 and v2), not by name."""
    return list(client.containers.list(all=all, filters={"label": f"{PROJECT_LABEL}={project}"}))


def service_container(client: docker.DockerClient, project: str, service: str) -> Container | None:
    found = client.containers.list(
        all=True, filters={"label": [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"]}
    )
    return found[0] if found else None


def service_containers(client: docker.DockerClient, project: str, services: Collection[str]) -> dict[str, Container]:
    """The container of each of `services` that service_container would find (the first the engine lists, by the
    same labels), from one listing of the project and one inspect per service found, instead of a listing and an
    inspect per service. Services without a container are left out."""
    listed = client.containers.list(all=True, sparse=True, filters={"label": f"{PROJECT_LABEL}={project}"})
    first: dict[str, str] = {}
    for c in listed:
        service = str((c.attrs.get("Labels") or {}).get(SERVICE_LABEL, ""))
        if service in services and service not in first:
            first[service] = str(c.id)
    return {service: client.containers.get(cid) for service, cid in first.items()}


def remove_by_label(client: docker.DockerClient, project: str) -> int:
    """Remove whatever a compose project left, found by its label: containers (with their anonymous volumes),
    networks, named volumes. For clean-up after tests and benchmarks, and after a `compose down` that failed.
    Returns how many containers went."""
    label = {"label": f"{PROJECT_LABEL}={project}"}
    from docker.errors import NotFound

    # A compose down or another session's clean-up may remove the same objects meanwhile: gone is done.
    containers = client.containers.list(all=True, filters=label, ignore_removed=True)
    for c in containers:
        with contextlib.suppress(NotFound):
            c.remove(force=True, v=True)
    for n in client.networks.list(filters=label):
        with contextlib.suppress(NotFound):
            n.remove()
    for v in client.volumes.list(filters=label):
        with contextlib.suppress(NotFound):
            v.remove(force=True)
    return len(containers)
