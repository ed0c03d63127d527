"""The stack's passwords: made once, kept, private, never shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.errors import ConfigError
from provisioner.plan import StepState
from provisioner.secrets import (
    SECRET_NAMES,
    ensure_secrets,
    plan_secrets,
    read_secrets,
    secret_path,
    secrets_dir,
    stale_mounts,
)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_first_run_generates_private_secrets(tmp_path: Path) -> None:
    settings = load_settings(project="rdunit", state_dir=tmp_path)
    step = plan_secrets(settings)
    assert step.state is StepState.CHANGE
    step.apply and step.apply()

    values = read_secrets(settings)
    assert set(values) == set(SECRET_NAMES)
    assert values["redis_password"] != values["db_password"]
    for value in values.values():
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", value)
    assert _mode(settings.secrets_file) == 0o600
    assert _mode(secrets_dir(settings)) == 0o700
    for name in SECRET_NAMES:
        assert secret_path(settings, name).read_text() == values[name]
        assert _mode(secret_path(settings, name)) == 0o644
    assert settings.secrets_file.read_text().splitlines()[1:] == [
        f"REDIS_PASSWORD={values['redis_password']}",
        f"DB_PASSWORD={values['db_password']}",
    ]


def test_second_run_keeps_everything(tmp_path: Path) -> None:
    settings = load_settings(project="rdunit", state_dir=tmp_path)
    ensure_secrets(settings)
    before = read_secrets(settings)
    step = plan_secrets(settings)
    assert step.state is StepState.OK and step.apply is None
    assert ensure_secrets(settings) == "already in place"
    assert read_secrets(settings) == before


def test_existing_values_are_kept_and_missing_ones_made(tmp_path: Path) -> None:
    settings = load_settings(project="rdunit", state_dir=tmp_path)
    settings.secrets_file.parent.mkdir(parents=True)
    settings.secrets_file.write_text("# mine\nDB_PASSWORD=kept-value\n")
    done = ensure_secrets(settings)
    assert "generate redis_password" in done
    values = read_secrets(settings)
    assert values["db_password"] == "kept-value"
    assert len(values["redis_password"]) == 32


def test_a_tampered_mounted_file_is_restored_from_the_secrets_file(tmp_path: Path) -> None:
    settings = load_settings(project="rdunit", state_dir=tmp_path)
    ensure_secrets(settings)
    secret_path(settings, "redis_password").write_text("changed by hand")
    assert stale_mounts(settings) == ["redis_password"]  # containers must be recreated to see the fix
    step = plan_secrets(settings)
    assert step.state is StepState.CHANGE and "redis_password" in step.detail
    ensure_secrets(settings)
    assert secret_path(settings, "redis_password").read_text() == read_secrets(settings)["redis_password"]
    assert stale_mounts(settings) == []


def test_a_mode_change_alone_is_fixed_in_place(tmp_path: Path) -> None:
    settings = load_settings(project="rdunit", state_dir=tmp_path)
    ensure_secrets(settings)
    mounted = secret_path(settings, "db_password")
    inode = mounted.stat().st_ino
    mounted.chmod(0o600)
    settings.secrets_file.chmod(0o644)
    assert plan_secrets(settings).state is StepState.CHANGE
    assert stale_mounts(settings) == []  # same content: running containers need no recreating
    ensure_secrets(settings)
    assert _mode(mounted) == 0o644 and mounted.stat().st_ino == inode
    assert _mode(settings.secrets_file) == 0o600


def test_plans_never_show_a_password(tmp_path: Path) -> None:
    settings = load_settings(project="rdunit", state_dir=tmp_path)
    ensure_secrets(settings)
    secret_path(settings, "db_password").unlink()
    step = plan_secrets(settings)
    for value in read_secrets(settings).values():
        assert value not in step.title and value not in step.detail


def test_reading_missing_secrets_says_what_to_run(tmp_path: Path) -> None:
    settings = load_settings(project="rdunit", state_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        read_secrets(settings)
    assert str(settings.secrets_file) in str(err.value)
    assert "REDIS_PASSWORD" in str(err.value) and "invoke services" in str(err.value)
