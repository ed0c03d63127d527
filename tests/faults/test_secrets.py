"""Secrets and exposure, on a stack made by one `invoke setup` (isolated project, ports and paths):
the passwords it generates live in a 0600 file in a 0700 folder and nowhere else a user or another program
could read them (setup's and status' output, the aliases and rc files, `docker inspect`, the host's process
list); every published port is bound to 127.0.0.1; seed-credits touches no remote database unasked; and
no request text ever reaches a shell."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from docker import DockerClient
from sqlalchemy import create_engine, text

from provisioner.aliases import aliases_path
from provisioner.config import REPO_ROOT, Settings
from provisioner.credits import read_token, token_file
from provisioner.dockerapi import project_containers, remove_by_label
from provisioner.secrets import mask, read_secrets, secrets_dir
from provisioner.services import api_url, db_url, redis_url
from renderfarm.examples import example_scene_path
from renderfarm.keys import mq_index_key
from tests.faults.common import invoke_env, new_host, run_invoke

pytestmark = [pytest.mark.integration, pytest.mark.faults]
USER = "secrets@example.com"


@dataclass(frozen=True)
class Stack:
    settings: Settings
    env: dict[str, str]
    passwords: dict[str, str]  # redis_password, db_password
    setup_output: str
    seed_output: str  # the first seed-credits of USER: it shows USER's API token, once


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient, project_images: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    host = new_host(tmp_path_factory.mktemp("faults-secrets") / "host", "rdsecret")
    settings = host.settings()
    env = invoke_env(settings)
    host.rc_files[0].parent.mkdir(parents=True)
    host.rc_files[0].write_text("# the user's own\n")
    try:
        assert not settings.secrets_file.exists()
        done = run_invoke(env, "setup", timeout=1500)
        assert done.returncode == 0, done.stdout + done.stderr
        seeded = run_invoke(env, "seed-credits", "--user", USER, "--amount", "20")
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        yield Stack(settings, env, read_secrets(settings), done.stdout + done.stderr, seeded.stdout + seeded.stderr)
    finally:
        run_invoke(env, "down", "--all")
        remove_by_label(docker_client, settings.project)


def token_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {read_token(settings, USER)}"}


def leaks(stack: Stack, said: str) -> list[str]:
    """The passwords (by name) that appear in said."""
    return [name for name, value in stack.passwords.items() if value in said]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_setup_generates_two_passwords_kept_in_a_0600_file_in_a_0700_folder(stack: Stack) -> None:
    s = stack.settings
    redis_pw, db_pw = stack.passwords["redis_password"], stack.passwords["db_password"]
    assert redis_pw != db_pw and len(redis_pw) >= 32 and len(db_pw) >= 32
    assert re.fullmatch(r"[A-Za-z0-9_-]+", redis_pw + db_pw), "safe in URLs and shell words"
    assert mode(s.secrets_file) == 0o600
    assert mode(secrets_dir(s)) == 0o700, "the folder compose mounts the secret files from"
    assert sorted(p.name for p in secrets_dir(s).iterdir()) == ["db_password", "redis_password"]
    assert not leaks(stack, stack.setup_output), "setup printed a password"


def test_status_masks_the_secrets_and_never_prints_a_password(stack: Stack) -> None:
    s = stack.settings
    table = run_invoke(stack.env, "status")
    as_json = run_invoke(stack.env, "status", "--json")
    for out in (table, as_json):
        assert not leaks(stack, out.stdout + out.stderr), out.stdout
    check = next(c for c in json.loads(as_json.stdout)["checks"] if c["name"] == "secrets")
    assert check["ok"] is True, check
    for value in stack.passwords.values():
        assert mask(value) in check["state"] and mask(value) == value[:4] + "…"
    assert "0600" in check["state"]

    s.secrets_file.chmod(0o644)  # the check fails when the guarantee breaks, and still masks
    try:
        wrong = run_invoke(stack.env, "status", "--json")
    finally:
        s.secrets_file.chmod(0o600)
    assert wrong.returncode == 1
    check = next(c for c in json.loads(wrong.stdout)["checks"] if c["name"] == "secrets")
    assert check["ok"] is False and "mode 0644" in check["state"] and check["fix"] == "invoke services", check
    assert not leaks(stack, wrong.stdout + wrong.stderr)


def test_aliases_and_rc_files_hold_no_password(stack: Stack) -> None:
    s = stack.settings
    aliases = aliases_path(s)  # the project's own file (aliases-<project>.sh: not the default project)
    texts = {p: p.read_text() for p in [aliases, *s.rc_files] if p.exists()}
    assert aliases in texts and s.rc_files[0] in texts
    assert "renderdev_redis_cli" in texts[aliases]
    for path, body in texts.items():
        assert not leaks(stack, body), path


def test_docker_inspect_and_the_process_list_never_show_a_password(stack: Stack, docker_client: DockerClient) -> None:
    found = project_containers(docker_client, stack.settings.project)
    assert sorted(c.labels["com.docker.compose.service"] for c in found) == ["api", "db", "redis"]
    for c in found:
        c.reload()
        assert not leaks(stack, json.dumps(c.attrs)), f"docker inspect {c.name} (env, cmd, labels, mounts)"
        image = docker_client.images.get(c.attrs["Image"])
        assert not leaks(stack, json.dumps(image.attrs)), f"docker image inspect {image.tags}"
    # every process's command line (any user can read them), the containers' processes included
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        assert not leaks(stack, cmdline), f"/proc/{proc.name}/cmdline: {cmdline!r}"


def test_every_published_port_is_bound_to_loopback_only(stack: Stack, docker_client: DockerClient) -> None:
    s = stack.settings
    published: set[int] = set()
    for c in project_containers(docker_client, s.project):
        c.reload()
        wanted = c.attrs["HostConfig"]["PortBindings"] or {}
        actual = c.attrs["NetworkSettings"]["Ports"] or {}
        assert wanted and actual, c.name
        for bindings in [*wanted.values(), *actual.values()]:
            for b in bindings or []:
                assert b["HostIp"] == "127.0.0.1", f"{c.name} publishes {b}"
                published.add(int(b["HostPort"]))
    assert published == {s.redis_port, s.db_port, s.api_port}


def _db_rows(s: Settings) -> tuple[int, ...]:
    engine = create_engine(db_url(s))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM credit_entries),"
                    " (SELECT coalesce(sum(amount), 0) FROM credit_entries)"
                )
            ).one()
        return tuple(int(x) for x in row)
    finally:
        engine.dispose()


def test_the_api_token_is_shown_once_kept_private_and_stored_only_hashed(
    stack: Stack, docker_client: DockerClient
) -> None:
    s = stack.settings
    path = token_file(s, USER)
    token = read_token(s, USER)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert stack.seed_output.count(token) == 1, "the first seed prints it once"
    with httpx.Client(base_url=api_url(s), timeout=30, headers=token_headers(s)) as api:
        assert api.get(f"/users/{USER}/credits").status_code == 200  # in use: a request carried it
    again = run_invoke(stack.env, "seed-credits", "--user", USER, "--amount", "1")
    status = run_invoke(stack.env, "status", "--json")
    for out in (again, status):
        assert token not in out.stdout + out.stderr
    for p in [aliases_path(s), *s.rc_files, s.secrets_file]:
        if p.exists():
            assert token not in p.read_text(), p
    for c in project_containers(docker_client, s.project):
        c.reload()
        assert token not in json.dumps(c.attrs), f"docker inspect {c.name}"
        assert token.encode() not in c.logs(), f"docker logs {c.name}"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                assert token.encode() not in (proc / "cmdline").read_bytes(), f"/proc/{proc.name}/cmdline"
            except OSError:
                continue
    engine = create_engine(db_url(s))
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM users WHERE email = :e"), {"e": USER}).mappings().one()
    finally:
        engine.dispose()
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps({k: str(v) for k, v in row.items()}), "Postgres keeps only its sha256"


@pytest.mark.parametrize("how", ["option", "environment"])
def test_seed_credits_refuses_a_remote_database_without_force(stack: Stack, how: str) -> None:
    remote = "postgresql+psycopg://admin:remote-s3cret@db.example.com:5432/prod"
    args = ["seed-credits", "--user", USER, "--amount", "5"]
    env = dict(stack.env)
    if how == "option":
        args += ["--database-url", remote]
    else:
        env["RENDERDEV_DATABASE_URL"] = remote
    before = _db_rows(stack.settings)
    done = run_invoke(env, *args)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "refusing to seed credits in 'db.example.com'" in said and "--force" in said, said
    assert "remote-s3cret" not in said, "the remote URL's password is not echoed"
    assert _db_rows(stack.settings) == before


SHELL_TEXT = [
    "$(touch /tmp/{mark})",
    "`touch /tmp/{mark}`",
    "x;touch${{IFS}}/tmp/{mark}",
    "x|touch${{IFS}}{mark}",
    "x&&touch${{IFS}}{mark}",
    "x>{mark}",
    "'x'\"y\"",
    "x\ntouch {mark}",
]


def _scene() -> dict[str, Any]:
    scene: dict[str, Any] = json.loads(example_scene_path().read_text())
    scene["objects"] = scene["objects"][:2]
    return scene


def test_request_text_never_reaches_a_shell(stack: Stack) -> None:
    mark = f"pwned-{uuid.uuid4().hex[:8]}"
    marker = Path("/tmp") / mark
    s = stack.settings
    r = redis.Redis.from_url(redis_url(s))
    queues = (mq_index_key(), "rq:queue:pq", "rq:queue:sq")

    def state() -> tuple[Any, ...]:
        return (r.zcard(queues[0]), r.llen(queues[1]), r.llen(queues[2]), _db_rows(s))

    before = state()
    try:
        with httpx.Client(base_url=api_url(s), timeout=30, headers=token_headers(s)) as api:
            for template in SHELL_TEXT:
                bad = template.format(mark=mark)
                cases: list[tuple[str, dict[str, Any]]] = [
                    ("user", {"user": f"{bad}@example.com", "quality": "preview", "scene": _scene()}),
                    ("user", {"user": f"dev@{bad}.example.com", "quality": "preview", "scene": _scene()}),
                    ("name", {"user": USER, "quality": "preview", "scene": _scene()}),
                    ("colour", {"user": USER, "quality": "preview", "scene": _scene()}),
                ]
                for where, body in cases:
                    if where in ("name", "colour"):
                        body["scene"]["objects"][0][where] = bad
                    resp = api.post("/renders", json=body)
                    assert resp.status_code == 422, f"{where}={bad!r}: {resp.status_code} {resp.text}"
                    assert any(where in map(str, d["loc"]) for d in resp.json()["detail"]), resp.text
                got = api.get(f"/users/{quote(bad, safe='')}@example.com/credits")
                # never looked up: not the token's user (403), or, with a '/' in it, no route at all (404)
                assert got.status_code in (403, 404), got.text
                seeded = run_invoke(stack.env, "seed-credits", "--user", f"{bad}@example.com", "--amount", "1")
                assert seeded.returncode == 1 and "not an email address" in seeded.stderr, seeded.stderr
        assert state() == before, "nothing was queued, recorded or charged"
        assert not marker.exists(), f"{marker} was made: request text reached a shell"
    finally:
        r.close()
        marker.unlink(missing_ok=True)


SHELL_CALLS = re.compile(
    r"shell\s*=\s*True|\bos\.system\s*\(|\bos\.popen\s*\(|\bsubprocess\.(getoutput|getstatusoutput)\s*\("
    r"|\bcreate_subprocess_shell\s*\("
)


def shell_calls(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SHELL_CALLS.search(line):
                found.append(f"{path}:{n}: {line.strip()}")
    return found


def test_no_code_builds_a_shell_command(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text('import os, subprocess\nos.system("x")\nsubprocess.run("x", shell=True)\nos.popen("x")\n')
    assert len(shell_calls([planted])) == 3, "the scan finds what it looks for"
    sources = sorted([*(REPO_ROOT / "renderfarm").rglob("*.py"), *(REPO_ROOT / "provisioner").rglob("*.py")])
    sources.append(REPO_ROOT / "tasks.py")
    assert len(sources) > 30
    assert shell_calls(sources) == []
