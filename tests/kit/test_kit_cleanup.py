"""The kit leaves nothing behind: a session stopped with Ctrl+C tears its stack down, and one that is killed
(SIGKILL: no teardown runs) leaves a stack the next session removes, found by its owner label."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docker import DockerClient

from renderdev.testing.stack import OWNER_LABEL, remove_stale

pytestmark = [pytest.mark.integration]
WAITING_TEST = """
import time

def test_waits(renderdev_stack):
    print("STACK UP", renderdev_stack.project, flush=True)
    time.sleep(600)
"""


def owned_by(client: DockerClient, pid: int) -> list[str]:
    return [
        str(c.name)
        for c in client.containers.list(all=True, filters={"label": OWNER_LABEL})
        if c.labels.get(OWNER_LABEL, "").endswith(f":{pid}")
    ]


def start_session(tmp_path: Path) -> subprocess.Popen[str]:
    (tmp_path / "test_waits.py").write_text(WAITING_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERDEV_")}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_waits.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_up(session: subprocess.Popen[str]) -> None:
    assert session.stdout is not None
    deadline = time.monotonic() + 300
    for line in session.stdout:
        if "STACK UP" in line:
            return
        assert time.monotonic() < deadline, "the session's stack did not come up"
    raise AssertionError(f"the session ended before its stack was up (exit {session.wait()})")


def test_ctrl_c_tears_the_stack_down(docker_client: DockerClient, tmp_path: Path) -> None:
    session = start_session(tmp_path)
    try:
        wait_up(session)
        assert len(owned_by(docker_client, session.pid)) == 3
        session.send_signal(signal.SIGINT)
        session.wait(120)
    finally:
        session.kill()
    assert owned_by(docker_client, session.pid) == []


def test_a_killed_sessions_stack_is_removed_by_the_next(docker_client: DockerClient, tmp_path: Path) -> None:
    session = start_session(tmp_path)
    try:
        wait_up(session)
    finally:
        session.kill()  # SIGKILL: no teardown runs
        session.wait()
    left = owned_by(docker_client, session.pid)
    assert len(left) == 3, left
    removed = remove_stale(docker_client)
    assert owned_by(docker_client, session.pid) == []
    assert len(removed) >= 1
