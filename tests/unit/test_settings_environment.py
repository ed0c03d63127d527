"""Settings.as_environment gives a subprocess exactly the parent's settings, whatever their types."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provisioner.config import load_settings


def test_environment_round_trips_every_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = load_settings(
        project="roundtrip",
        state_dir=tmp_path / "state",
        api_port=18001,
        heartbeat_ttl=3.5,
        warm_blender=False,
        preemption_url="http://127.0.0.1:9/latest/meta-data/spot/instance-action",
        rc_files=[tmp_path / "a rc", tmp_path / "b"],
    )
    env = given.as_environment()
    assert env["RENDERDEV_WARM_BLENDER"] == "false"
    assert "RENDERDEV_DATABASE_URL" not in env  # unset optional settings stay unset
    for key in [k for k in os.environ if k.startswith("RENDERDEV_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RENDERDEV_CONFIG", str(tmp_path / "absent.toml"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings().model_dump() == given.model_dump()
