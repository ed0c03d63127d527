"""Render workers on a Docker swarm (`invoke deploy`, issue 11), on a single-node swarm of this machine's engine:
`--init-swarm` makes it; 1 pq + 1 sq workers register with rq and render through the API; the same numbers again
change nothing; pq scaled to 2, then to 0 with a job in hand, which is finished or put back on sq (never lost) and
finished by the sq worker; a rotated worker file is a new secret and the old one goes; `--remove` leaves no service,
secret or registry volume. The swarm is left as it was found: left again when the test made it, and the module skips
when the engine is already in a swarm it did not make.

Real Docker (swarm mode, `docker stack deploy`, the stack's registry, a push and pulls by digest), Redis, Postgres and
Blender (in the worker image).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from docker import DockerClient
from docker.errors import APIError

from provisioner.config import Settings
from provisioner.ports import free_port
from provisioner.swarm import (
    SECRET_LABEL,
    STACK_LABEL,
    registry_volume,
    remove_stack,
    service_name,
    stack_name,
    worker_repository,
)
from tests.stackutil import attempts, invoke, isolated_stack, new_user, small_scene, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("heavy")]  # one at a time: tests/conftest.py
PRICE = 10
# Previews quick; HD long enough (~15 s here) that a scale-down usually finds it in hand (either way it must not be
# lost).
GWBRIDGE = "docker_gwbridge"  # the bridge swarm mode makes on a node
WORKER_ENV = {"RENDERFARM_PREVIEW_SAMPLES": "2", "RENDERFARM_HD_SAMPLES": "8"}


def _swarm_state(client: DockerClient) -> str:
    return str((client.info().get("Swarm") or {}).get("LocalNodeState", ""))


@pytest.fixture(scope="module")
def found_swarm(docker_client: DockerClient) -> Iterator[None]:
    """Skip when the engine is in a swarm this module did not make; leave the swarm it made at the end."""
    state = _swarm_state(docker_client)
    if state != "inactive":
        pytest.skip(
            f"the Docker engine is already part of a swarm (state {state!r}) that this test did not make: it deploys"
            " on a single-node swarm of its own (docker swarm leave --force, if that swarm is not needed)"
        )
    bridge_before = bool(docker_client.networks.list(names=[GWBRIDGE]))
    try:
        yield
    finally:
        if _swarm_state(docker_client) != "inactive":
            docker_client.swarm.leave(force=True)
        if not bridge_before:  # `docker swarm init` made it and `leave` keeps it
            for network in docker_client.networks.list(names=[GWBRIDGE]):
                try:
                    network.remove()
                except APIError:
                    pass


@pytest.fixture(scope="module")
def stack(
    found_swarm: None,
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    done = invoke(project_images, "images", timeout=3600)  # the worker and registry images, as a user builds them
    assert done.returncode == 0, done.stdout + done.stderr
    with isolated_stack(
        docker_client,
        tmp_path_factory.mktemp("swarm"),
        blender_link=host_blender,
        hd_price=PRICE,
        registry_port=free_port(),
    ) as settings:
        try:
            yield settings
        finally:
            if _swarm_state(docker_client) == "active":
                remove_stack(docker_client, settings)
            repository = worker_repository(settings, "127.0.0.1")
            try:
                docker_client.images.remove(f"{repository}:{settings.image_tag}")
            except APIError:
                pass


def deploy(settings: Settings, *args: str, code: int = 0) -> str:
    done = invoke(settings, "deploy", *args, timeout=900, **WORKER_ENV)
    said = done.stdout + done.stderr
    assert done.returncode == code, said
    return said


def post(api: httpx.Client, headers: dict[str, str], quality: str) -> str:
    resp = api.post("/renders", json={"quality": quality, "scene": small_scene()}, headers=headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["mjid"])


def state(api: httpx.Client, headers: dict[str, str], mjid: str) -> dict[str, Any]:
    resp = api.get(f"/renders/{mjid}", headers=headers)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def services(client: DockerClient, settings: Settings) -> dict[str, Any]:
    stack = stack_name(settings)
    return {str(s.name): s for s in client.services.list(filters={"label": f"{STACK_LABEL}={stack}"})}


def rq_names(r: redis.Redis, settings: Settings, svc: str) -> list[str]:
    from rq import Worker

    return [str(w.name) for w in Worker.all(connection=r) if f"-{service_name(stack_name(settings), svc)}-" in w.name]


def test_deploy_scale_drain_rotate_and_remove_on_a_single_node_swarm(
    docker_client: DockerClient, stack: Settings, api: httpx.Client, r: redis.Redis
) -> None:
    name = stack_name(stack)
    pq, sq = service_name(name, "pq"), service_name(name, "sq")
    said = deploy(stack, "--preemptible", "1", "--standard", "1", code=1)
    assert "not in a swarm" in said and "invoke deploy --init-swarm" in said, said
    dry = deploy(stack, "--preemptible", "1", "--standard", "1", "--init-swarm", "--dry-run")
    assert "Dry run: nothing was changed." in dry and "docker swarm init" in dry, dry
    assert _swarm_state(docker_client) == "inactive"

    said = deploy(stack, "--preemptible", "1", "--standard", "1", "--init-swarm")
    assert "single-node swarm" in said and "pushed sha256:" in said and "each listed by rq" in said, said
    found = services(docker_client, stack)
    assert sorted(found) == sorted([pq, sq, service_name(name, "registry")]), found
    repository = worker_repository(stack, "127.0.0.1")
    for svc in (pq, sq):
        spec = found[svc].attrs["Spec"]
        image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
        assert image.startswith(f"{repository}:{stack.image_tag}@sha256:"), image  # by digest, from the registry
        assert spec["Mode"]["Replicated"]["Replicas"] == 1
        assert spec["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 30_000_000_000  # covers the drain
    secrets = docker_client.secrets.list(filters={"label": f"{SECRET_LABEL}={name}"})
    assert len(secrets) == 1 and secrets[0].name.startswith(f"{name}-worker-"), secrets
    assert len(rq_names(r, stack, "pq")) == 1 and len(rq_names(r, stack, "sq")) == 1

    user = new_user(stack, credits=PRICE)
    mjid = post(api, user.headers, "preview")
    wait_for(lambda: state(api, user.headers, mjid)["state"] == "finished", 120, f"preview {mjid} to finish")
    history = attempts(r, mjid)
    assert [(a["queue"], a["outcome"]) for a in history] == [("pq", "finished")], history
    assert f"-{pq}-" in history[0]["worker"] and history[0]["credential"] == "swarm", history

    versions = {n: s.version for n, s in services(docker_client, stack).items()}
    again = deploy(stack, "--preemptible", "1", "--standard", "1")
    assert "Nothing changed" in again, again
    assert {n: s.version for n, s in services(docker_client, stack).items()} == versions

    status = json.loads(invoke(stack, "status", "--json").stdout)
    rows = {row["service"]: row for row in status["swarm"]}
    assert (rows[pq]["running"], rows[pq]["desired"], rows[sq]["running"], rows[sq]["desired"]) == (1, 1, 1, 1), rows
    assert "Swarm workers" in invoke(stack, "status").stdout

    said = deploy(stack, "--preemptible", "2", "--standard", "1")
    assert "pq: replicas 1 -> 2" in said, said
    assert len(rq_names(r, stack, "pq")) == 2

    hd = post(api, user.headers, "hd")
    wait_for(lambda: state(api, user.headers, hd)["state"] == "started", 60, f"{hd} to start on a pq worker")
    said = deploy(stack, "--preemptible", "0", "--standard", "1")
    assert "pq: replicas 2 -> 0" in said, said
    assert rq_names(r, stack, "pq") == []
    wait_for(lambda: state(api, user.headers, hd)["state"] == "finished", 120, f"{hd} to be finished")
    outcomes = [(a["queue"], a["outcome"]) for a in attempts(r, hd)]
    # Drained mid-render: put back on sq and finished there; or it was done before the drain: never lost.
    assert outcomes in ([("pq", "preempted"), ("sq", "finished")], [("pq", "finished")]), outcomes
    resp = api.get(f"/renders/{hd}/image", headers=user.headers)
    assert resp.status_code == 200 and resp.content.startswith(b"\x89PNG")

    deploy(stack, "--preemptible", "0", "--standard", "0")
    assert rq_names(r, stack, "sq") == []
    old = {s.name for s in docker_client.secrets.list(filters={"label": f"{SECRET_LABEL}={name}"})}
    rotated = invoke(stack, "worker-config", "--name", "swarm", "--rotate")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    said = deploy(stack, "--preemptible", "0", "--standard", "0")
    assert "secret " in said and "remove those no service uses" in said, said
    new = {s.name for s in docker_client.secrets.list(filters={"label": f"{SECRET_LABEL}={name}"})}
    assert len(new) == 1 and not new & old, (old, new)

    said = deploy(stack, "--remove")
    assert "removed" in said, said
    assert services(docker_client, stack) == {}
    assert docker_client.secrets.list(filters={"label": f"{SECRET_LABEL}={name}"}) == []
    assert docker_client.volumes.list(filters={"name": registry_volume(name)}) == []
    worker = docker_client.images.get(stack.image("worker"))
    assert not any(f"/{stack.image_prefix}/worker:" in t and ":" in t.split("/")[0] for t in worker.tags), worker.tags
    assert "Nothing changed" in deploy(stack, "--remove")
