"""The page's pushes come from Redis keyspace notifications on hashes: the project's Redis image sends them; the API
turns them on in a Redis that does not (keeping the classes it has), and says so when a Redis refuses CONFIG
(the page then polls). The project's redis image, run on its own by testcontainers."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import redis.asyncio as aredis
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from provisioner.config import Settings
from renderfarm.page import ensure_notifications

pytestmark = pytest.mark.integration


@contextmanager
def project_redis(settings: Settings, *args: str) -> Iterator[tuple[str, int, str]]:
    """The project's redis image with extra redis-server arguments; (host, port, password)."""
    password = secrets.token_urlsafe(16)
    container = (
        DockerContainer(settings.image("redis"))
        .with_exposed_ports(6379)
        .with_env("REDIS_PASSWORD_FILE", "/tmp/redis_password")
        .with_copy_into_container(password.encode(), "/tmp/redis_password", 0o644)
        .waiting_for(LogMessageWaitStrategy("Ready to accept connections"))
    )
    if args:
        container = container.with_command(" ".join(args))
    with container:
        yield container.get_container_host_ip(), int(container.get_exposed_port(6379)), password


def notifications(host: str, port: int, password: str) -> tuple[bool, str | None]:
    """(what ensure_notifications said, the server's notify-keyspace-events after it; None if CONFIG is refused)."""

    async def run() -> tuple[bool, str | None]:
        r = aredis.Redis(host=host, port=port, password=password, socket_timeout=5, decode_responses=True)
        try:
            said = await ensure_notifications(r)
            try:
                flags = (await r.config_get("notify-keyspace-events"))["notify-keyspace-events"]
            except aredis.ResponseError:
                flags = None
            return said, flags
        finally:
            await r.aclose()

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def test_the_redis_image_sends_hash_keyspace_events(project_images: Settings) -> None:
    with project_redis(project_images) as where:
        said, flags = notifications(*where)
    assert said is True
    assert flags is not None and set(flags) == {"K", "h"}  # as the image's config has it: nothing added


def test_a_redis_without_them_gets_them_keeping_its_own_classes(project_images: Settings) -> None:
    with project_redis(project_images, "--notify-keyspace-events", "Ex") as where:
        said, flags = notifications(*where)
    assert said is True
    assert flags is not None and set(flags) == {"E", "x", "K", "h"}


def test_a_redis_that_refuses_config_is_reported_not_pushing(project_images: Settings) -> None:
    with project_redis(project_images, "--notify-keyspace-events", '""', "--rename-command", "CONFIG", '""') as where:
        said, flags = notifications(*where)
    assert said is False and flags is None
