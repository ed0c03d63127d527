"""The API cannot be abused: every route but /healthz needs the token of the job's (or balance's) user, path ids
are checked before any lookup, error bodies echo little and name no internal address.

One isolated compose project (own name, ports, state folder) serves the module; users are made by
`invoke seed-credits`, as a developer makes them. The last test stops Postgres, then Redis, and starts them
again.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from docker import DockerClient

from provisioner.config import Settings
from provisioner.credits import token_file
from provisioner.dockerapi import service_container
from renderfarm.keys import mq_index_key
from tests.stackutil import (
    REPO,
    User,
    balance,
    env_for,
    invoke,
    isolated_stack,
    new_user,
    queue_ids,
    small_scene,
    wait_for,
)

pytestmark = pytest.mark.integration
PROTECTED = [
    ("POST", "/renders"),
    ("GET", "/renders/{mjid}"),
    ("GET", "/renders/{mjid}/image"),
    ("GET", "/users/{email}/credits"),
]


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    folder = tmp_path_factory.mktemp("auth")
    with isolated_stack(docker_client, folder, blender_link=host_blender, hd_price=10) as settings:
        yield settings


@pytest.fixture(scope="module")
def owner(stack: Settings) -> User:
    return new_user(stack, credits=20)


@pytest.fixture(scope="module")
def owned_job(stack: Settings, api: httpx.Client, owner: User) -> str:
    resp = api.post("/renders", json={"quality": "preview", "scene": small_scene()}, headers=owner.headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["mjid"])


def call(api: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body = {"quality": "preview", "scene": small_scene()} if method == "POST" else None
    return api.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "template"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
@pytest.mark.parametrize("auth", ["none", "not-bearer", "unknown-token", "empty-bearer"])
def test_every_protected_route_is_401_without_a_valid_token(
    api: httpx.Client, r: redis.Redis, owner: User, owned_job: str, method: str, template: str, auth: str
) -> None:
    headers = {
        "none": {},
        "not-bearer": {"Authorization": f"Basic {owner.token}"},
        "unknown-token": {"Authorization": "Bearer " + "x" * 43},
        "empty-bearer": {"Authorization": "Bearer"},
    }[auth]
    before = (r.zcard(mq_index_key()), queue_ids(r, "pq"))
    resp = call(api, method, template.format(mjid=owned_job, email=owner.email), headers)
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"] == "Bearer"
    assert "token" in resp.json()["detail"] and "invoke seed-credits" in resp.json()["detail"]
    assert (r.zcard(mq_index_key()), queue_ids(r, "pq")) == before, "nothing queued without a token"


def test_healthz_and_the_schema_stay_open(api: httpx.Client) -> None:
    assert api.get("/healthz").status_code == 200
    schema = api.get("/openapi.json")
    assert schema.status_code == 200
    assert schema.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_another_users_job_is_404_and_their_credits_403(
    stack: Settings, api: httpx.Client, owner: User, owned_job: str
) -> None:
    other = new_user(stack)
    for path in (f"/renders/{owned_job}", f"/renders/{owned_job}/image"):
        resp = api.get(path, headers=other.headers)
        assert resp.status_code == 404, resp.text
        assert resp.json() == {"detail": f"no such job: {owned_job}"}, "the same answer as an unknown id"
    assert api.get(f"/renders/{owned_job}", headers=owner.headers).status_code == 200
    theirs = api.get(f"/users/{owner.email}/credits", headers=other.headers)
    assert theirs.status_code == 403, theirs.text
    assert "balance" not in theirs.json()
    unknown = api.get("/users/nobody@example.com/credits", headers=other.headers)
    assert unknown.status_code == 403, "whether a user exists is not told either"
    assert balance(api, other) == 0


def test_rotated_token_is_refused_at_once_and_the_new_one_saved(stack: Settings, api: httpx.Client) -> None:
    user = new_user(stack, credits=3)
    path = token_file(stack, user.email)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    again = invoke(stack, "seed-credits", "--user", user.email, "--amount", "2")
    assert again.returncode == 0, again.stderr
    assert user.token not in again.stdout + again.stderr, "a re-seed does not print the token again"
    assert "unchanged" in again.stdout and path.read_text().strip() == user.token
    assert balance(api, user) == 5

    rotated = invoke(stack, "seed-credits", "--user", user.email, "--rotate-token")
    assert rotated.returncode == 0, rotated.stderr
    new = path.read_text().strip()
    assert new != user.token and rotated.stdout.count(new) == 1, "the new token is printed once"
    assert str(path) in rotated.stdout
    old = api.get(f"/users/{user.email}/credits", headers=user.headers)
    assert old.status_code == 401, old.text
    assert balance(api, User(user.email, new)) == 5, "a rotation adds no credits"


def test_invoke_render_without_a_token_file_names_the_file_and_the_command(stack: Settings) -> None:
    email = "never-seeded@example.com"
    done = invoke(stack, "render", "--user", email, "--timeout", "5")
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert str(token_file(stack, email)) in said and f"invoke seed-credits --user {email}" in said, said
    assert "Traceback" not in said


@pytest.mark.parametrize(
    "path",
    [
        "/renders/{mjid}:scene",
        "/renders/{mjid}:attempts",
        "/renders/{mjid}:heartbeat",
        "/renders/{mjid}:limbo",
        "/renders/{upper}",
        "/renders/{mjid}0",
        "/renders/{short}",
        "/renders/{mjid}-1",
        "/renders/{mjid}:scene/image",
        "/renders/%00",
        "/renders/" + "a" * 5000,
    ],
)
def test_malformed_ids_are_404_no_such_job_never_500(api: httpx.Client, owner: User, owned_job: str, path: str) -> None:
    url = path.format(mjid=owned_job, upper=owned_job.upper(), short=owned_job[:-1])
    resp = api.get(url, headers=owner.headers)
    assert resp.status_code == 404, resp.text
    detail = resp.json()["detail"]
    assert detail.startswith("no such job: ") and len(detail) <= 100, detail


def test_a_422_names_the_field_and_does_not_echo_a_500_kb_value(api: httpx.Client, owner: User) -> None:
    body = {"quality": "preview", "scene": small_scene()}
    body["scene"]["camera"]["position"] = [1.5] * 100_000  # about 500 KB of JSON
    sent = json.dumps(body).encode()
    assert len(sent) > 450_000
    resp = api.post("/renders", content=sent, headers={"content-type": "application/json", **owner.headers})
    assert resp.status_code == 422, resp.text[:500]
    assert len(resp.content) < 2_000, f"a {len(resp.content)}-byte answer to {len(sent)} bytes"
    [err] = [d for d in resp.json()["detail"] if "position" in d["loc"]]
    assert err["loc"] == ["body", "scene", "camera", "position"] and "at most 3" in err["msg"], err
    assert len(err["input"]) <= 80 and err["input"].startswith("[1.5, 1.5"), err


def strict_json(text: str) -> object:
    """Parse as JSON proper: NaN and Infinity are not JSON (Python's parser would accept them)."""

    def refuse(name: str) -> object:
        raise AssertionError(f"{name} in the answer: not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_422_for_nan_is_json_and_names_the_field(api: httpx.Client, owner: User) -> None:
    body = {"quality": "preview", "scene": small_scene()}
    body["scene"]["lights"][0]["energy"] = float("nan")
    text = json.dumps(body)  # NaN as the non-JSON literal NaN, which the API's parser reads
    resp = api.post("/renders", content=text, headers={"content-type": "application/json", **owner.headers})
    assert resp.status_code == 422, resp.text
    [err] = strict_json(resp.text)["detail"]  # type: ignore[index]
    assert err["loc"][-1] == "energy" and "finite number" in err["msg"] and err["input"] == "nan", err


def test_a_422_with_many_bad_values_lists_some_and_counts_the_rest(api: httpx.Client, owner: User) -> None:
    body = {"quality": "preview", "scene": small_scene(), **{f"k{i}": "v" * 1000 for i in range(500)}}
    resp = api.post("/renders", json=body, headers=owner.headers)
    assert resp.status_code == 422, resp.text[:500]
    details = resp.json()["detail"]
    assert len(details) == 21 and details[-1] == {
        "loc": ["body"],
        "msg": "and 480 more invalid values",
        "type": "too_many_errors",
    }, details[-1]
    assert len(resp.content) < 10_000
    assert all(len(d.get("input", "")) <= 80 for d in details)


def test_a_long_unknown_field_name_is_not_echoed_whole(api: httpx.Client, owner: User) -> None:
    body = {"quality": "preview", "scene": small_scene(), "x" * 100_000: 1}
    resp = api.post("/renders", json=body, headers=owner.headers)
    assert resp.status_code == 422
    assert len(resp.content) < 2_000
    [err] = resp.json()["detail"]
    assert err["type"] == "extra_forbidden" and err["loc"][1].startswith("xxx") and len(err["loc"][1]) <= 80


ADDRESS = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|:\d{2,5}\b|\bport\b|\bhost\b|\b(?:db|redis):", re.IGNORECASE)


def test_a_503_names_the_service_and_no_address_and_recovers(
    docker_client: DockerClient, stack: Settings, api: httpx.Client, owner: User, owned_job: str
) -> None:
    """Postgres stopped, then Redis: every answer says which service is away, never its host or port; a token
    verified a moment ago still follows its jobs while Postgres is away."""
    newcomer = new_user(stack)  # never verified by the API before Postgres stops
    assert api.get(f"/renders/{owned_job}", headers=owner.headers).status_code == 200
    db = service_container(docker_client, stack.project, "db")
    cache = service_container(docker_client, stack.project, "redis")
    assert db is not None and cache is not None
    answers: list[httpx.Response] = []
    try:
        db.stop(timeout=10)
        post = api.post("/renders", json={"quality": "preview", "scene": small_scene()}, headers=owner.headers)
        unknown = api.get(f"/users/{newcomer.email}/credits", headers=newcomer.headers)
        for resp in (post, unknown):
            assert resp.status_code == 503, resp.text
            assert resp.json() == {"detail": "database unavailable, try again shortly", "service": "database"}
            assert resp.headers["retry-after"]
        assert api.get(f"/renders/{owned_job}", headers=owner.headers).status_code == 200, "status from Redis"
        health = api.get("/healthz")
        assert health.status_code == 503 and health.json()["db"] == "error: OperationalError", health.text
        answers += [post, unknown, health]
    finally:
        db.start()
    wait_for(lambda: api.get("/healthz").status_code == 200, 90, "Postgres to answer again", poll=0.5)
    try:
        cache.stop(timeout=10)
        state = api.get(f"/renders/{owned_job}", headers=owner.headers)
        assert state.status_code == 503, state.text
        assert state.json() == {"detail": "redis unavailable, try again shortly", "service": "redis"}
        health = api.get("/healthz")
        assert health.status_code == 503 and health.json()["redis"].startswith("error: "), health.text
        answers += [state, health]
    finally:
        cache.start()
    wait_for(lambda: api.get("/healthz").status_code == 200, 90, "Redis to answer again", poll=0.5)
    for resp in answers:
        assert not ADDRESS.search(resp.text), f"{resp.request.url.path} names an address: {resp.text}"
    assert api.get(f"/renders/{owned_job}", headers=owner.headers).status_code == 200
    assert balance(api, newcomer) == 0


def test_invoke_render_uses_the_saved_token(stack: Settings, api: httpx.Client, r: redis.Redis) -> None:
    """Submitting is all this needs: no worker runs in this module, so the render is left queued."""
    user = new_user(stack, credits=1)
    before = set(queue_ids(r, "pq"))
    render = subprocess.Popen(
        [sys.executable, "-m", "invoke", "render", "--user", user.email, "--timeout", "2"],
        cwd=REPO,
        env=env_for(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = render.communicate(timeout=120)
    assert render.returncode == 1 and "still queued" in err, out + err
    [mjid] = set(queue_ids(r, "pq")) - before
    assert api.get(f"/renders/{mjid}", headers=user.headers).json()["user"] == user.email
    assert user.token not in out + err
