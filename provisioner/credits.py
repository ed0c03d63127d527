"""`invoke seed-credits`: give a dev user credits in the stack's database (never another one unasked)."""

from __future__ import annotations

from rich.console import Console
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from provisioner.config import Settings
from provisioner.errors import ConfigError, RenderdevError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def target_url(settings: Settings, *, force: bool) -> str:
    """The stack's database, or settings.database_url if it is local or --force is given."""
    if settings.database_url is None:
        from provisioner.services import db_url

        return db_url(settings)
    try:
        url = make_url(settings.database_url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several kinds for a bad URL
        raise ConfigError(f"not a database URL: {settings.database_url!r}") from exc
    if (url.host or "") not in LOCAL_HOSTS and not force:
        raise ConfigError(
            f"refusing to seed credits in {url.host!r}: it is not the local dev stack",
            hint="unset RENDERDEV_DATABASE_URL to use the stack's database, or add --force if you mean it",
        )
    return settings.database_url


def seed_credits(settings: Settings, console: Console, *, user: str, amount: str | int, force: bool) -> int:
    from sqlalchemy import create_engine

    from renderfarm import migrate
    from renderfarm.credits import add_credits, check_email, parse_amount
    from renderfarm.db import make_sessionmaker
    from renderfarm.errors import RenderfarmError

    try:
        credits = parse_amount(amount)
        check_email(user)
    except RenderfarmError as exc:
        raise ConfigError(str(exc), hint="e.g. invoke seed-credits --user dev@example.com --amount 100") from exc
    engine = create_engine(target_url(settings, force=force), connect_args={"connect_timeout": 5})
    try:
        migrate.upgrade(engine)
        new_balance = add_credits(make_sessionmaker(engine), user, credits)
    except SQLAlchemyError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RenderdevError(f"the database does not answer: {first}", hint="invoke services") from exc
    finally:
        engine.dispose()
    console.print(f"{user}: +{credits} credits, balance {new_balance}")
    return new_balance
