"""`invoke setup` end to end, against an isolated compose project, as a user runs it.

Blender comes from a named source (`--source apt`: Debian's package, which setup installs when the host
lacks it), and download.blender.org is a closed loopback port, so the test never downloads it by chance."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.ports import free_port
from renderfarm.examples import load_example_scene
from renderfarm.quality import RenderProfile
from renderfarm.worker.blender_process import render_scene
from tests.stackutil import env_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]
SOURCE = ("--source", "apt")  # the Blender source, named: never "auto", which may try download.blender.org


def _invoke(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"invoke {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    w, h = struct.unpack(">II", head[16:24])
    return w, h


def test_invoke_setup_end_to_end(docker_client, project_images, tmp_path: Path, cleanup_project) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# user's own\n")
    link = tmp_path / "bin" / "blender"
    settings = load_settings(
        project=f"rde2e-{uuid.uuid4().hex[:8]}",
        redis_port=free_port(),
        db_port=free_port(),
        api_port=free_port(),
        state_dir=tmp_path / "state",
        blender_install_root=tmp_path / "blender",
        blender_link=link,
        aliases_file=tmp_path / "cfg" / "aliases.sh",
        rc_files=[home / ".bashrc", home / ".zshrc"],
    )
    project = settings.project
    cleanup_project.append(project)
    # None of the developer's RENDERDEV_* settings; RENDERDEV_BLENDER_OFFICIAL_BASE is a closed loopback port.
    env = env_for(settings)

    dry = _invoke(env, "setup", *SOURCE, "--dry-run")
    assert "Dry run" in dry.stdout
    assert not docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    assert not link.exists() and not link.is_symlink()

    first = _invoke(env, "setup", *SOURCE)
    assert "Changed:" in first.stdout, first.stdout
    assert "Debian package blender" in first.stdout or "apt: " in first.stdout, first.stdout
    assert "download.blender.org" not in first.stdout + first.stderr, first.stdout

    containers = docker_client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
    services = {c.labels["com.docker.compose.service"]: c for c in containers}
    assert set(services) == {"redis", "db", "api"}
    for name, c in services.items():
        c.reload()
        assert c.attrs["State"]["Health"]["Status"] == "healthy", name

    api_env = dict(e.split("=", 1) for e in services["api"].attrs["Config"]["Env"])
    declared = api_env["BLENDER_VERSION"]
    assert link.is_symlink()
    first_line = subprocess.run([str(link), "--version"], capture_output=True, text=True, check=True).stdout
    assert first_line.splitlines()[0].strip() == f"Blender {declared}"

    # A real render of a tiny scene by the linked Blender, through the same code the workers run.
    out = tmp_path / "tiny.png"
    tiny = load_example_scene().model_copy(update={"objects": []})
    render_scene(tiny, RenderProfile(width=64, height=48, samples=4), out, blender=str(link), timeout=300)
    assert _png_size(out) == (64, 48)

    assert "renderdev aliases" in (home / ".bashrc").read_text()
    assert (home / ".bashrc").read_text().startswith("# user's own\n")

    second = _invoke(env, "setup", *SOURCE)
    assert "Nothing changed" in second.stdout, second.stdout

    status = _invoke(env, "status", "--json")
    report = json.loads(status.stdout)
    assert report["ok"] is True, report

    _invoke(env, "down", "--all")
    assert not docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    assert not link.is_symlink()
    assert (home / ".bashrc").read_text() == "# user's own\n"
    status = _invoke(env, "status", "--json", check=False)
    assert status.returncode == 1
