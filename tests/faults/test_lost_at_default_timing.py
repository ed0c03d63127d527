"""The SIGKILL row's goal at the default timing: a stack given no heartbeat TTL or reaper period (so 20 s and
5 s), a pq worker's whole process tree SIGKILLed mid-render: its job is on sq within 60 s, then finished."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from docker import DockerClient

from provisioner.config import Settings
from provisioner.proc import alive, kill_tree
from renderfarm.settings import Reliability
from tests.stackutil import (
    SLOW,
    User,
    attempts,
    blender_pids,
    example_scene,
    isolated_stack,
    job,
    ledger,
    new_user,
    run_worker,
    start_worker,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]
PRICE = 10
GOAL = 60.0  # seconds from the SIGKILL to the job on sq (README, Reliability)


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    with isolated_stack(
        docker_client, tmp_path_factory.mktemp("default-timing"), blender_link=host_blender, hd_price=PRICE
    ) as settings:
        yield settings


def post_hd(api: httpx.Client, user: User) -> str:
    resp = api.post("/renders", json={"quality": "hd", "scene": example_scene()}, headers=user.headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["mjid"])


def test_a_sigkilled_pq_workers_job_is_on_sq_within_60_s_at_the_default_ttl_and_period(
    stack: Settings, api: httpx.Client, r: redis.Redis, tmp_path: Path
) -> None:
    defaults = Reliability()
    assert (stack.heartbeat_ttl, stack.reap_interval) == (defaults.heartbeat_ttl, defaults.reap_interval) == (20, 5)
    user = new_user(stack, credits=PRICE)
    mjid = post_hd(api, user)
    worker = start_worker(stack, "pq", tmp_path / "pq.log", **SLOW)
    wait_for(lambda: job(api, mjid, user)["state"] == "started", 60, f"{mjid} to start")
    wait_for(lambda: bool(blender_pids(worker.pid)), 60, "Blender to run under the worker")
    time.sleep(0.5)  # mid-render
    killed = kill_tree(worker.pid)
    worker.wait(timeout=10)
    wait_for(lambda: not any(alive(p) for p in killed), 10, "the killed tree to be gone")
    took = wait_for(
        lambda: job(api, mjid, user)["state"] == "queued" and job(api, mjid, user)["queue"] == "sq",
        GOAL,
        f"{mjid} on sq within {GOAL} s of the SIGKILL (TTL {stack.heartbeat_ttl} s, period {stack.reap_interval} s)",
        poll=0.5,
    )
    print(
        f"SIGKILL -> job on sq in {took:.1f} s (heartbeat TTL {stack.heartbeat_ttl} s, period {stack.reap_interval} s)"
    )
    # Found by the heartbeat's expiry (refreshed every third of the TTL), not by anything quicker.
    assert took > stack.heartbeat_ttl * 2 / 3 - 1
    assert [(a["queue"], a["outcome"]) for a in attempts(r, mjid)] == [("pq", "lost")]
    run_worker(stack, "sq")
    assert job(api, mjid, user)["state"] == "finished"
    assert ledger(stack, mjid) == [("charge", -PRICE)]
    assert sorted(p.name for p in stack.renders_dir.iterdir() if mjid in p.name) == [f"{mjid}-2.png"]
