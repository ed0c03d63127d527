"""renderdev's pytest plugin (registered through the `pytest11` entry point: installing renderdev is enough).

Fixtures:
- `renderdev_stack` (session): the render stack (redis, db, api) run by testcontainers from the project's images
  on free ports, under a compose project of its own; `.api_url`, `.redis_url`, `.database_url`, `.project`,
  `.new_user(credits)`.
- `renderdev_settings` (session): settings for the stack over the environment's (`{}`); override it in a conftest.py.
- `renderdev_blender` (session): the Blender the stack's api container declares, installed and linked by the
  provisioner (`invoke blender`'s own steps) into the session's folder. Its source follows the settings
  (`blender_source`, `blender_mirror`: RENDERDEV_BLENDER_SOURCE, renderdev.toml or `renderdev_settings`), default
  `auto` (an install already there, a mirror, download.blender.org, then the distro's package).
- `render_worker`: a real host worker against the stack, warm Blender; `@pytest.mark.renderdev_worker(queues="pq")`
  picks its queues (default "pq,sq"). Stopped with its whole process tree; its log is attached to a failed test.
- `render_client`: the API as a fresh user with 100 credits (`.post`, `.wait`, `.render`, `.image`, `.balance`,
  `.http`).

Under pytest-xdist each xdist worker process has its own stack (session fixtures are per process). Containers are
labelled with their owner; a session that was killed leaves containers that the next session removes. Ryuk (the
testcontainers reaper) is not needed: the stack is removed by the fixture, or by label.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from renderdev.testing.stack import RenderStack, StackError, remove_stale, stack_settings, start_stack, stop_stack
from renderdev.testing.users import RenderClient, seed_user
from renderdev.testing.worker import WorkerError, WorkerProcess, start_worker

if TYPE_CHECKING:
    import docker

WORKER_KEY = pytest.StashKey[WorkerProcess]()
CLIENT_CREDITS = 100


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "renderdev_worker(queues='pq,sq', **env): queues and extra environment of the render_worker fixture"
    )


@pytest.fixture(scope="session")
def renderdev_docker() -> Iterator[docker.DockerClient]:
    from provisioner.dockerapi import docker_client
    from provisioner.errors import DockerError

    try:
        client = docker_client()
    except DockerError as exc:
        pytest.fail(f"renderdev's fixtures need a Docker engine: {exc}")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def renderdev_settings() -> dict[str, Any]:
    """Settings for the session's stack, over the environment's and renderdev.toml's (e.g. `hd_price`,
    `blender_source`, `blender_mirror`); override this fixture in your conftest.py to change them."""
    return {}


@pytest.fixture(scope="session")
def renderdev_stack(
    renderdev_docker: docker.DockerClient, renderdev_settings: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RenderStack]:
    remove_stale(renderdev_docker)
    settings = stack_settings(tmp_path_factory.mktemp("renderdev"), **renderdev_settings)
    try:
        stack = start_stack(renderdev_docker, settings)
    except StackError as exc:
        pytest.fail(str(exc))
    try:
        yield stack
    finally:
        stop_stack(stack)


@pytest.fixture(scope="session")
def renderdev_blender(renderdev_docker: docker.DockerClient, renderdev_stack: RenderStack) -> Path:
    """Install the Blender the stack's api container declares, as `invoke blender` does; returns the link."""
    from provisioner.blender.provision import plan_blender
    from provisioner.console import make_console
    from provisioner.errors import RenderdevError
    from provisioner.plan import apply_steps

    settings, console = renderdev_stack.settings, make_console()
    try:
        apply_steps(console, plan_blender(renderdev_docker, settings, console), dry_run=False)
    except RenderdevError as exc:
        pytest.fail(f"renderdev could not put Blender on this host: {exc}")
    return settings.blender_link


@pytest.fixture
def render_worker(
    request: pytest.FixtureRequest, renderdev_stack: RenderStack, renderdev_blender: Path, tmp_path: Path
) -> Iterator[WorkerProcess]:
    marker = request.node.get_closest_marker("renderdev_worker")
    options = dict(marker.kwargs) if marker else {}
    queues = str(options.pop("queues", "pq,sq"))
    worker = start_worker(renderdev_stack.settings, tmp_path / "render-worker.log", queues=queues, **options)
    request.node.stash[WORKER_KEY] = worker
    try:
        worker.wait_ready()
    except WorkerError as exc:
        worker.stop()
        pytest.fail(str(exc))
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def render_client(renderdev_stack: RenderStack) -> Iterator[RenderClient]:
    import httpx

    from renderfarm.examples import example_scene_path

    user = seed_user(renderdev_stack.database_url, credits=CLIENT_CREDITS)
    scene = json.loads(example_scene_path().read_text())
    with httpx.Client(base_url=renderdev_stack.api_url, headers=user.headers, timeout=30) as http:
        yield RenderClient(http=http, user=user, scene=scene)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failed test that had a render worker gets the worker's log as a report section."""
    outcome = yield
    report = outcome.get_result()
    worker = item.stash.get(WORKER_KEY, None)
    if report.failed and worker is not None:
        report.sections.append((f"render worker (queues {worker.queues}) log", worker.output()[-20000:]))
