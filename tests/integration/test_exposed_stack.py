"""Results over the network (issue 11): `invoke services --expose ADDRESS` reaches the stack on an address of this
host with TLS only. The address is a veth of the test's own (tests/netif.py, 10.213.X.1, its peer in a namespace of
the test's own); every connection goes to it or to 127.0.0.1.

On ADDRESS: the API answers https with the stack's CA and nothing in plain HTTP; Redis refuses plain text and accepts
TLS with a worker's ACL user; the database's port is closed; no container publishes anything else there. A worker
given only its worker file (format renderdev-worker/2, with the CA) renders a preview posted through the API. A re-run
without --expose keeps the exposure and changes nothing; `--expose none` withdraws it.

Real Docker, Redis, Postgres, the api image (api and api-tls) and Blender (the `host_blender` fixture).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from docker import DockerClient
from rich.console import Console

from provisioner.config import Settings
from provisioner.dockerapi import project_containers
from provisioner.exposure import expose
from renderdev.testing.stack import stack_settings
from renderfarm.clients import make_worker_redis
from renderfarm.png import png_size
from renderfarm.settings import WORKER_FILE_FORMAT_TLS, WorkerAccess
from renderfarm.tls import ca_context
from tests.netif import Veth, veth_address
from tests.stackutil import invoke, new_user, require_blender, small_scene

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("heavy")]  # one at a time: tests/conftest.py


@pytest.fixture(scope="module")
def veth() -> Iterator[Veth]:
    with veth_address() as v:
        yield v


def ok(settings: Settings, *args: str, **extra: str) -> str:
    done = invoke(settings, *args, **extra)
    assert done.returncode == 0, f"invoke {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def refused(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def published(client: DockerClient, project: str) -> set[tuple[str, str, str]]:
    """(service, host address, container port) of every port the project's containers publish."""
    found = set()
    for c in project_containers(client, project, all=False):
        c.reload()
        for target, bindings in ((c.attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
            for b in bindings or []:
                found.add((c.labels["com.docker.compose.service"], str(b["HostIp"]), target))
    return found


def test_an_exposed_stack_speaks_only_tls_on_its_address(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    veth: Veth,
    tmp_path: Path,
    cleanup_project: list[str],
) -> None:
    settings = stack_settings(tmp_path, blender_link=require_blender(host_blender))
    cleanup_project.append(settings.project)
    address = veth.address

    said = ok(settings, "services", "--expose", address)
    assert f"exposed with TLS: API https://{address}:{settings.api_port}, Redis (TLS) {address}:" in said, said
    assert json.loads(settings.expose_file.read_text()) == {"address": address}
    ca = (settings.tls_dir / "ca.crt").read_text()

    # Only TLS on ADDRESS: api-tls's 8443 and Redis's 6380; the plain ports on 127.0.0.1.
    ports = published(docker_client, settings.project)
    assert {(svc, port) for svc, host, port in ports if host == address} == {
        ("api-tls", "8443/tcp"),
        ("redis", "6380/tcp"),
    }, ports
    assert {host for _, host, _ in ports} == {address, "127.0.0.1"}, ports

    # The API: https with the CA; plain HTTP on the same port gets no answer; the host name is checked.
    https = f"https://{address}:{settings.api_port}"
    with httpx.Client(base_url=https, verify=ca_context(ca), timeout=30) as api:
        assert api.get("/healthz").json()["status"] == "ok"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{address}:{settings.api_port}/healthz", timeout=10)
    with pytest.raises(httpx.ConnectError):  # the system's CAs do not vouch for it
        httpx.get(f"{https}/healthz", timeout=10)

    # Nothing plain: the database's port is closed on ADDRESS, Redis's TLS port refuses plain text.
    assert refused(address, settings.db_port)
    plain = redis.Redis(host=address, port=settings.redis_port, socket_timeout=5, socket_connect_timeout=5)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()

    # A worker file for the exposed stack: https, Redis with TLS, and the CA.
    path = tmp_path / "remote.json"
    said = ok(settings, "worker-config", "--name", "remote", "--output", str(path))
    raw: dict[str, Any] = json.loads(path.read_text())
    assert raw["format"] == WORKER_FILE_FORMAT_TLS and raw["ca"] == ca
    assert raw["api_url"] == https and (raw["redis_host"], raw["redis_port"]) == (address, settings.redis_port)
    access = WorkerAccess.from_file(path)
    assert "Nothing changed" in ok(settings, "worker-config", "--name", "remote", "--output", str(path))

    r = make_worker_redis(access, socket_timeout=10)  # TLS, the worker's ACL user
    assert r.ping() and r.connection_pool.connection_class.__name__ == "SSLConnection"
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.hset("renderfarm:probe", "x", "1")  # still the worker's ACL: rq's keys only
    r.close()

    # A worker with only that file (no stack settings of its own) renders a preview posted through the API.
    user = new_user(settings)
    with httpx.Client(base_url=https, verify=ca_context(ca), timeout=30, headers=user.headers) as api:
        posted = api.post("/renders", json={"quality": "preview", "scene": small_scene()})
        assert posted.status_code == 202, posted.text
        mjid = posted.json()["mjid"]
        done = invoke(
            settings,
            "worker",
            "--burst",
            "--config",
            str(path),
            RENDERDEV_STATE_DIR=str(tmp_path / "elsewhere"),
            RENDERDEV_BLENDER_LINK=str(settings.blender_link),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        job = api.get(f"/renders/{mjid}").json()
        assert job["state"] == "finished", (job, done.stderr[-3000:])
        image = api.get(f"/renders/{mjid}/image")
        assert image.status_code == 200
    (tmp_path / "got.png").write_bytes(image.content)
    assert png_size(tmp_path / "got.png") == (640, 360)

    # The same address again changes nothing; so does a re-run without --expose, which keeps it.
    outcome = expose(docker_client, settings, address, Console(quiet=True))
    assert outcome.changed == [] and f"services: exposure of project {settings.project}" in outcome.already_right
    again = ok(settings, "services")
    assert "Nothing changed" in again and f"ok     services: exposure of project {settings.project}" in again, again
    status = json.loads(invoke(settings, "status", "--json").stdout)  # exit 1: this test made no aliases
    checks = {c["name"]: c for c in status["checks"]}
    assert checks["exposure"]["ok"] and https in checks["exposure"]["state"], checks["exposure"]
    assert checks["service api-tls (" + settings.project + ")"]["ok"], checks

    # --expose none: back to 127.0.0.1 only.
    said = ok(settings, "services", "--expose", "none")
    assert f"withdraw the exposure on {address}" in said, said
    assert not settings.expose_file.exists()
    assert {host for _, host, _ in published(docker_client, settings.project)} == {"127.0.0.1"}
    assert refused(address, settings.api_port) and refused(address, settings.redis_port)
    ok(settings, "down", "--volumes")
