"""Compose driver detection (with a PATH the test controls) and the environment compose.yaml reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provisioner import compose
from provisioner.compose import ComposeDriver, compose_argv, compose_env, container_user, detect_driver
from provisioner.config import load_settings
from provisioner.errors import DockerError
from provisioner.workers import worker_variables

DOCKER_WITH_PLUGIN = """#!/bin/sh
[ "$1 $2 $3" = "compose version --short" ] && { echo 2.26.1; exit 0; }
exit 1
"""
DOCKER_WITHOUT_PLUGIN = """#!/bin/sh
echo "docker: '$1' is not a docker command." >&2
exit 1
"""
COMPOSE_V1 = """#!/bin/sh
[ "$1 $2" = "version --short" ] && { echo 1.29.2; exit 0; }
exit 1
"""


@pytest.fixture(autouse=True)
def _fresh_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compose, "_detected", {})


def _bin(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(script)
    path.chmod(0o755)
    return path


def test_prefers_the_v2_plugin(tmp_path: Path) -> None:
    docker = _bin(tmp_path / "bin", "docker", DOCKER_WITH_PLUGIN)
    _bin(tmp_path / "bin", "docker-compose", COMPOSE_V1)
    driver = detect_driver(str(tmp_path / "bin"))
    assert driver == ComposeDriver((str(docker), "compose"), "2.26.1")
    assert driver.major == 2 and driver.describe() == "docker compose 2.26.1"


def test_falls_back_to_v1_when_docker_has_no_compose_plugin(tmp_path: Path) -> None:
    _bin(tmp_path / "a", "docker", DOCKER_WITHOUT_PLUGIN)
    legacy = _bin(tmp_path / "b", "docker-compose", COMPOSE_V1)
    driver = detect_driver(f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert driver == ComposeDriver((str(legacy),), "1.29.2")
    assert driver.major == 1 and driver.describe() == "docker-compose 1.29.2"


def test_v1_alone_is_enough(tmp_path: Path) -> None:
    legacy = _bin(tmp_path / "bin", "docker-compose", COMPOSE_V1)
    assert detect_driver(str(tmp_path / "bin")).argv == (str(legacy),)


def test_neither_names_both(tmp_path: Path) -> None:
    _bin(tmp_path / "bin", "docker", DOCKER_WITHOUT_PLUGIN)
    with pytest.raises(DockerError) as err:
        detect_driver(str(tmp_path / "bin"))
    msg = str(err.value)
    assert "`docker compose`" in msg and "`docker-compose`" in msg
    assert err.value.hint and "Compose v2" in err.value.hint


def test_detects_once_per_path(tmp_path: Path) -> None:
    docker = _bin(tmp_path / "bin", "docker", DOCKER_WITH_PLUGIN)
    first = detect_driver(str(tmp_path / "bin"))
    docker.unlink()
    assert detect_driver(str(tmp_path / "bin")) is first


def test_compose_env_and_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("RENDERDEV_")]:  # the defaults, whatever the shell has
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        project="rdunit", state_dir=tmp_path / "state", redis_port=7001, db_port=7002, api_port=7003
    )
    env = compose_env(settings)
    assert env == {
        "RENDERDEV_REDIS_IMAGE": "renderdev/redis:dev",
        "RENDERDEV_DB_IMAGE": "renderdev/db:dev",
        "RENDERDEV_API_IMAGE": "renderdev/api:dev",
        "RENDERDEV_WORKER_IMAGE": "renderdev/worker:dev",
        "RENDERDEV_BIND_HOST": "127.0.0.1",
        "RENDERDEV_REDIS_PORT": "7001",
        "RENDERDEV_DB_PORT": "7002",
        "RENDERDEV_API_PORT": "7003",
        "RENDERDEV_DB_USER": "renderfarm",
        "RENDERDEV_DB_NAME": "renderfarm",
        "RENDERDEV_SECRETS_DIR": str(tmp_path / "state" / "rdunit" / "secrets"),
        "RENDERDEV_RENDERS_DIR": str(tmp_path / "state" / "rdunit" / "renders"),
        "RENDERDEV_API_USER": container_user(),
        "RENDERDEV_HD_PRICE": "10",
        "RENDERDEV_HEARTBEAT_TTL": "20.0",
        "RENDERDEV_REAP_INTERVAL": "5.0",
        "RENDERDEV_MAX_LOST": "2",
        "RENDERDEV_CONFIG_HASH": env["RENDERDEV_CONFIG_HASH"],
    }
    assert compose_env(settings) == env  # pure
    other = compose_env(
        load_settings(
            project="rdunit", state_dir=tmp_path / "state", redis_port=7001, db_port=7002, api_port=7003, hd_price=11
        )
    )
    assert other["RENDERDEV_CONFIG_HASH"] != env["RENDERDEV_CONFIG_HASH"]  # a changed setting shows
    driver = ComposeDriver(("/usr/bin/docker", "compose"), "2.26.1")
    assert compose_argv(driver, settings, "up", "-d") == [
        "/usr/bin/docker",
        "compose",
        "-p",
        "rdunit",
        "-f",
        str(settings.compose_file),
        "up",
        "-d",
    ]


def test_compose_file_reads_every_variable_we_set() -> None:
    settings = load_settings()
    text = settings.compose_file.read_text()
    for name in compose_env(settings, worker_variables(settings, ["pq", "sq"])):
        assert "${" + name in text, name


def test_the_worker_services_variables_are_in_its_config_hash_only_when_given(tmp_path: Path) -> None:
    settings = load_settings(project="rdunit", state_dir=tmp_path / "state")
    stack = compose_env(settings)
    pq = compose_env(settings, worker_variables(settings, ["pq"], environ={}))
    both = compose_env(settings, worker_variables(settings, ["pq", "sq"], environ={}))
    slow = compose_env(settings, worker_variables(settings, ["pq", "sq"], environ={"RENDERFARM_HD_SAMPLES": "512"}))
    hashes = {env["RENDERDEV_CONFIG_HASH"] for env in (stack, pq, both, slow)}
    assert len(hashes) == 4  # other queues or samples: worker containers to recreate; the stack's own unchanged
    assert both["RENDERDEV_WORKER_QUEUES"] == "pq,sq" and slow["RENDERFARM_HD_SAMPLES"] == "512"
