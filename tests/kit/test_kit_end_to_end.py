"""The testcontainers kit as a downstream repository uses it: nothing but the plugin's fixtures."""

from __future__ import annotations

import struct
import subprocess

import pytest

from renderdev.testing import RenderClient, RenderStack, WorkerProcess

pytestmark = [pytest.mark.integration]


def test_the_stack_runs_under_testcontainers_with_the_declared_blender_linked(
    renderdev_stack: RenderStack,
    renderdev_blender,
    docker_client,  # type: ignore[no-untyped-def]
) -> None:
    services = {
        c.labels["com.docker.compose.service"]: c
        for c in docker_client.containers.list(
            filters={"label": f"com.docker.compose.project={renderdev_stack.project}"}
        )
    }
    assert set(services) == {"redis", "db", "api"}
    for name, c in services.items():
        assert c.attrs["State"]["Health"]["Status"] == "healthy", name
    declared = dict(e.split("=", 1) for e in services["api"].attrs["Config"]["Env"])["BLENDER_VERSION"]
    assert renderdev_blender.is_symlink()
    said = subprocess.run([str(renderdev_blender), "--version"], capture_output=True, text=True, check=True).stdout
    assert said.splitlines()[0].strip() == f"Blender {declared}"


def test_a_worker_takes_a_render_from_the_api_and_the_png_comes_back(
    render_worker: WorkerProcess, render_client: RenderClient
) -> None:
    job = render_client.render("preview")
    assert job["state"] == "finished", job
    png = render_client.image(job["mjid"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (640, 360)
    assert render_client.balance() == 100  # a preview is free
