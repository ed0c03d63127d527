"""Workers on other hosts (issue 11): the stack exposed on an address of this host (`--expose`, TLS with the CA setup
made), three worker hosts in network namespaces of the test's own (tests/hosts/netns.py), each running
`invoke worker --config FILE` with nothing but its own worker file, made by `invoke worker-config`. One host's clock
is 2 minutes behind (libfaketime).

Tried: 30 previews spread over the three hosts, each done once (one attempt, one image), on the skewed host too,
whose attempts carry the server's time; SIGKILL of every process of the host rendering an HD job, which another host
then finishes (charged once, never refunded); a host whose credential is revoked is refused at once (its worker
stops, naming the refusal; a new connection is refused by the API and by Redis).

Real Docker, Redis (TLS on the exposed address, ACL users), Postgres, the api container, Blender on the host.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from docker import DockerClient

from provisioner.config import Settings
from provisioner.dockerapi import remove_by_label
from provisioner.firewall import remove_project_rules
from provisioner.secrets import read_secrets
from provisioner.services import api_url
from renderdev.testing.stack import stack_settings
from renderfarm.keys import mq_key
from renderfarm.settings import WorkerAccess
from tests.hosts.netns import Host, HostNetwork, host_network
from tests.stackutil import (
    REPO,
    attempts,
    invoke,
    ledger,
    new_user,
    require_blender,
    small_scene,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("heavy")]  # one at a time: tests/conftest.py

HOSTS = 3
SKEWED = 2  # the host whose clock is 2 minutes behind
SKEW = "-2m"
PREVIEWS = 30
HEARTBEAT_TTL = 4.0  # a killed host's job is found lost within seconds
SAMPLES = {"RENDERFARM_PREVIEW_SAMPLES": "2", "RENDERFARM_HD_SAMPLES": "12"}  # HD long enough to kill mid-render


class Farm:
    def __init__(self, stack: Settings, net: HostNetwork, files: list[Path], logs: list[Path]) -> None:
        self.stack, self.net, self.files, self.logs = stack, net, files, logs
        self.manager = redis.Redis(
            host=stack.bind_host, port=stack.redis_port, password=read_secrets(stack)["redis_password"]
        )

    def credential(self, i: int) -> str:
        return f"host{i}"

    def host_of(self, credential: str) -> int:
        return int(credential.removeprefix("host"))

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")[-4000:]

    def workers(self) -> set[str]:
        return {w.decode() for w in self.manager.smembers("rq:workers")}


def host_environment(host_dir: Path, blender: Path) -> dict[str, str]:
    """What a worker on another machine has: a PATH, a home and a state folder of its own, its Blender, the
    samples; none of the stack's settings (the worker file says where the stack is)."""
    host_dir.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(host_dir),
        "LANG": "C.UTF-8",
        "RENDERDEV_STATE_DIR": str(host_dir / "state"),
        "RENDERDEV_BLENDER_LINK": str(blender),
        "RENDERDEV_BLENDER_SOURCE": "installed",
        **SAMPLES,
    }


def start_host_worker(farm_dir: Path, host: Host, i: int, file: Path, blender: Path, log: Path) -> None:
    home = farm_dir / f"host{i}"
    argv = [sys.executable, "-m", "invoke", "worker", "--config", str(file), "--queues", "pq,sq"]
    if i == SKEWED:
        # libfaketime: the worker's wall clock (time.time, datetime.now) 2 minutes behind; monotonic clocks left
        # true. Not Blender's: libfaketime clashes with Blender's own clock calls ("unexpected recursive calls to
        # clock_gettime()", and Blender hangs), and the farm never reads Blender's clock. So this host's Blender is a
        # wrapper that drops the preload before it runs the real one.
        home.mkdir(parents=True, exist_ok=True)
        wrapper = home / "blender"
        wrapper.write_text(f'#!/bin/sh\nunset LD_PRELOAD FAKETIME\nexec {blender} "$@"\n')
        wrapper.chmod(0o755)
        blender = wrapper
        argv = ["faketime", "-f", SKEW, *argv]
    env = host_environment(home, blender)
    if i == SKEWED:
        env.update(FAKETIME_DONT_FAKE_MONOTONIC="1")
    host.start(argv, env=env, log=log, cwd=REPO)


@pytest.fixture(scope="module")
def farm(
    docker_client: DockerClient, project_images: Settings, host_blender: Path, tmp_path_factory: Any
) -> Iterator[Farm]:
    tmp = tmp_path_factory.mktemp("many-hosts")
    with host_network(HOSTS) as net:
        stack = stack_settings(
            tmp / "stack",
            blender_link=require_blender(host_blender),
            heartbeat_ttl=HEARTBEAT_TTL,
            reap_interval=1.0,
        )
        try:
            up = invoke(stack, "services", "--expose", net.address)
            assert up.returncode == 0, up.stdout + up.stderr
            files, logs = [], []
            for i, host in enumerate(net.hosts):
                path = tmp / f"host{i}.json"
                made = invoke(stack, "worker-config", "--name", f"host{i}", "--output", str(path))
                assert made.returncode == 0, made.stdout + made.stderr
                files.append(path)
                logs.append(tmp / f"host{i}.log")
                start_host_worker(tmp, host, i, path, host_blender, logs[-1])
            f = Farm(stack, net, files, logs)
            try:
                wait_for(lambda: len(f.workers()) >= HOSTS, 120, f"{HOSTS} host workers registered with rq")
                yield f
            finally:
                f.manager.close()
        finally:
            for host in net.hosts:
                host.stop(timeout=10)
            remove_project_rules(stack.project)
            remove_by_label(docker_client, stack.project)


@pytest.fixture(scope="module")
def api(farm: Farm) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url(farm.stack), timeout=30) as client:
        yield client


def test_a_worker_file_names_the_exposed_address_and_carries_the_ca(farm: Farm) -> None:
    for path in farm.files:
        assert path.stat().st_mode & 0o777 == 0o600
        access = WorkerAccess.from_file(path)
        assert access.api_url.startswith(f"https://{farm.net.address}:"), access.api_url
        assert access.redis_host == farm.net.address
        raw = json.loads(path.read_text())
        assert "BEGIN CERTIFICATE" in json.dumps(raw), "the worker file carries the stack's CA certificate"
        secrets = read_secrets(farm.stack)
        assert secrets["db_password"] not in path.read_text()


def test_thirty_previews_over_three_hosts_are_each_done_once_even_on_a_skewed_clock(
    farm: Farm, api: httpx.Client
) -> None:
    user = new_user(farm.stack)
    posted = []
    posted_at = datetime.now(UTC)
    for n in range(PREVIEWS):
        resp = api.post(
            "/renders", json={"quality": "preview", "scene": small_scene(lens=20.0 + n)}, headers=user.headers
        )
        assert resp.status_code == 202, resp.text
        posted.append(resp.json()["mjid"])

    def all_done() -> bool:
        states = [farm.manager.hget(mq_key(m), "state") for m in posted]
        failed = [m for m, s in zip(posted, states, strict=True) if s == b"failed"]
        assert not failed, (failed, [farm.log(i) for i in range(HOSTS)])
        return all(s == b"finished" for s in states)

    try:
        wait_for(all_done, 300, f"{PREVIEWS} previews finished", poll=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the hosts' logs:\n" + "\n".join(farm.log(i) for i in range(HOSTS))) from None
    by_host: Counter[int] = Counter()
    for mjid in posted:
        tries = attempts(farm.manager, mjid)
        assert len(tries) == 1, (mjid, tries)  # done once: never lost, never retried
        by_host[farm.host_of(tries[0]["credential"])] += 1
        image = api.get(f"/renders/{mjid}/image", headers=user.headers)
        assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(by_host) == set(range(HOSTS)), f"every host took jobs: {dict(by_host)}"
    assert sum(by_host.values()) == PREVIEWS

    # The skewed host's attempts carry the server's time (the API stamps them), not the host's 2-minutes-behind clock:
    # every attempt began after the first post and before now, by this (the server's) clock.
    now = datetime.now(UTC)
    skewed = 0
    for mjid in posted:
        (attempt,) = attempts(farm.manager, mjid)
        started = datetime.fromisoformat(attempt["started_at"])
        assert posted_at - timedelta(seconds=1) <= started <= now + timedelta(seconds=1), (attempt, posted_at, now)
        skewed += farm.host_of(attempt["credential"]) == SKEWED
    assert skewed, "the skewed host took jobs"


def test_sigkill_of_a_whole_host_mid_render_and_another_host_finishes_the_job(farm: Farm, api: httpx.Client) -> None:
    user = new_user(farm.stack, credits=50)
    resp = api.post("/renders", json={"quality": "hd", "scene": small_scene()}, headers=user.headers)
    assert resp.status_code == 202, resp.text
    mjid = resp.json()["mjid"]
    wait_for(lambda: farm.manager.hget(mq_key(mjid), "state") == b"started", 120, "the HD job started")
    (first,) = attempts(farm.manager, mjid)
    victim = farm.host_of(first["credential"])
    time.sleep(1.0)  # mid-render: Blender has the scene built and is sampling
    assert farm.manager.hget(mq_key(mjid), "state") == b"started", "the HD render ended before the kill"
    killed = farm.net.hosts[victim].kill_all()
    assert killed, "the host had processes to kill"
    # A killed process may linger a moment as a zombie until it is reaped (its parent died with it): none is left soon.
    wait_for(lambda: not farm.net.hosts[victim].pids(), 10, "no process left in the killed host")

    wait_for(lambda: farm.manager.hget(mq_key(mjid), "state") == b"finished", 300, "another host finished the job")
    tries = attempts(farm.manager, mjid)
    assert len(tries) == 2, tries
    assert farm.host_of(tries[1]["credential"]) != victim
    assert tries[1]["queue"] == "sq"  # a lost preemptible attempt is retried on the standard queue
    assert [reason for reason, _ in ledger(farm.stack, mjid)] == ["charge"]  # charged once, never refunded
    image = api.get(f"/renders/{mjid}/image", headers=user.headers)
    assert image.status_code == 200


def test_a_revoked_hosts_worker_is_refused_at_once(farm: Farm, api: httpx.Client) -> None:
    alive = [i for i, h in enumerate(farm.net.hosts) if h.pids()]
    assert alive, "a host still running"
    victim = alive[0]
    host = farm.net.hosts[victim]
    proc = host.procs[-1]
    done = invoke(farm.stack, "worker-revoke", "--name", farm.credential(victim))
    assert done.returncode == 0, done.stdout + done.stderr
    revoked_at = time.monotonic()
    proc.wait(timeout=60)
    stopped_in = time.monotonic() - revoked_at
    said = farm.log(victim)
    assert proc.returncode not in (0, None), said
    assert f"'{farm.credential(victim)}'" in said and "refuse" in said, said
    assert stopped_in < 30, f"the revoked worker stopped {stopped_in:.1f} s after the revocation"

    # A new connection from that host, through the worker's own client code (TLS with the file's CA): refused by the
    # API (401) and by Redis (AUTH).
    check = host.run(
        [sys.executable, "-c", PROBE, str(farm.files[victim])], env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "api: refused" in check.stdout and "redis: refused" in check.stdout, check.stdout
    # The other hosts' credentials still work from their own hosts.
    other = next(i for i in range(HOSTS) if i != victim)
    fine = farm.net.hosts[other].run(
        [sys.executable, "-c", PROBE, str(farm.files[other])], env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert "api: accepted" in fine.stdout and "redis: accepted" in fine.stdout, fine.stdout + fine.stderr


# Run inside a host's namespace: what the API and Redis answer a new connection made with a worker file.
PROBE = """
import sys
from pathlib import Path

import redis

from renderfarm.clients import make_worker_redis
from renderfarm.errors import RenderfarmError
from renderfarm.settings import WorkerAccess
from renderfarm.worker.farm_link import ApiLink

access = WorkerAccess.from_file(Path(sys.argv[1]))
link = ApiLink(access)
try:
    link.check()
    print("api: accepted")
except RenderfarmError as exc:
    print(f"api: refused ({exc})")
finally:
    link.close()
r = make_worker_redis(access)
try:
    r.ping()
    print("redis: accepted")
except redis.AuthenticationError as exc:
    print(f"redis: refused ({exc})")
finally:
    r.close()
"""
