"""`invoke services --live`: the api runs the working tree's renderfarm/ and answers with a saved change, no
rebuild; a plain `invoke services` goes back to the built image; `invoke status` says which."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from provisioner.config import REPO_ROOT, load_settings
from provisioner.ports import free_port
from provisioner.services import api_url

pytestmark = [pytest.mark.integration]
TITLE = 'title="renderfarm",'


def test_a_saved_change_answers_without_a_rebuild_and_setup_goes_back_to_the_image(
    docker_client: object, project_images: object, tmp_path: Path, cleanup_project: list[str]
) -> None:
    source = tmp_path / "renderfarm"
    shutil.copytree(REPO_ROOT / "renderfarm", source, ignore=shutil.ignore_patterns("__pycache__"))
    settings = load_settings(
        project=f"rdlive-{os.getpid()}",
        state_dir=tmp_path / "state",
        redis_port=free_port(),
        db_port=free_port(),
        api_port=free_port(),
        live_source=source,
    )
    cleanup_project.append(settings.project)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERDEV_")}
    env.update(settings.as_environment(), RENDERDEV_CONFIG=str(tmp_path / "none.toml"))
    env.pop("RENDERDEV_LIVE", None)

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
        )

    def title() -> str:
        return str(httpx.get(f"{api_url(settings)}/openapi.json", timeout=5).json()["info"]["title"])

    def mode() -> str:
        checks = json.loads(invoke("status", "--json").stdout)["checks"]
        return str(next(c["state"] for c in checks if c["name"] == "api mode"))

    up = invoke("services", "--live")
    assert up.returncode == 0, up.stdout + up.stderr
    assert title() == "renderfarm"
    assert mode().startswith(f"live: {source}")

    core = source / "core.py"
    assert TITLE in core.read_text()
    core.write_text(core.read_text().replace(TITLE, 'title="renderfarm (edited)",'))
    saved = time.monotonic()
    deadline = saved + 60
    while True:
        try:
            if title() == "renderfarm (edited)":
                break
        except httpx.HTTPError:
            pass  # reloading
        assert time.monotonic() < deadline, "the live api never answered with the saved change"
        time.sleep(0.1)
    print(f"saved change answered after {time.monotonic() - saved:.2f} s")

    back = invoke("services")
    assert back.returncode == 0, back.stdout + back.stderr
    assert title() == "renderfarm"
    assert mode().startswith("image ")
