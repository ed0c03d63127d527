"""The render pipeline end to end: the API in its container, Redis, Postgres, host workers, real Blender.

One isolated compose project (own name, ports, state folder) serves the whole module; workers run as
`invoke worker --burst` subprocesses, as a developer runs them, with samples lowered so renders are quick.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from docker import DockerClient

from provisioner.config import Settings
from renderfarm.keys import mq_index_key, mq_key
from renderfarm.png import png_size
from tests.stackutil import (
    REPO,
    balance,
    env_for,
    example_scene,
    invoke,
    isolated_stack,
    ledger,
    new_user,
    queue_ids,
    run_worker,
    seed,
    small_scene,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    folder = tmp_path_factory.mktemp("pipeline")
    with isolated_stack(docker_client, folder, blender_link=host_blender, hd_price=10) as settings:
        yield settings


def test_openapi_schema_is_served(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/renders", "/renders/{mjid}", "/renders/{mjid}/image", "/users/{email}/credits"} <= set(paths)


def test_preview_goes_to_pq_then_a_worker_renders_a_640x360_png(
    stack: Settings, api: httpx.Client, r: redis.Redis
) -> None:
    user = new_user(stack, credits=1)
    resp = api.post("/renders", json={"quality": "preview", "scene": example_scene()}, headers=user.headers)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    mjid = body["mjid"]
    assert body["queue"] == "pq" and body["status"] == "queued"
    assert mjid in queue_ids(r, "pq") and mjid not in queue_ids(r, "sq")
    assert r.zscore(mq_index_key(), mjid) is not None and r.hget(mq_key(mjid), "state") == b"queued"

    early = api.get(f"/renders/{mjid}/image", headers=user.headers)
    assert early.status_code == 409 and early.json()["state"] == "queued"

    run_worker(stack, "pq")
    job = api.get(f"/renders/{mjid}", headers=user.headers).json()
    assert job["state"] == "finished", job
    assert job["queue"] == "pq" and job["attempts"] == 1 and job["quality"] == "preview"
    assert job["image_url"] == f"/renders/{mjid}/image"
    img = api.get(job["image_url"], headers=user.headers)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    out = stack.state_dir / "dl.png"
    out.write_bytes(img.content)
    assert png_size(out) == (640, 360)
    assert balance(api, user) == 1  # a preview is free


def test_hd_with_credits_renders_1920x1080_and_charges_exactly_once(stack: Settings, api: httpx.Client) -> None:
    user = new_user(stack, credits=25)
    resp = api.post("/renders", json={"quality": "hd", "scene": small_scene()}, headers=user.headers)
    assert resp.status_code == 202, resp.text
    mjid = resp.json()["mjid"]
    assert balance(api, user) == 15
    run_worker(stack)
    job = api.get(f"/renders/{mjid}", headers=user.headers).json()
    assert job["state"] == "finished", job
    out = stack.state_dir / "hd.png"
    out.write_bytes(api.get(f"/renders/{mjid}/image", headers=user.headers).content)
    assert png_size(out) == (1920, 1080)
    assert balance(api, user) == 15
    assert ledger(stack, mjid) == [("charge", -10)]


def test_hd_without_enough_credits_is_402_and_changes_nothing(
    stack: Settings, api: httpx.Client, r: redis.Redis
) -> None:
    user = new_user(stack, credits=9)
    before = (queue_ids(r, "pq"), queue_ids(r, "sq"), r.zcard(mq_index_key()))
    resp = api.post("/renders", json={"quality": "hd", "scene": small_scene()}, headers=user.headers)
    assert resp.status_code == 402, resp.text
    body = resp.json()
    assert body["balance"] == 9 and body["price"] == 10
    assert "9" in body["detail"] and "10" in body["detail"] and "seed-credits" in body["detail"]
    assert (queue_ids(r, "pq"), queue_ids(r, "sq"), r.zcard(mq_index_key())) == before
    assert balance(api, user) == 9


def test_a_render_for_another_user_is_403_and_charges_nobody(stack: Settings, api: httpx.Client) -> None:
    payer, other = new_user(stack, credits=10), new_user(stack, credits=10)
    body = {"user": other.email, "quality": "hd", "scene": small_scene()}
    resp = api.post("/renders", json=body, headers=payer.headers)
    assert resp.status_code == 403, resp.text
    assert payer.email in resp.json()["detail"] and other.email in resp.json()["detail"]
    assert (balance(api, payer), balance(api, other)) == (10, 10)
    named = api.post("/renders", json={**body, "user": payer.email}, headers=payer.headers)
    assert named.status_code == 202, named.text  # naming oneself is allowed
    assert (balance(api, payer), balance(api, other)) == (0, 10)


def test_unknown_mjid_is_404_no_such_job(stack: Settings, api: httpx.Client) -> None:
    user = new_user(stack)
    for path in ("/renders/not-a-job", "/renders/not-a-job/image"):
        resp = api.get(path, headers=user.headers)
        assert resp.status_code == 404
        assert resp.json()["detail"] == "no such job: not-a-job"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.update(quality="ultra"), "quality"),
        (lambda b: b["scene"]["camera"].update(lens=1), "lens"),
        (lambda b: b["scene"]["objects"][0].update(size=[-1, 1, 1]), "size"),
        (lambda b: b["scene"].update(unexpected=True), "unexpected"),
        (lambda b: b.update(user="not an email"), "user"),
    ],
)
def test_bad_request_is_422_naming_the_field(
    stack: Settings, api: httpx.Client, r: redis.Redis, change: Any, field: str
) -> None:
    user = new_user(stack, credits=1)
    body = {"user": user.email, "quality": "preview", "scene": small_scene()}
    change(body)
    before = r.zcard(mq_index_key())
    resp = api.post("/renders", json=body, headers=user.headers)
    assert resp.status_code == 422, resp.text
    assert any(field in map(str, d["loc"]) for d in resp.json()["detail"]), resp.json()
    assert r.zcard(mq_index_key()) == before


def test_non_json_body_is_422(stack: Settings, api: httpx.Client) -> None:
    user = new_user(stack)
    resp = api.post("/renders", content=b"{not json", headers={"content-type": "application/json", **user.headers})
    assert resp.status_code == 422


def test_blender_failure_marks_failed_with_blenders_error_and_refunds_once(stack: Settings, api: httpx.Client) -> None:
    user = new_user(stack, credits=10)
    scene = small_scene(position=[1.0, 1.0, 1.5], target=[1.0, 1.0, 1.5])
    resp = api.post("/renders", json={"quality": "hd", "scene": scene}, headers=user.headers)
    assert resp.status_code == 202, resp.text
    mjid = resp.json()["mjid"]
    assert balance(api, user) == 0
    run_worker(stack)
    job = api.get(f"/renders/{mjid}", headers=user.headers).json()
    assert job["state"] == "failed"
    assert "camera target equals camera position" in job["error"]
    assert "still running" in job["error"] and "blender_server.py -- --requests" in job["error"]  # the warm Blender
    assert balance(api, user) == 10
    assert ledger(stack, mjid) == [("charge", -10), ("refund", 10)]
    assert api.get(f"/renders/{mjid}/image", headers=user.headers).status_code == 409


def test_seed_credits_changes_the_balance_the_api_reports(stack: Settings, api: httpx.Client) -> None:
    user = new_user(stack)
    seed(stack, user, 7)
    assert balance(api, user) == 7
    seed(stack, user, 5)
    assert balance(api, user) == 12
    for bad in ("-5", "2.5", "ten", "0"):
        proc = invoke(stack, "seed-credits", "--user", user.email, "--amount", bad)
        assert proc.returncode == 1, proc.stdout
        assert "credits must be" in proc.stderr and bad.lstrip("-") in proc.stderr
    remote = "postgresql+psycopg://u:p@db.example.com:5432/prod"
    proc = invoke(stack, "seed-credits", "--user", user.email, "--amount", "5", "--database-url", remote)
    assert proc.returncode == 1 and "not the local dev stack" in proc.stderr and "--force" in proc.stderr
    assert balance(api, user) == 12


def test_invoke_render_hd_smoke_test_writes_a_1920x1080_png(stack: Settings, api: httpx.Client, r: redis.Redis) -> None:
    user = new_user(stack, credits=10)
    out = stack.state_dir / "smoke.png"
    render = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "invoke",
            "render",
            "--quality",
            "hd",
            "--user",
            user.email,
            "--out",
            str(out),
            "--timeout",
            "300",
        ],
        cwd=REPO,
        env=env_for(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not queue_ids(r, "pq") and time.monotonic() < deadline:
        time.sleep(0.2)
    run_worker(stack, "pq")
    stdout, stderr = render.communicate(timeout=300)
    assert render.returncode == 0, stdout + stderr
    assert str(out) in stdout and "render" in stdout and "download" in stdout
    assert png_size(out) == (1920, 1080)
    assert balance(api, user) == 0
