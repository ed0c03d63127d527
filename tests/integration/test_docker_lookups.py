"""What a warm `invoke setup` reads of the engine with fewer round trips gives the same answers as the lookups it
replaces: the services' containers from one listing of the project (service_containers vs service_container per
service), the services' states from them (service_states vs service_state per service), and the engine's version
asked once per client. Real containers on the real engine, labelled as compose labels them."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from docker import DockerClient

from provisioner.config import SERVICES, Settings
from provisioner.dockerapi import (
    PROJECT_LABEL,
    SERVICE_LABEL,
    docker_client,
    engine_version,
    service_container,
    service_containers,
)
from provisioner.services import service_state, service_states

pytestmark = pytest.mark.integration


def _container(client: DockerClient, settings: Settings, project: str, service: str, *, running: bool) -> str:
    labels = {PROJECT_LABEL: project, SERVICE_LABEL: service}
    name = f"{project}-{service}-{uuid.uuid4().hex[:6]}"
    if running:
        c = client.containers.run(settings.base_image, ["sleep", "300"], name=name, labels=labels, detach=True)
    else:
        c = client.containers.create(settings.base_image, ["true"], name=name, labels=labels)
    return str(c.id)


def test_one_listing_finds_the_container_each_lookup_finds_and_the_same_states(
    docker_client: DockerClient,
    project_images: Settings,
    isolated_settings: Callable[..., Settings],
    cleanup_project: list[str],
) -> None:
    settings = isolated_settings()
    other = f"{settings.project}-other"  # a project whose name starts with ours: its containers are not ours
    cleanup_project += [settings.project, other]
    _container(docker_client, settings, settings.project, "redis", running=False)
    newer_redis = _container(docker_client, settings, settings.project, "redis", running=True)  # two for one service
    _container(docker_client, settings, settings.project, "api", running=True)
    _container(docker_client, settings, settings.project, "worker", running=True)  # not a service asked for
    _container(docker_client, settings, other, "db", running=True)  # no db in our project

    each = {svc: service_container(docker_client, settings.project, svc) for svc in SERVICES}
    listed = service_containers(docker_client, settings.project, SERVICES)
    assert {svc: c.id for svc, c in listed.items()} == {svc: c.id for svc, c in each.items() if c is not None}
    assert sorted(listed) == ["api", "redis"] and listed["redis"].id == newer_redis
    assert listed["api"].attrs["State"]["Status"] == "running", "the full inspect, as service_container gives"

    states = service_states(docker_client, settings)
    assert states == [service_state(docker_client, settings, svc) for svc in SERVICES]
    assert [s.status for s in states] == ["running", "missing", "running"]
    assert not any(s.ok for s in states), "containers of the base image are not the services' images"


def test_the_engine_version_is_asked_once_per_client_and_is_the_engines() -> None:
    client = docker_client()  # asks it in place of a ping
    try:
        assert engine_version(client) == str(client.version()["Version"])
    finally:
        client.close()
