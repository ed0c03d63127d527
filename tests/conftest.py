"""Shared fixtures. Integration tests use the real Docker engine and the project's own images.

No integration test skips: without a Docker engine the run fails and says why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from provisioner.ports import free_port

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from provisioner.config import Settings

# xdist_group("heavy"): the modules that load this 2-core machine most (a swarm and its 1.3 GB push, three worker
# hosts rendering at once, an image build, an exposed stack) run one after another on one xdist worker (pytest runs
# with --dist loadgroup); run side by side, they starved the browser tests and the API's database connections.
# testcontainers' reaper image cannot be pulled here: we clean up our own containers by label.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


@pytest.fixture(scope="session")
def renderdev_settings() -> dict[str, Any]:
    """The kit's stack (renderdev.testing) as this repository's tests want it: Blender from Debian's package
    (the tests' one source, as host_blender's), never download.blender.org (a closed loopback port)."""
    return {"blender_source": "apt", "blender_official_base": f"http://127.0.0.1:{free_port()}/release"}


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    from provisioner.dockerapi import docker_client as connect
    from provisioner.errors import DockerError

    try:
        client = connect()
    except DockerError as exc:
        pytest.fail(f"integration tests need a Docker engine: {exc} (run: bash scripts/install-host.sh)")
    yield client
    _remove_testcontainers(client)
    client.close()


def _remove_testcontainers(client) -> None:  # type: ignore[no-untyped-def]
    for c in client.containers.list(all=True, filters={"label": "org.testcontainers.session-id"}):
        try:
            c.remove(force=True, v=True)
        except Exception:  # noqa: BLE001 - best effort cleanup at session end
            pass


@pytest.fixture(scope="session")
def project_images(docker_client):  # type: ignore[no-untyped-def]
    """Make sure the stack's images (base, redis, db, api) exist, building them with the real code. The worker
    image (Blender inside, 4-5 minutes cold) is built by the tests of container workers only."""
    from provisioner.config import load_settings
    from provisioner.console import make_console
    from provisioner.images import STACK_IMAGES, ensure_images

    settings = load_settings()
    ensure_images(docker_client, settings, make_console(), only=STACK_IMAGES)
    return settings


# Apt may have to fetch Blender and its ~170 dependencies on a host that never had it.
HOST_BLENDER_TIMEOUT = 1800.0


@dataclass(frozen=True)
class _Inspected:
    """What declared_by reads of a container (its name and `docker inspect` attributes), for an image."""

    name: str
    attrs: dict[str, Any]


def declared_blender_version(client: DockerClient, settings: Settings) -> str:
    """The Blender version the project's api image declares (Config.Env BLENDER_VERSION, else its labels),
    read and checked by the same code `invoke blender` uses on the api container."""
    from provisioner.blender.declared_version import declared_by
    from provisioner.errors import RenderdevError

    name = settings.image("api")
    image = client.images.get(name)
    try:
        return declared_by(cast("Container", _Inspected(name, image.attrs)), settings).version
    except RenderdevError as exc:
        pytest.fail(f"the api image {name} declares no usable Blender version: {exc}")


@pytest.fixture(scope="session")
def host_blender(docker_client, project_images: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The Blender the api image declares, put on this host the way a user does it:
    `invoke blender --version V --source apt --install-root R --link L`, with R and L in a session folder.

    Returns the link. Every test that runs Blender or a render worker uses it, so no test depends on a
    `blender` on PATH, on what an earlier test installed, or on what a person installed by hand. The apt
    source installs Debian's package where apt puts it (/usr/bin/blender), which is the user's own path on
    Debian 12; a test never downloads from download.blender.org (its base is a closed loopback port)."""
    from provisioner.blender.verify import reported_version
    from provisioner.config import load_settings
    from provisioner.errors import BlenderError
    from tests.stackutil import invoke

    version = declared_blender_version(docker_client, project_images)
    folder = tmp_path_factory.mktemp("host-blender")
    root, link = folder / "blender", folder / "bin" / "blender"
    settings = load_settings(
        project=f"rdblender-{uuid.uuid4().hex[:8]}",
        state_dir=folder / "state",
        blender_install_root=root,
        blender_link=link,
        aliases_file=folder / "cfg" / "aliases.sh",
        rc_files=[folder / "home" / ".bashrc"],
    )
    args = ["blender", "--version", version, "--source", "apt", "--install-root", str(root), "--link", str(link)]
    done = invoke(settings, *args, timeout=HOST_BLENDER_TIMEOUT)
    said = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"`invoke {' '.join(args)}` exited {done.returncode}: the tests need Blender {version}\n{said}")
    try:
        found, first = reported_version(link, cached=False)
    except BlenderError as exc:
        pytest.fail(f"`invoke {' '.join(args)}` made {link}, which does not answer: {exc}\n{said}")
    if found != version:
        pytest.fail(f"{link} reports {first!r}, not Blender {version}\n{said}")
    return link


@pytest.fixture
def isolated_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Settings for a throw-away compose project next to any developer stack: own name, ports, state, paths."""
    from provisioner.config import load_settings

    def make(**overrides):  # type: ignore[no-untyped-def]
        values = dict(
            project=f"rdtest-{uuid.uuid4().hex[:8]}",
            state_dir=tmp_path / "state",
            redis_port=free_port(),
            db_port=free_port(),
            api_port=free_port(),
            blender_install_root=tmp_path / "blender",
            blender_link=tmp_path / "bin" / "blender",
            aliases_file=tmp_path / "config" / "aliases.sh",
            rc_files=[tmp_path / "home" / ".bashrc", tmp_path / "home" / ".zshrc"],
            health_timeout=180.0,
        )
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def cleanup_project(docker_client) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """Append compose project names to the list; their containers, networks, volumes and loopback guard
    rules (added by an `invoke setup` on an engine before 28) go at teardown."""
    from provisioner.dockerapi import remove_by_label
    from provisioner.firewall import remove_project_rules

    projects: list[str] = []
    yield projects
    for name in projects:
        remove_project_rules(name)
        remove_by_label(docker_client, name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """In CI a skip is a failure: a test that cannot run must say so, not pass quietly."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"


@pytest.fixture(scope="module")
def api(stack):  # type: ignore[no-untyped-def]
    """An HTTP client for the API of the module's `stack` (each pipeline module defines its own stack)."""
    import httpx

    from provisioner.services import api_url

    with httpx.Client(base_url=api_url(stack), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def r(stack):  # type: ignore[no-untyped-def]
    """A Redis client for the module's `stack`."""
    import redis

    from provisioner.services import redis_url

    client = redis.Redis.from_url(redis_url(stack))
    yield client
    client.close()
