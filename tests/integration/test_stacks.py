"""`invoke ls` and `invoke shell` against a real stack (the testcontainers kit's)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from provisioner.config import REPO_ROOT
from renderdev.testing import RenderStack
from renderdev.testing.worker import worker_environment

pytestmark = [pytest.mark.integration]


def invoke(stack: RenderStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO_ROOT,
        env=worker_environment(stack.settings),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_ls_lists_the_stack_with_its_ports_and_urls(renderdev_stack: RenderStack) -> None:
    done = invoke(renderdev_stack, "ls")
    assert done.returncode == 0, done.stderr
    s = renderdev_stack.settings
    line = next(x for x in done.stdout.splitlines() if x.startswith(f"{s.project} "))
    assert "running" in line
    assert f"redis 127.0.0.1:{s.redis_port}" in line and f"api 127.0.0.1:{s.api_port}" in line
    assert f"http://127.0.0.1:{s.api_port}/docs" in done.stdout


@pytest.mark.parametrize(("service", "user"), [("redis", "redis"), ("db", "postgres"), ("api", "renderfarm")])
def test_shell_runs_a_command_as_the_services_own_user(renderdev_stack: RenderStack, service: str, user: str) -> None:
    done = invoke(renderdev_stack, "shell", service, "-c", "id -un")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == user


def test_shell_passes_the_commands_exit_code_and_refuses_an_unknown_service(renderdev_stack: RenderStack) -> None:
    assert invoke(renderdev_stack, "shell", "api", "-c", "exit 3").returncode == 3
    refused = invoke(renderdev_stack, "shell", "worker", "-c", "true")
    assert refused.returncode == 1
    assert "no service 'worker'" in refused.stderr and "redis, db, api" in refused.stderr
