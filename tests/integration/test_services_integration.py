"""An isolated compose project brought up by the real code: health, ports, passwords, persistence, down."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import psycopg
import pytest
import redis
import sqlalchemy
from docker import DockerClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from provisioner.config import SERVICES, Settings
from provisioner.console import make_console
from provisioner.dockerapi import PROJECT_LABEL, SERVICE_LABEL, project_containers, service_container
from provisioner.errors import DockerError
from provisioner.plan import apply_steps
from provisioner.secrets import read_secrets, secret_path
from provisioner.services import (
    DB_VOLUME,
    VOLUME_LABEL,
    api_url,
    check_services,
    db_url,
    down,
    plan_services,
    redis_url,
    wait_healthy,
)

pytestmark = pytest.mark.integration
NO_RETRY = Retry(NoBackoff(), 0)  # redis-py retries even a refused AUTH a few times, with backoff
# Like compose's: the container counts as "starting" until a check has run (here: not for a minute).
SLOW_HEALTHCHECK = {"test": ["CMD", "true"], "interval": 60 * 10**9, "start_period": 60 * 10**9}


def test_stack_comes_up_healthy_private_and_goes_away(
    docker_client: DockerClient,
    project_images: Settings,
    isolated_settings: Callable[..., Settings],
    cleanup_project: list[str],
) -> None:
    settings = isolated_settings()
    cleanup_project.append(settings.project)

    steps = plan_services(docker_client, settings)
    assert [s.needed for s in steps] == [True, True, True]  # secrets, renders folder, compose
    started = time.monotonic()
    outcome = apply_steps(make_console(), steps, dry_run=False)
    took = time.monotonic() - started
    assert len(outcome.changed) == 3, outcome
    print(f"stack up and healthy in {took:.1f} s: {outcome.changed[-1]}")

    secrets = read_secrets(settings)
    ports = {"redis": settings.redis_port, "db": settings.db_port, "api": settings.api_port}
    for svc in SERVICES:
        c = service_container(docker_client, settings.project, svc)
        assert c is not None, svc
        assert c.attrs["State"]["Health"]["Status"] == "healthy", svc
        published = c.attrs["NetworkSettings"]["Ports"]
        bindings = [b for entries in published.values() if entries for b in entries]
        assert bindings, f"{svc} publishes no port"
        assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, (svc, bindings)
        assert {int(b["HostPort"]) for b in bindings} == {ports[svc]}
        for value in secrets.values():  # not in env, command, labels or healthcheck
            assert value not in json.dumps(c.attrs), f"a password shows in docker inspect of {svc}"

    # Redis: refuses without the password, answers with it, and appends to its AOF.
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=settings.redis_port, retry=NO_RETRY).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=settings.redis_port, password="wrong", retry=NO_RETRY).ping()
    r = redis.Redis.from_url(redis_url(settings), socket_timeout=5)
    assert r.ping() is True
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    r.set("renderdev:test", "kept")

    # Postgres: the password from the secrets file opens the database; a wrong one does not.
    engine = sqlalchemy.create_engine(db_url(settings))
    with engine.connect() as conn:
        row = conn.execute(sqlalchemy.text("SELECT current_user, current_database()")).one()
    engine.dispose()
    assert tuple(row) == (settings.db_user, settings.db_name)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=settings.db_port,
            user=settings.db_user,
            password="wrong",
            dbname=settings.db_name,
            connect_timeout=5,
        )

    # The api really reaches both.
    resp = httpx.get(f"{api_url(settings)}/healthz", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "redis": "ok", "db": "ok"}

    # A ready stack: the second plan changes nothing, every check is right.
    assert not any(s.needed for s in plan_services(docker_client, settings))
    checks = check_services(docker_client, settings)
    assert [c.ok for c in checks] == [True, True, True, True], checks
    assert checks[-1].name == "api mode" and checks[-1].state.startswith("image "), checks[-1]

    # Redis data survives a restart (AOF on the named volume).
    redis_container = service_container(docker_client, settings.project, "redis")
    assert redis_container is not None
    redis_container.restart(timeout=10)
    wait_healthy(docker_client, settings, time.monotonic() + 60, services=["redis"])
    assert redis.Redis.from_url(redis_url(settings), socket_timeout=5).get("renderdev:test") == b"kept"

    # Rewritten secret files reach the services: their containers are recreated (a bind mount keeps
    # the old inode), and Redis data outlives its container.
    secret_path(settings, "redis_password").write_text("edited in place")
    steps = plan_services(docker_client, settings)
    assert [s.needed for s in steps] == [True, False, True] and "recreating" in steps[-1].detail
    apply_steps(make_console(), steps, dry_run=False)
    recreated = service_container(docker_client, settings.project, "redis")
    assert recreated is not None and recreated.id != redis_container.id
    assert redis.Redis.from_url(redis_url(settings), socket_timeout=5).get("renderdev:test") == b"kept"
    assert httpx.get(f"{api_url(settings)}/healthz", timeout=10).status_code == 200

    # A stopped service shows in the checks with its fix.
    db_container = service_container(docker_client, settings.project, "db")
    assert db_container is not None
    db_container.stop(timeout=10)
    by_name = {c.name.split()[1]: c for c in check_services(docker_client, settings)}
    assert not by_name["db"].ok and "exited" in by_name["db"].state and by_name["db"].fix == "invoke services"
    assert plan_services(docker_client, settings)[-1].needed

    said = down(docker_client, settings, volumes=True)
    assert "removed 3 container(s) and 2 volume(s)" in said
    assert project_containers(docker_client, settings.project) == []
    assert docker_client.volumes.list(filters={"label": f"{PROJECT_LABEL}={settings.project}"}) == []
    assert down(docker_client, settings, volumes=True).endswith("nothing to remove")


def _labelled(settings: Settings, service: str) -> dict[str, str]:
    return {PROJECT_LABEL: settings.project, SERVICE_LABEL: service}


def test_wait_healthy_reports_an_exited_container_with_its_log(
    docker_client: DockerClient,
    project_images: Settings,
    isolated_settings: Callable[..., Settings],
    cleanup_project: list[str],
) -> None:
    settings = isolated_settings()
    cleanup_project.append(settings.project)
    # No password file mounted: the redis entrypoint refuses to start.
    c = docker_client.containers.run(
        settings.image("redis"), detach=True, labels=_labelled(settings, "redis"), healthcheck=SLOW_HEALTHCHECK
    )
    with pytest.raises(DockerError) as err:
        wait_healthy(docker_client, settings, time.monotonic() + 60, services=["redis"])
    msg = str(err.value)
    assert f"container {c.name} is exited" in msg and "exit code 1" in msg
    assert "no password in /run/secrets/redis_password" in msg  # the log tail
    assert f"docker logs {c.name}" in msg


def test_wait_healthy_gives_up_at_the_deadline_naming_the_state(
    docker_client: DockerClient,
    project_images: Settings,
    isolated_settings: Callable[..., Settings],
    cleanup_project: list[str],
) -> None:
    settings = isolated_settings()
    cleanup_project.append(settings.project)
    docker_client.containers.run(
        settings.base_image,
        ["sh", "-c", "echo still starting; sleep 300"],
        detach=True,
        labels=_labelled(settings, "db"),
        healthcheck=SLOW_HEALTHCHECK,
    )
    started = time.monotonic()
    with pytest.raises(DockerError) as err:
        wait_healthy(docker_client, settings, time.monotonic() + 2, services=["db"])
    assert time.monotonic() - started < 10
    msg = str(err.value)
    assert "not healthy after" in msg and "running, starting" in msg
    assert "still starting" in msg
    assert err.value.hint and "RENDERDEV_HEALTH_TIMEOUT" in err.value.hint


def test_new_secrets_are_refused_for_an_existing_database_volume(
    docker_client: DockerClient, isolated_settings: Callable[..., Settings], cleanup_project: list[str]
) -> None:
    settings = isolated_settings()
    cleanup_project.append(settings.project)
    volume = docker_client.volumes.create(
        name=f"{settings.project}_{DB_VOLUME}", labels={PROJECT_LABEL: settings.project, VOLUME_LABEL: DB_VOLUME}
    )
    with pytest.raises(DockerError) as err:
        plan_services(docker_client, settings)
    assert volume.name in str(err.value) and str(settings.secrets_file) in str(err.value)
    assert err.value.hint and "invoke down --volumes" in err.value.hint
    assert not settings.secrets_file.exists()
