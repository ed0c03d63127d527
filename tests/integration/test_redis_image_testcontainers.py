"""The project's redis image on its own, started by testcontainers (no compose, no provisioner)."""

from __future__ import annotations

import secrets

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from provisioner.config import Settings

pytestmark = pytest.mark.integration


def test_redis_image_works_standalone_with_a_password_file(project_images: Settings) -> None:
    password = secrets.token_urlsafe(16)
    container = (
        DockerContainer(project_images.image("redis"))
        .with_exposed_ports(6379)
        .with_env("REDIS_PASSWORD_FILE", "/tmp/redis_password")
        .with_copy_into_container(password.encode(), "/tmp/redis_password", 0o644)
        .waiting_for(LogMessageWaitStrategy("Ready to accept connections"))
    )
    with container:
        host, port = container.get_container_host_ip(), int(container.get_exposed_port(6379))
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=host, port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0)).ping()
        client = redis.Redis(host=host, port=port, password=password, socket_timeout=5)
        assert client.ping() is True
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("dir") == {"dir": "/data"}
