"""renderfarm's settings (read at call time) and /healthz when its services do not answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from provisioner.ports import free_port
from renderfarm.core import create_app
from renderfarm.errors import RenderConfigError
from renderfarm.settings import FarmSettings, ServiceSettings


def test_settings_are_read_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("RENDERFARM_DB_HOST", "db")
    monkeypatch.setenv("RENDERFARM_DB_PORT", "6543")
    monkeypatch.setenv("RENDERFARM_DB_PASSWORD_FILE", str(secret))
    s = ServiceSettings.from_env()
    assert (s.db_host, s.db_port, s.redis_host, s.redis_port) == ("db", 6543, "127.0.0.1", 6379)
    assert s.db_password() == "s3cret"
    assert s.redis_password() is None
    url = s.db_url()
    assert (url.drivername, url.host, url.port, url.username, url.database) == (
        "postgresql+psycopg",
        "db",
        6543,
        "renderfarm",
        "renderfarm",
    )
    secret.write_text("rotated")
    assert s.db_password() == "rotated"


@pytest.mark.parametrize(("value", "words"), [("abc", "not a whole number"), ("70000", "out of range")])
def test_bad_port_names_the_variable(value: str, words: str) -> None:
    with pytest.raises(RenderConfigError) as err:
        ServiceSettings.from_env({"RENDERFARM_REDIS_PORT": value})
    assert "RENDERFARM_REDIS_PORT" in str(err.value) and words in str(err.value)


def test_unreadable_password_file_names_it(tmp_path: Path) -> None:
    s = ServiceSettings.from_env({"RENDERFARM_REDIS_PASSWORD_FILE": str(tmp_path / "missing")})
    with pytest.raises(RenderConfigError) as err:
        s.redis_password()
    assert "RENDERFARM_REDIS_PASSWORD_FILE" in str(err.value)


def test_healthz_is_503_naming_each_service_that_does_not_answer() -> None:
    settings = ServiceSettings(redis_port=free_port(), db_port=free_port())
    with TestClient(create_app(FarmSettings(service=settings))) as client:
        resp = client.get("/healthz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "unavailable"
    assert body["redis"].startswith("error: ") and "ConnectionError" in body["redis"]
    assert body["db"].startswith("error: ") and "OperationalError" in body["db"]
