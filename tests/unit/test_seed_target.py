"""Where `invoke seed-credits` would connect, decided as psycopg would connect (no database needed), and a URL
echoed without its password."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.credits import _parsed, connect_addresses, mask_url, read_token, target, token_file, write_token
from provisioner.errors import ConfigError


@pytest.fixture(autouse=True)
def no_libpq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGHOST", "PGHOSTADDR", "PGSERVICE", "PGPORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("url", "places"),
    [
        ("postgresql+psycopg://u:p@127.0.0.1:5432/db", [("127.0.0.1", True)]),
        ("postgresql://u:p@localhost/db", [("localhost", True)]),
        ("postgresql+psycopg://u:p@[::1]:5432/db", [("::1", True)]),
        ("postgresql+psycopg://u:p@localhost/db?hostaddr=10.0.0.5", [("10.0.0.5", False)]),
        ("postgresql+psycopg://u:p@localhost/db?hostaddr=127.0.0.2", [("127.0.0.2", True)]),
        ("postgresql+psycopg://u:p@localhost:5432/db?host=10.0.0.5", [("10.0.0.5", False)]),
        ("postgresql+psycopg://u:p@/db?host=/var/run/postgresql", [("/var/run/postgresql", True)]),
        ("postgresql+psycopg://u:p@/db", [("the default Unix socket", True)]),
        ("postgresql+psycopg://u:p@localhost/db?service=prod", [("service prod", False)]),
        ("postgresql+psycopg://u:p@db.invalid/db", [("db.invalid", False)]),
        (
            "postgresql+psycopg://u:p@/db?host=127.0.0.1:5432&host=10.0.0.6:5432",
            [("127.0.0.1", True), ("10.0.0.6", False)],
        ),
    ],
)
def test_every_address_psycopg_would_try_is_found(url: str, places: list[tuple[str, bool]]) -> None:
    assert connect_addresses(_parsed(url)) == places


@pytest.mark.parametrize(
    ("env", "url", "places"),
    [
        ({"PGHOSTADDR": "10.0.0.7"}, "postgresql+psycopg://u:p@localhost/db", [("10.0.0.7", False)]),
        ({"PGHOST": "10.0.0.8"}, "postgresql+psycopg://u:p@/db", [("10.0.0.8", False)]),
        ({"PGHOST": "10.0.0.8"}, "postgresql+psycopg://u:p@127.0.0.1/db", [("127.0.0.1", True)]),
        ({"PGSERVICE": "prod"}, "postgresql+psycopg://u:p@127.0.0.1/db", [("service prod", False)]),
    ],
)
def test_libpq_environment_variables_count_as_libpq_reads_them(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, places: list[tuple[str, bool]]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert connect_addresses(_parsed(url)) == places


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("postgresql+psycopg://admin:s3cret@db:notaport/x", "postgresql+psycopg://admin:***@db:notaport/x"),
        ("postgresql://admin:s3c@r/et@db:x/y", "postgresql://admin:***@db:x/y"),
        ("postgresql://admin@db:x/y?password=s3cret&a=1", "postgresql://admin@db:x/y?password=***&a=1"),
        ("postgresql://db:x/y", "postgresql://db:x/y"),
    ],
)
def test_a_url_is_masked_even_when_it_does_not_parse(raw: str, shown: str) -> None:
    assert mask_url(raw) == shown


def test_a_bad_url_is_refused_without_its_password(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, database_url="postgresql+psycopg://admin:s3cret@db:notaport/x")
    with pytest.raises(ConfigError) as err:
        target(settings, force=False)
    assert "not a database URL" in str(err.value) and "s3cret" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__, "no chained error echoes it either"


def test_another_driver_is_refused_by_name(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, database_url="sqlite:///x.db")
    with pytest.raises(ConfigError, match="psycopg 3, not 'sqlite'"):
        target(settings, force=False)


def test_force_allows_a_remote_url_and_says_it_is_not_local(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, database_url="postgresql+psycopg://u:p@localhost/d?hostaddr=10.0.0.5")
    with pytest.raises(ConfigError, match="refusing to seed credits in '10.0.0.5'"):
        target(settings, force=False)
    forced = target(settings, force=True)
    assert forced.local is False and forced.stack is False and forced.where == "10.0.0.5"


def test_token_files_are_private_and_a_missing_one_names_the_file_and_the_command(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path / "state", project="tok")
    with pytest.raises(ConfigError) as err:
        read_token(settings, "dev@example.com")
    assert str(token_file(settings, "dev@example.com")) in str(err.value)
    assert "invoke seed-credits --user dev@example.com" in str(err.value)
    path = write_token(settings, "dev@example.com", "t0ken")
    assert read_token(settings, "dev@example.com") == "t0ken"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    with pytest.raises(ConfigError, match="not an email address"):
        token_file(settings, "../../etc/passwd")
