"""`invoke seed-credits` cannot be fooled into touching another database: the address checked is the one psycopg
would connect to, a URL that does not parse is echoed without its password, and a database reached with
`--force` is never migrated unless `--migrate` asks.

The "remote" database is a fresh database in the module's own stack's Postgres, reached at the container's
address on its Docker network: reachable from this host, and not a loopback address.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker import DockerClient
from sqlalchemy import URL, create_engine, inspect, text

from provisioner.config import Settings
from provisioner.credits import token_file
from provisioner.dockerapi import service_container
from provisioner.secrets import read_secrets
from provisioner.services import db_url
from tests.stackutil import invoke, isolated_stack, new_user

pytestmark = pytest.mark.integration
PASSWORD = "hunter2-s3cret"


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    with isolated_stack(docker_client, tmp_path_factory.mktemp("seed"), blender_link=host_blender) as settings:
        yield settings


@pytest.fixture(scope="module")
def remote_url(docker_client: DockerClient, stack: Settings) -> str:
    """A new, empty database in the stack's Postgres, as a URL with the container's network address."""
    name = f"remote_{uuid.uuid4().hex[:8]}"
    engine = create_engine(db_url(stack), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    db = service_container(docker_client, stack.project, "db")
    assert db is not None
    db.reload()
    [address] = [n["IPAddress"] for n in db.attrs["NetworkSettings"]["Networks"].values() if n["IPAddress"]][:1]
    assert not address.startswith("127."), address
    url = URL.create(
        "postgresql+psycopg",
        username=stack.db_user,
        password=read_secrets(stack)["db_password"],
        host=address,
        port=5432,
        database=name,
    )
    return url.render_as_string(hide_password=False)


def tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def users(settings: Settings) -> int:
    engine = create_engine(db_url(settings))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM users")).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("how", "url", "env", "shown"),
    [
        ("hostaddr", "postgresql+psycopg://u:{pw}@localhost/renderfarm?hostaddr=10.0.0.5", {}, "10.0.0.5"),
        ("query-host", "postgresql+psycopg://u:{pw}@localhost:5432/renderfarm?host=10.0.0.5", {}, "10.0.0.5"),
        ("multi-host", "postgresql+psycopg://u:{pw}@/db?host=127.0.0.1:5432&host=10.0.0.6:5432", {}, "10.0.0.6"),
        ("PGHOSTADDR", "postgresql+psycopg://u:{pw}@localhost/renderfarm", {"PGHOSTADDR": "10.0.0.7"}, "10.0.0.7"),
        ("PGHOST", "postgresql+psycopg://u:{pw}@/renderfarm", {"PGHOST": "10.0.0.8"}, "10.0.0.8"),
        ("service", "postgresql+psycopg://u:{pw}@localhost/renderfarm?service=prod", {}, "service prod"),
        ("unresolvable", "postgresql+psycopg://u:{pw}@db.invalid:5432/prod", {}, "db.invalid"),
    ],
)
def test_a_url_that_leads_elsewhere_than_this_machine_is_refused(
    stack: Settings, how: str, url: str, env: dict[str, str], shown: str
) -> None:
    before = users(stack)
    done = invoke(stack, "seed-credits", "--user", "x@example.com", "--database-url", url.format(pw=PASSWORD), **env)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert f"refusing to seed credits in '{shown}'" in said and "--force" in said, said
    assert PASSWORD not in said and "Traceback" not in said
    assert users(stack) == before


def test_a_unix_socket_folder_is_local_so_it_is_not_refused(stack: Settings) -> None:
    """A socket folder is on this machine: allowed without --force (here nothing listens in it)."""
    url = f"postgresql+psycopg://u:{PASSWORD}@/renderfarm?host={stack.state_dir}"
    done = invoke(stack, "seed-credits", "--user", "x@example.com", "--database-url", url)
    said = done.stdout + done.stderr
    assert done.returncode == 1 and "refusing" not in said and "does not answer" in said, said
    assert PASSWORD not in said


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://admin:{pw}@db.example.com:notaport/prod",
        "postgresql+psycopg://admin:{pw}@with@at@db.example.com:x/prod",
        "postgresql+psycopg://admin@db.example.com:x/prod?sslmode=require&password={pw}",
    ],
)
def test_a_url_that_does_not_parse_is_echoed_without_its_password(stack: Settings, url: str) -> None:
    done = invoke(stack, "seed-credits", "--user", "x@example.com", "--database-url", url.format(pw=PASSWORD))
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "not a database URL" in said and "***" in said and "db.example.com" in said, said
    assert PASSWORD not in said and "Traceback" not in said
    debug = invoke(
        stack, "seed-credits", "--user", "x@example.com", "--database-url", url.format(pw=PASSWORD), RENDERDEV_DEBUG="1"
    )
    assert PASSWORD not in debug.stdout + debug.stderr, "not in the debug traceback either"


def test_force_never_migrates_a_remote_database_unless_asked(stack: Settings, remote_url: str) -> None:
    email = f"r{uuid.uuid4().hex[:8]}@example.com"
    args = ("seed-credits", "--user", email, "--amount", "5", "--database-url", remote_url)

    refused = invoke(stack, *args)
    assert refused.returncode == 1 and "refusing to seed credits in" in refused.stderr, refused.stderr
    assert tables(remote_url) == []

    forced = invoke(stack, *args, "--force")
    said = forced.stdout + forced.stderr
    assert forced.returncode == 1, said
    assert "schema revision none" in said and "--migrate" in said, said
    assert tables(remote_url) == [], "--force alone created tables"

    migrated = invoke(stack, *args, "--force", "--migrate")
    said = migrated.stdout + migrated.stderr
    assert migrated.returncode == 0, said
    assert {"alembic_version", "users", "credit_entries", "renders"} <= set(tables(remote_url))
    assert f"{email}: +5 credits, balance 5" in said
    assert "not saved on this host" in said and not token_file(stack, email).exists(), "the stack's tokens untouched"

    again = invoke(stack, *args, "--force")  # now at the head revision: seeded, still not migrated
    assert again.returncode == 0 and "balance 10" in again.stdout, again.stdout + again.stderr


def test_the_stacks_own_database_is_migrated_and_seeded_without_flags(stack: Settings) -> None:
    user = new_user(stack, credits=7)
    assert token_file(stack, user.email).read_text().strip() == user.token
    assert users(stack) >= 1
