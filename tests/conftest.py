"""Shared fixtures. Integration tests use the real Docker engine and the project's own images.

No integration test skips: without a Docker engine the run fails and says why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.proc import free_port

# testcontainers' reaper image cannot be pulled here: we clean up our own containers by label.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


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
    """Make sure the project's images (base, redis, db, api) exist, building them with the real code."""
    from provisioner.config import load_settings
    from provisioner.console import make_console
    from provisioner.images import ensure_images

    settings = load_settings()
    ensure_images(docker_client, settings, make_console())
    return settings


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
    """Append compose project names to the list; their containers, networks and volumes go at teardown."""
    projects: list[str] = []
    yield projects
    label = "com.docker.compose.project"
    for name in projects:
        for c in docker_client.containers.list(all=True, filters={"label": f"{label}={name}"}):
            c.remove(force=True, v=True)
        for n in docker_client.networks.list(filters={"label": f"{label}={name}"}):
            n.remove()
        for v in docker_client.volumes.list(filters={"label": f"{label}={name}"}):
            v.remove(force=True)


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
