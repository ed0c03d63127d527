"""renderfarm.settings: every RENDERFARM_* variable read in one place, each default once, one number parser; a
host worker's settings made from renderdev's as objects; the API does not load the worker's code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.secrets import secret_path
from provisioner.worker import blender_path, farm_settings
from renderfarm.errors import RenderConfigError
from renderfarm.settings import FarmSettings, Reliability


def test_defaults_when_nothing_is_set() -> None:
    s = FarmSettings.from_env({})
    assert s == FarmSettings()
    assert (s.hd_price, s.renders_dir, s.blender_path) == (10, Path("/srv/renders"), "blender")
    assert s.reliability == Reliability() == Reliability(heartbeat_ttl=20.0, reap_interval=5.0, max_lost=2)


def test_every_variable_is_read() -> None:
    s = FarmSettings.from_env(
        {
            "RENDERFARM_HD_PRICE": "25",
            "RENDERFARM_RENDERS_DIR": "/tmp/r",
            "RENDERFARM_BLENDER": "/opt/blender/blender",
            "RENDERFARM_HEARTBEAT_TTL": "3.5",
            "RENDERFARM_MAX_LOST": "4",
            "RENDERFARM_REDIS_PORT": "7000",
        }
    )
    assert (s.hd_price, s.renders_dir, s.blender_path) == (25, Path("/tmp/r"), "/opt/blender/blender")
    assert (s.reliability.heartbeat_ttl, s.reliability.max_lost, s.service.redis_port) == (3.5, 4, 7000)


@pytest.mark.parametrize(
    ("name", "raw", "words"),
    [
        ("HD_PRICE", "-1", "out of range (0 or more"),
        ("HD_PRICE", "ten", "not a whole number"),
        ("MAX_LOST", "1.5", "not a whole number (from 0 to 100"),
        ("HEARTBEAT_TTL", "soon", "not a number (from 1 to 3600"),
        ("REAP_INTERVAL", "0", "out of range (from 0.1 to 3600"),
    ],
)
def test_a_bad_number_names_the_variable_the_value_and_the_range(name: str, raw: str, words: str) -> None:
    with pytest.raises(RenderConfigError) as err:
        FarmSettings.from_env({f"RENDERFARM_{name}": raw})
    message = str(err.value)
    assert f"RENDERFARM_{name}={raw!r}" in message and words in message and "unset it for the default" in message


def test_a_host_workers_settings_are_renderdevs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDERFARM_HD_SAMPLES", "3")  # what renderdev does not set still comes from the environment
    monkeypatch.setenv("RENDERFARM_REDIS_PORT", "1")  # what renderdev sets is renderdev's
    settings = load_settings(
        project="farm", state_dir=tmp_path / "state", redis_port=17001, db_port=17002, heartbeat_ttl=3, hd_price=12
    )
    farm = farm_settings(settings)
    assert (farm.service.redis_host, farm.service.redis_port, farm.service.db_port) == ("127.0.0.1", 17001, 17002)
    assert farm.service.db_password_file == secret_path(settings, "db_password")
    assert farm.service.redis_password_file == secret_path(settings, "redis_password")
    assert (farm.service.db_user, farm.service.db_name) == (settings.db_user, settings.db_name)
    assert farm.reliability == Reliability(heartbeat_ttl=3, reap_interval=settings.reap_interval, max_lost=2)
    assert (farm.hd_price, farm.renders_dir, farm.blender_path) == (12, settings.renders_dir, blender_path(settings))
    assert farm.profile("hd").samples == 3


def test_blender_path_is_the_link_or_plain_blender(tmp_path: Path) -> None:
    link = tmp_path / "blender"
    settings = load_settings(project="farm", state_dir=tmp_path / "state", blender_link=link)
    assert blender_path(settings) == "blender"
    link.touch()
    assert blender_path(settings) == str(link)


def test_the_api_loads_no_worker_code() -> None:
    code = (
        "import sys, renderfarm.core;"
        " print(sorted(m for m in sys.modules if m == 'renderfarm.worker' or m.startswith('renderfarm.worker.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
