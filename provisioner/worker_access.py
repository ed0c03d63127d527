"""Worker credentials: `invoke worker-config` makes the one file a render worker on any host needs, and
`invoke worker-revoke` takes a credential away.

A credential has a name (an allow-listed word) and two secrets: a worker token, kept in Postgres as a sha256
(renderfarm.db.WorkerCredential; the API's worker routes, renderfarm.worker_api, check it on every call), and the
password of a Redis ACL user of the same name that reaches rq's keys only (provisioner.redis_acl). The file
(renderfarm.settings.WorkerAccess: JSON, mode 0600) holds both and where the API and Redis are; it holds no
database credential. A worker given it (`invoke worker --config FILE`, or a worker container) reaches the stack
only through the API and rq.

Plan, then act: a re-run for a file that still works (its token is the credential's, its Redis user answers to
its password) changes nothing; `--rotate` replaces both secrets (the old file stops working at once), as does a
file that no longer works. Revoking refuses the credential's next API call and closes its Redis connections.
"""

from __future__ import annotations

import secrets as _random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from provisioner.config import Settings
from provisioner.errors import ConfigError, RenderdevError
from provisioner.fsops import atomic_write_text
from provisioner.plan import Outcome, Step, StepState, report, run_steps
from provisioner.redis_acl import grant_worker, revoke_worker, worker_user, worker_users
from provisioner.secrets import read_secrets

if TYPE_CHECKING:
    from redis import Redis
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from renderfarm.settings import WorkerAccess

FILE_MODE = 0o600
PASSWORD_BYTES = 32


@dataclass(frozen=True)
class Endpoints:
    """Where a worker reaches the stack: the API's URL and Redis's address, as seen from where it runs, and for an
    exposed stack (provisioner.exposure) the CA certificate (PEM) its TLS is checked with."""

    api_url: str
    redis_host: str
    redis_port: int
    ca: str | None = None


def host_endpoints(settings: Settings) -> Endpoints:
    """The stack as a worker on this host sees it (the published ports)."""
    from provisioner.services import api_url

    return Endpoints(api_url(settings), settings.bind_host, settings.redis_port)


def stack_endpoints() -> Endpoints:
    """The stack as a worker container on its compose network sees it (compose/compose.yaml's service names)."""
    return Endpoints("http://api:8000", "redis", 6379)


def worker_file(settings: Settings, name: str) -> Path:
    """Where this host keeps a credential's file by default."""
    return settings.project_state_dir / "workers" / f"{worker_user(name)}.json"


# ---------------------------------------------------------------- clients of the stack (the manager's side)


@contextmanager
def stack_clients(settings: Settings) -> Iterator[tuple[Redis, sessionmaker[Session]]]:
    """The stack's Redis as its manager (the default user) and its database (its schema is the api's, which
    migrates it at start: never changed from here), closed afterwards; RenderdevError naming what does not answer
    or an api image older than worker credentials."""
    import redis as redis_lib
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from provisioner.services import db_url
    from renderfarm.db import make_sessionmaker

    password = read_secrets(settings)["redis_password"]
    r = redis_lib.Redis(host=settings.bind_host, port=settings.redis_port, password=password, socket_timeout=5)
    engine = create_engine(db_url(settings), connect_args={"connect_timeout": 5})
    try:
        try:
            r.ping()
            _check_schema(engine)
        except (redis_lib.RedisError, SQLAlchemyError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise RenderdevError(f"the stack does not answer: {first}", hint="invoke services") from exc
        yield r, make_sessionmaker(engine)
    finally:
        r.close()
        engine.dispose()


def _check_schema(engine: Engine) -> None:
    from sqlalchemy import inspect

    if not inspect(engine).has_table("worker_credentials"):
        raise RenderdevError(
            "the stack's database has no worker_credentials table: its api image predates worker credentials",
            hint="invoke images, then invoke services (the api migrates the database at start)",
        )


# ---------------------------------------------------------------- what is there


def _credential_ok(sessions: sessionmaker[Session], name: str, token: str) -> bool:
    from renderfarm.tokens import find_token_worker

    with sessions() as s:
        found = find_token_worker(s, token)
    return found is not None and found.name == name


def _redis_user_ok(settings: Settings, access: WorkerAccess) -> bool:
    import redis as redis_lib

    probe = redis_lib.Redis(
        host=settings.bind_host,
        port=settings.redis_port,
        username=access.redis_user,
        password=access.redis_password,
        socket_timeout=5,
    )
    try:
        return bool(probe.ping())
    except redis_lib.RedisError:
        return False
    finally:
        probe.close()


def _existing(path: Path, name: str) -> WorkerAccess | None:
    from renderfarm.errors import RenderfarmError
    from renderfarm.settings import WorkerAccess

    if not path.exists():
        return None
    try:
        access = WorkerAccess.from_file(path, private=False)  # its mode is ours to set again
    except RenderfarmError:
        return None
    return access if access.name == name else None


# ---------------------------------------------------------------- acting


def _store_credential(sessions: sessionmaker[Session], name: str, token: str) -> None:
    """Insert or replace the credential's token (and lift a revocation)."""
    from sqlalchemy import select

    from renderfarm.db import WorkerCredential
    from renderfarm.tokens import token_hash

    with sessions.begin() as s:
        row = s.scalar(select(WorkerCredential).where(WorkerCredential.name == name).with_for_update())
        if row is None:
            s.add(WorkerCredential(name=name, token_hash=token_hash(token)))
        else:
            row.token_hash = token_hash(token)
            row.revoked_at = None


def plan_credential(
    settings: Settings,
    r: Redis,
    sessions: sessionmaker[Session],
    *,
    name: str,
    path: Path,
    endpoints: Endpoints,
    rotate: bool = False,
    mode: int = FILE_MODE,
) -> Step:
    """The step that makes (or keeps) credential `name` and its worker file at `path`, on the stack's clients (which
    must stay open until the step is applied). "ok" when the file works as it is: its token is the credential's and
    its Redis user answers to its password; else a new token and password (the old file stops working)."""
    from renderfarm.settings import WorkerAccess
    from renderfarm.tokens import new_token

    user = worker_user(name)
    old = _existing(path, name)
    works = (
        old is not None and not rotate and _credential_ok(sessions, name, old.token) and _redis_user_ok(settings, old)
    )
    if works and old is not None:
        wanted = replace(
            old,
            api_url=endpoints.api_url,
            redis_host=endpoints.redis_host,
            redis_port=endpoints.redis_port,
            ca=endpoints.ca,
        )
    else:
        wanted = WorkerAccess(
            name=name,
            api_url=endpoints.api_url,
            token=new_token(),
            redis_host=endpoints.redis_host,
            redis_port=endpoints.redis_port,
            redis_user=user,
            redis_password=_random.token_urlsafe(PASSWORD_BYTES),
            ca=endpoints.ca,
        )

    def apply() -> str:
        if not works:
            _store_credential(sessions, name, wanted.token)
            grant_worker(r, name, wanted.redis_password)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_text(path, wanted.to_json(), mode=mode)
        return f"credential {name}: worker file {path}"

    title = f"worker credential {name}"
    if works and old == wanted and path.stat().st_mode & 0o777 == mode:
        return Step("workers", title, StepState.OK, f"{path} works")
    why = "rotate" if rotate else ("make" if old is None else "replace (it no longer works)")
    detail = f"{why}: token, Redis user {user}, file {path} (mode {mode:o})" if not works else f"rewrite {path}"
    return Step("workers", title, StepState.CHANGE, detail, apply=apply)


ADDRESS_KINDS = ("loopback", "exposed")


def endpoints_for(settings: Settings, address: str | None) -> Endpoints:
    """The endpoints a worker file names: "loopback" (this host's 127.0.0.1, plain: format renderdev-worker/1) or
    "exposed" (the exposed address, TLS and the CA: renderdev-worker/2); None: exposed when the stack is exposed."""
    from provisioner.exposure import exposed_endpoints

    kind = address or ("exposed" if settings.exposed_address else "loopback")
    if kind not in ADDRESS_KINDS:
        raise ConfigError(f"--address {address!r}: use loopback or exposed", hint="invoke worker-config --help")
    return exposed_endpoints(settings) if kind == "exposed" else host_endpoints(settings)


def worker_config(
    settings: Settings,
    console: Console,
    *,
    name: str,
    output: Path | None = None,
    rotate: bool = False,
    dry_run: bool = False,
    address: str | None = None,
) -> Path:
    """`invoke worker-config`: make (or keep) credential `name` and its worker file at `output` (default: the state
    folder's workers/), mode 0600, for a worker on this or another host. `address`: which address the file names
    (endpoints_for: by default the exposed one, with TLS, when the stack is exposed). Returns the file's path."""
    path = output if output is not None else worker_file(settings, name)
    worker_user(name)  # the name is checked before anything connects
    endpoints = endpoints_for(settings, address)
    with stack_clients(settings) as (r, sessions):
        step = plan_credential(settings, r, sessions, name=name, path=path, endpoints=endpoints, rotate=rotate)
        outcome = run_steps(console, [step], dry_run=dry_run, heading="Plan: worker credential")
    report(console, outcome, dry_run=dry_run)
    if not dry_run:
        console.print(
            f"Worker file {path}: on another host, run `invoke worker --config FILE` with a copy of it"
            f" (it holds a token and a Redis password: keep it 0600; revoke with invoke worker-revoke --name {name})",
            highlight=False,
        )
    return path


def worker_revoke(settings: Settings, console: Console, *, name: str, dry_run: bool = False) -> bool:
    """Revoke credential `name`: its token is refused from now on and its Redis user is deleted (its connections
    closed). Returns whether there was anything to revoke."""
    from sqlalchemy import select

    from renderfarm.db import WorkerCredential

    worker_user(name)  # the name is checked before anything connects
    with stack_clients(settings) as (r, sessions):
        with sessions() as s:
            row = s.scalar(select(WorkerCredential).where(WorkerCredential.name == name))
        active = row is not None and row.revoked_at is None
        has_user = name in worker_users(r)
        if not active and not has_user:
            if row is None:
                raise ConfigError(
                    f"no worker credential named {name!r}", hint="invoke worker-config --name NAME makes one"
                )
            console.print(f"Worker credential {name}: already revoked.", highlight=False)
            return False

        def apply() -> str:
            with sessions.begin() as s:
                found = s.scalar(select(WorkerCredential).where(WorkerCredential.name == name).with_for_update())
                if found is not None and found.revoked_at is None:
                    found.revoked_at = datetime.now(UTC)
            revoke_worker(r, name)
            return f"credential {name} revoked"

        step = Step("workers", f"worker credential {name}", StepState.CHANGE, "revoke token and Redis user", apply)
        outcome: Outcome = run_steps(console, [step], dry_run=dry_run, heading="Plan: revoke")
    report(console, outcome, dry_run=dry_run)
    return True
