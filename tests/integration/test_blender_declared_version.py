"""The Blender version read from real running containers (built here from the project's base image),
the errors around it, and the plan/status built on it."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from rich.console import Console
from testcontainers.core.container import DockerContainer

from provisioner.blender import link as links
from provisioner.blender.declared_version import ApiContainerDown, read_declared_version
from provisioner.blender.provision import check_blender, plan_blender
from provisioner.config import Settings, load_settings
from provisioner.dockerapi import PROJECT_LABEL, SERVICE_LABEL
from provisioner.errors import BlenderError, DockerError
from provisioner.plan import StepState, apply_steps

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = pytest.mark.integration

TEST_LABEL = "org.renderdev.test"
IMAGE = "renderdev-test/blender-version"


@pytest.fixture(scope="session")
def version_images(docker_client: DockerClient, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Throw-away images on the project's base: env+label, label only, nothing, an unknown version."""
    from docker.errors import ImageNotFound

    base = load_settings().base_image
    try:
        docker_client.images.get(base)
    except ImageNotFound:
        request.getfixturevalue("project_images")  # builds the base with the project's own code
    kinds = {
        "env": "ENV BLENDER_VERSION=3.4.1\nLABEL org.blender.version=3.4.1",
        "label": "LABEL org.blender.version=3.4.1",
        "none": "LABEL org.renderdev.nothing=1",
        "unknown": "ENV BLENDER_VERSION=9.8.7",
    }
    tags = {}
    for kind, lines in kinds.items():
        dockerfile = f'FROM {base}\n{lines}\nLABEL {TEST_LABEL}=blender\nCMD ["sleep", "infinity"]\n'
        tag = f"{IMAGE}:{kind}"
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True)
        tags[kind] = tag
    yield tags
    for tag in tags.values():
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


@pytest.fixture
def start(docker_client: DockerClient) -> Iterator[Callable[..., str]]:
    """Start a container of one of the images (testcontainers); return its name. Removed at teardown."""
    started: list[DockerContainer] = []

    def run(image: str, *, labels: dict[str, str] | None = None) -> str:
        name = f"rdtest-blender-{uuid.uuid4().hex[:8]}"
        c = DockerContainer(image).with_name(name).with_kwargs(labels={TEST_LABEL: "blender", **(labels or {})})
        c.start()
        started.append(c)
        return name

    yield run
    from docker.errors import NotFound

    for c in started:
        try:
            c.stop()
        except NotFound:  # already removed with its compose project (cleanup_project)
            pass


def test_version_from_env(
    docker_client: DockerClient,
    version_images: dict[str, str],
    start: Callable[..., str],
    isolated_settings: Callable[..., Settings],
) -> None:
    name = start(version_images["env"])
    found = read_declared_version(docker_client, isolated_settings(api_container=name))
    assert (found.version, found.container, found.where) == ("3.4.1", name, "env BLENDER_VERSION")


def test_version_from_label_only(
    docker_client: DockerClient,
    version_images: dict[str, str],
    start: Callable[..., str],
    isolated_settings: Callable[..., Settings],
) -> None:
    name = start(version_images["label"])
    found = read_declared_version(docker_client, isolated_settings(api_container=name))
    assert (found.version, found.where) == ("3.4.1", "label org.blender.version")


def test_default_is_the_compose_projects_api_service(
    docker_client: DockerClient,
    version_images: dict[str, str],
    start: Callable[..., str],
    isolated_settings: Callable[..., Settings],
    cleanup_project: list[str],
) -> None:
    settings = isolated_settings()
    cleanup_project.append(settings.project)
    name = start(version_images["label"], labels={PROJECT_LABEL: settings.project, SERVICE_LABEL: "api"})
    found = read_declared_version(docker_client, settings)
    assert found.container == name and found.version == "3.4.1"


def test_no_such_container_lists_the_running_ones(
    docker_client: DockerClient,
    version_images: dict[str, str],
    start: Callable[..., str],
    isolated_settings: Callable[..., Settings],
) -> None:
    running = start(version_images["env"])
    with pytest.raises(ApiContainerDown) as err:
        read_declared_version(docker_client, isolated_settings(api_container="rdtest-no-such-container"))
    assert "no container named 'rdtest-no-such-container'" in err.value.message
    assert running in err.value.message.split("running containers: ")[1]
    assert "invoke services" in (err.value.hint or "")

    settings = isolated_settings()
    with pytest.raises(ApiContainerDown) as err:
        read_declared_version(docker_client, settings)
    assert f"no api container in compose project {settings.project!r}" in err.value.message
    assert f"{PROJECT_LABEL}={settings.project}" in err.value.message


def test_stopped_container(
    docker_client: DockerClient,
    version_images: dict[str, str],
    start: Callable[..., str],
    isolated_settings: Callable[..., Settings],
) -> None:
    name = start(version_images["env"])
    docker_client.containers.get(name).kill()
    with pytest.raises(ApiContainerDown) as err:
        read_declared_version(docker_client, isolated_settings(api_container=name))
    assert f"api container {name} is not running (state: exited, exit code 137)" in err.value.message
    assert "invoke services" in (err.value.hint or "")


def test_no_version_declared_names_the_keys(
    docker_client: DockerClient,
    version_images: dict[str, str],
    start: Callable[..., str],
    isolated_settings: Callable[..., Settings],
) -> None:
    name = start(version_images["none"])
    with pytest.raises(BlenderError) as err:
        read_declared_version(docker_client, isolated_settings(api_container=name))
    assert f"api container {name} declares no Blender version" in err.value.message
    assert "looked at: env BLENDER_VERSION, label org.blender.version, label blender.version" in err.value.message
    custom = isolated_settings(api_container=name, blender_version_env_keys=["BV"], blender_version_label_keys=[])
    with pytest.raises(BlenderError, match=r"looked at: env BV\)"):
        read_declared_version(docker_client, custom)


def test_version_not_in_the_versions_file(
    docker_client: DockerClient,
    version_images: dict[str, str],
    start: Callable[..., str],
    isolated_settings: Callable[..., Settings],
) -> None:
    name = start(version_images["unknown"])
    settings = isolated_settings(api_container=name)
    with pytest.raises(BlenderError) as err:
        plan_blender(docker_client, settings, Console(file=io.StringIO()))
    assert f"Blender 9.8.7 is not in {settings.blender_versions_file}" in err.value.message
    assert "known versions: 2.93.18, 3.3.21, 3.4.1" in err.value.message


def test_dry_run_before_the_api_container_is_up(
    docker_client: DockerClient, isolated_settings: Callable[..., Settings]
) -> None:
    settings = isolated_settings()
    console = Console(file=io.StringIO())
    steps = plan_blender(docker_client, settings, console, dry_run=True)
    assert len(steps) == 1 and steps[0].state is StepState.CHANGE
    assert "read from the api container once it is up" in steps[0].detail
    with pytest.raises(DockerError, match="no api container in compose project"):
        plan_blender(docker_client, settings, console)


def test_status_then_setup_from_the_container(
    docker_client: DockerClient,
    version_images: dict[str, str],
    start: Callable[..., str],
    isolated_settings: Callable[..., Settings],
    cleanup_project: list[str],
    host_blender: Path,
) -> None:
    """The container wants 3.4.1, which Debian's pinned package provides: status says what is missing,
    the plan links it, status is then all right, and unlink takes the link away again."""
    assert os.readlink(host_blender) == "/usr/bin/blender", "host_blender is Debian's package (--source apt)"
    settings = isolated_settings()
    cleanup_project.append(settings.project)
    start(version_images["env"], labels={PROJECT_LABEL: settings.project, SERVICE_LABEL: "api"})
    client = docker_client
    link = settings.blender_link

    checks = check_blender(client, settings)
    assert [c.ok for c in checks] == [True, True, False, False], checks
    assert "Debian package blender 3.4.1+dfsg-2+b1" in checks[1].state
    assert checks[2].fix == "invoke blender" and checks[3].fix == "invoke blender"

    console = Console(file=io.StringIO())
    steps = plan_blender(client, settings, console)
    assert "env BLENDER_VERSION of container" in steps[0].detail
    assert [s.state for s in steps] == [StepState.OK, StepState.OK, StepState.CHANGE]
    apply_steps(console, steps, dry_run=False)
    assert os.readlink(link) == "/usr/bin/blender"

    checks = check_blender(client, settings)
    assert all(c.ok for c in checks), checks
    assert checks[3].state == "Blender 3.4.1"
    assert [s.state for s in plan_blender(client, settings, console)] == [StepState.OK] * 3

    assert links.unlink(settings) == f"removed {link} (-> /usr/bin/blender)"
    assert not os.path.lexists(link)
