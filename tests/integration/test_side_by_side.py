"""A second stack beside the first: its default ports are taken, so it gets free ones by itself, remembered."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker import DockerClient

from provisioner.config import REPO_ROOT, load_settings

pytestmark = [pytest.mark.integration]
DEFAULTS = {"redis_port": 6379, "db_port": 5432, "api_port": 8000}


@contextlib.contextmanager
def held(ports: list[int]) -> Iterator[None]:
    """Listen on each port of 127.0.0.1 that is free (one that is taken is held by someone else already)."""
    socks = []
    for port in ports:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            socks.append(s)
        except OSError:
            s.close()
    try:
        yield
    finally:
        for s in socks:
            s.close()


def test_a_project_whose_default_ports_are_taken_gets_free_ones_and_keeps_them(
    docker_client: DockerClient, project_images: object, tmp_path: Path, cleanup_project: list[str]
) -> None:
    settings = load_settings(
        project="rdside-" + tmp_path.name[-8:].lower().replace("_", "-"), state_dir=tmp_path / "state"
    )
    cleanup_project.append(settings.project)
    env = {k: v for k, v in settings.as_environment().items() if not k.endswith("_PORT")}
    env.update({k: v for k, v in os.environ.items() if not k.startswith("RENDERDEV_")})
    env["RENDERDEV_CONFIG"] = str(tmp_path / "none.toml")

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
        )

    with held(list(DEFAULTS.values())):
        first = invoke("services")
        assert first.returncode == 0, first.stdout + first.stderr
        for key, port in DEFAULTS.items():
            assert f"{key} {port} is in use by" in first.stdout, first.stdout
        remembered = json.loads(settings.ports_file.read_text())
        assert set(remembered) == set(DEFAULTS) and not set(remembered.values()) & set(DEFAULTS.values())

        again = invoke("services")
        assert again.returncode == 0 and "Nothing changed" in again.stdout, again.stdout
        status = json.loads(invoke("status", "--json").stdout)
        assert status["urls"]["api"] == f"http://127.0.0.1:{remembered['api_port']}/"
        listed = invoke("ls").stdout
        assert f"api 127.0.0.1:{remembered['api_port']}" in listed, listed

    env["RENDERDEV_API_PORT"] = str(remembered["db_port"])  # an explicit port is never changed: a clash is refused
    refused = invoke("services")
    assert refused.returncode == 1 and "api_port and db_port are both" in refused.stderr, refused.stderr
