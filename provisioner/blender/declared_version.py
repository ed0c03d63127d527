"""Which Blender version the api container declares (its `Config.Env`, else its labels), read with `docker inspect`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from provisioner.blender.versions import is_version
from provisioner.config import Settings
from provisioner.dockerapi import PROJECT_LABEL, SERVICE_LABEL, service_container
from provisioner.errors import BlenderError, DockerError

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

API_SERVICE = "api"


class ApiContainerDown(DockerError):
    """The api container is not there or not running (so its version cannot be read yet)."""


@dataclass(frozen=True)
class DeclaredVersion:
    version: str
    container: str
    where: str  # e.g. "env BLENDER_VERSION" or "label org.blender.version"

    def __str__(self) -> str:
        return f"{self.version} (container {self.container}, {self.where})"


def read_declared_version(
    client: docker.DockerClient, settings: Settings, *, container: str | None = None
) -> DeclaredVersion:
    """The version the api container declares.

    The container is `container`, else settings.api_container, else the compose project's `api`
    service found by its labels. It must be running.
    """
    found = _find(client, settings, container or settings.api_container)
    status = found.status
    if status != "running":
        state = found.attrs.get("State") or {}
        code = state.get("ExitCode")
        more = f", exit code {code}" if status == "exited" and code is not None else ""
        raise ApiContainerDown(
            f"api container {found.name} is not running (state: {status}{more})",
            hint="start the stack: invoke services (or skip the lookup: invoke blender --version X.Y.Z)",
        )
    return declared_by(found, settings)


def declared_by(found: Container, settings: Settings) -> DeclaredVersion:
    """Read the version from a container's environment, else its labels (keys from the settings)."""
    config = found.attrs.get("Config") or {}
    env: dict[str, str] = {}
    for item in config.get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    labels: dict[str, str] = config.get("Labels") or {}
    candidates = [(f"env {k}", env.get(k)) for k in settings.blender_version_env_keys]
    candidates += [(f"label {k}", labels.get(k)) for k in settings.blender_version_label_keys]
    for where, value in candidates:
        if value is None or not value.strip():
            continue
        value = value.strip()
        if not is_version(value):
            raise BlenderError(
                f"api container {found.name} declares Blender {value!r} ({where}), which is not X.Y.Z",
                hint="fix the api image (ENV BLENDER_VERSION=X.Y.Z), or pass --version X.Y.Z",
            )
        return DeclaredVersion(version=value, container=str(found.name), where=where)
    looked = ", ".join(where for where, _ in candidates)
    raise BlenderError(
        f"api container {found.name} declares no Blender version (looked at: {looked})",
        hint="declare it in the api image (ENV BLENDER_VERSION=X.Y.Z and LABEL org.blender.version=X.Y.Z), "
        "or pass --version X.Y.Z",
    )


def _find(client: docker.DockerClient, settings: Settings, name: str | None) -> Container:
    from docker.errors import APIError, NotFound

    try:
        if name:
            try:
                return client.containers.get(name)
            except NotFound:
                raise ApiContainerDown(
                    f"no container named {name!r}; running containers: {_running(client)}",
                    hint="start the stack: invoke services, or name the api container with --api-container NAME",
                ) from None
        found = service_container(client, settings.project, API_SERVICE)
    except APIError as exc:
        raise DockerError(f"cannot inspect the api container: {exc.explanation or exc}") from exc
    if found is None:
        raise ApiContainerDown(
            f"no api container in compose project {settings.project!r} "
            f"(labels {PROJECT_LABEL}={settings.project}, {SERVICE_LABEL}={API_SERVICE}); "
            f"running containers: {_running(client)}",
            hint="start the stack: invoke services, or name the api container with --api-container NAME",
        )
    return found


def _running(client: docker.DockerClient) -> str:
    names = sorted(str(c.name) for c in client.containers.list())
    return ", ".join(names) if names else "none"
