"""`invoke seed-credits`: give a dev user credits (and an API token) in the stack's database, never in
another one unasked; and the token files `invoke render` reads.

A user's first seed makes their API token: it is printed once and kept in
`<state>/<project>/tokens/<email>` (0600, in a 0700 folder); Postgres keeps only its sha256. A later seed
keeps it (and does not print it); `--rotate-token` replaces it, and the old one stops working at once.

Another database than the stack's (`--database-url`, RENDERDEV_DATABASE_URL) is refused unless every
address psycopg would connect to is on this machine, or `--force` is given; its schema is then never
migrated unless `--migrate` asks for it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from provisioner.config import Settings
from provisioner.errors import ConfigError, HostWriteError, RenderdevError
from provisioner.fsops import atomic_write_text

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Engine

TOKEN_DIR_MODE = 0o700
TOKEN_FILE_MODE = 0o600
URL_HINT = "unset RENDERDEV_DATABASE_URL (or drop --database-url) to use the stack's database"


# ---------------------------------------------------------------- token files


def token_file(settings: Settings, email: str) -> Path:
    """Where the user's API token is kept on this host (the email is checked first: it becomes a file name)."""
    _checked_email(email)
    return settings.project_state_dir / "tokens" / email


def read_token(settings: Settings, email: str) -> str:
    """The user's API token, for `invoke render` and other clients on this host."""
    path = token_file(settings, email)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        raise ConfigError(f"cannot read the API token file {path}: {exc.strerror}") from exc
    if not token:
        raise ConfigError(
            f"no API token for {email}: {path} does not exist",
            hint=f"invoke seed-credits --user {email} (a user seeded before keeps their token: add --rotate-token"
            " for a new one)",
        )
    return token


def write_token(settings: Settings, email: str, token: str) -> Path:
    path = token_file(settings, email)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, TOKEN_DIR_MODE)
    except OSError as exc:
        raise HostWriteError(f"cannot make the token folder {path.parent}: {exc.strerror}") from exc
    atomic_write_text(path, token + "\n", mode=TOKEN_FILE_MODE)
    return path


def _checked_email(email: str) -> str:
    from renderfarm.credits import check_email
    from renderfarm.errors import RenderfarmError

    try:
        return check_email(email)
    except RenderfarmError as exc:
        raise ConfigError(str(exc), hint="e.g. invoke seed-credits --user dev@example.com --amount 100") from None


# ---------------------------------------------------------------- which database


@dataclass(frozen=True)
class Target:
    url: str  # what to connect to (the stack's URL, or the one given, psycopg's driver named)
    where: str  # where that is, for messages: never the password
    stack: bool  # the stack's own database (its token file is the one `invoke render` reads)
    local: bool  # every address psycopg would try is on this machine


def mask_url(raw: str) -> str:
    """raw with its password hidden, for a URL that may not even parse: the user-info part up to the last
    '@' (a password may hold '@' or '/') and any `password=` query value become `***`."""
    masked = re.sub(r"^([^:/?#]*://[^:/?#@]*:)(.*)@", r"\1***@", raw)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", masked)


def _parsed(raw: str) -> URL:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(raw)
    except Exception:  # noqa: BLE001 - SQLAlchemy raises several kinds for a bad URL; its text echoes the URL
        raise ConfigError(
            f"not a database URL: {mask_url(raw)!r}",
            hint="e.g. postgresql+psycopg://USER:PASSWORD@127.0.0.1:5432/renderfarm, or " + URL_HINT,
        ) from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername != "postgresql+psycopg":
        raise ConfigError(
            f"seed-credits connects with psycopg 3, not {url.drivername!r}: {mask_url(raw)!r}",
            hint="write the URL as postgresql+psycopg://...",
        )
    return url


def connect_addresses(url: URL) -> list[tuple[str, bool]]:
    """Each place psycopg would try for url, as (what to call it, whether it is on this machine).

    Read from the connection parameters SQLAlchemy hands psycopg (the URL's host, and its query's `host`,
    `hostaddr`, `service`), completed by libpq's environment variables (PGHOST, PGHOSTADDR, PGSERVICE), the
    way libpq reads them: a `hostaddr` is the address connected to, whatever `host` says; no host, or one
    that is a folder, is a Unix socket on this machine. psycopg's own resolver (conninfo_attempts) silently
    drops a host that does not resolve, and cannot read a service file: here both count as not local.
    """
    from psycopg.conninfo import conninfo_to_dict

    args, kwargs = url.get_dialect()().create_connect_args(url)
    params = conninfo_to_dict(*args, **{k: str(v) for k, v in kwargs.items() if isinstance(v, str | int)})

    def param(key: str, env: str) -> str:
        value = params.get(key)
        return str(value) if value not in (None, "") else os.environ.get(env, "")

    service = param("service", "PGSERVICE")
    if service:
        return [(f"service {service}", False)]  # pg_service.conf decides the host: cannot tell
    hosts = [h.strip() for h in param("host", "PGHOST").split(",")] if param("host", "PGHOST") else []
    addrs = [a.strip() for a in param("hostaddr", "PGHOSTADDR").split(",")] if param("hostaddr", "PGHOSTADDR") else []
    found: list[tuple[str, bool]] = []
    for i in range(max(len(hosts), len(addrs), 1)):
        host = hosts[i] if i < len(hosts) else (hosts[0] if len(hosts) == 1 else "")
        addr = addrs[i] if i < len(addrs) else (addrs[0] if len(addrs) == 1 else "")
        if addr:
            found.append((addr, _loopback_ip(addr)))
        elif not host or host.startswith(("/", "@")):
            found.append((host or "the default Unix socket", True))
        else:
            found.append((host, _resolves_to_loopback(host)))
    return found


def _loopback_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _resolves_to_loopback(host: str) -> bool:
    if _loopback_ip(host):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # does not resolve: psycopg would not connect there either, but it is not ours to say
    return bool(infos) and all(_loopback_ip(str(info[4][0]).split("%")[0]) for info in infos)


def target(settings: Settings, *, force: bool) -> Target:
    """The stack's database, or settings.database_url if every address it leads to is local, or --force."""
    if settings.database_url is None:
        from provisioner.services import db_url

        where = f"the stack's database (127.0.0.1:{settings.db_port})"
        return Target(url=db_url(settings), where=where, stack=True, local=True)
    url = _parsed(settings.database_url)
    places = connect_addresses(url)
    remote = [name for name, local in places if not local]
    if remote and not force:
        raise ConfigError(
            f"refusing to seed credits in {remote[0]!r}: it is not the local dev stack"
            f" (psycopg would connect to {', '.join(name for name, _ in places)})",
            hint=URL_HINT + ", or add --force if you mean it",
        )
    return Target(
        url=url.render_as_string(hide_password=False),
        where=", ".join(name for name, _ in places),
        stack=False,
        local=not remote,
    )


# ---------------------------------------------------------------- seeding


def _check_schema(engine: Engine, where: str) -> None:
    """Refuse a database whose schema is not this renderdev's head revision (it is not migrated unasked)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from renderfarm.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        raise ConfigError(
            f"the database at {where} has schema revision {current or 'none'}; seed-credits needs {head}",
            hint="add --migrate to upgrade that database's schema (it changes its tables), or " + URL_HINT,
        )


def seed_credits(
    settings: Settings,
    console: Console,
    *,
    user: str,
    amount: str | int | None,
    force: bool = False,
    rotate_token: bool = False,
    migrate: bool = False,
) -> int:
    """Add `amount` credits (None: none) to `user`, creating them with an API token if needed; `rotate_token`
    replaces their token. Migrations run on the stack's (or a local) database; on one reached with --force,
    only with `migrate`. Returns the new balance."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from renderfarm import migrate as migrations
    from renderfarm.credits import add_credits, parse_amount
    from renderfarm.db import make_sessionmaker
    from renderfarm.errors import RenderfarmError

    _checked_email(user)
    try:
        credits = 0 if amount is None else parse_amount(amount)
    except RenderfarmError as exc:
        raise ConfigError(str(exc), hint="e.g. invoke seed-credits --user dev@example.com --amount 100") from exc
    where = target(settings, force=force)
    engine = create_engine(where.url, connect_args={"connect_timeout": 5})
    try:
        if where.local or migrate:
            migrations.upgrade(engine)
        else:
            _check_schema(engine, where.where)
        seeded = add_credits(make_sessionmaker(engine), user, credits, rotate_token=rotate_token)
    except SQLAlchemyError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RenderdevError(f"the database at {where.where} does not answer: {first}", hint="invoke services") from exc
    finally:
        engine.dispose()
    console.print(f"{user}: +{credits} credits, balance {seeded.balance}", highlight=False)
    _report_token(settings, console, user, seeded.token, where, rotated=rotate_token)
    return seeded.balance


def _report_token(
    settings: Settings, console: Console, user: str, token: str | None, where: Target, *, rotated: bool
) -> None:
    if token is None:
        path = token_file(settings, user)
        kept = f"kept in {path}" if where.stack and path.is_file() else "not shown again"
        console.print(
            f"{user}: API token unchanged ({kept}; a new one: invoke seed-credits --user {user} --rotate-token)",
            highlight=False,
        )
        return
    what = "new API token (the old one no longer works)" if rotated else "API token"
    console.print(f"{user}: {what}, shown this once: {token}", highlight=False, soft_wrap=True)
    if where.stack:
        path = write_token(settings, user, token)
        console.print(f"  saved to {path} (mode 0600): invoke render uses it", highlight=False)
    else:
        console.print(
            "  not saved on this host: the database was named by --database-url (or RENDERDEV_DATABASE_URL), and"
            " the state folder keeps the tokens of the stack's own database",
            highlight=False,
        )
