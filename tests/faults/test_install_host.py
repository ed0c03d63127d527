"""scripts/install-host.sh and the engine's pid file (issue 8): the file goes only when the pid in it is not a
running dockerd, and a user who may not use a running engine is told so, the pid file untouched.

The running engine is the host's own: it is read (its pid, its socket), never stopped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.faults.common import REPO

pytestmark = [pytest.mark.integration, pytest.mark.faults]
SCRIPT = REPO / "scripts" / "install-host.sh"
PID_FILE = Path("/var/run/docker.pid")


def script_function(function: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one of the script's functions: the script, sourced, defines them and stops."""
    return subprocess.run(
        ["bash", "-c", f'source "$1" && shift && {function} "$@"', "test", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def dockerd_pid() -> int:
    pid = int(PID_FILE.read_text().strip())
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd", "the host's engine is not running"
    return pid


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.Popen(["true"])
    done.wait()
    assert not Path(f"/proc/{done.pid}").exists()
    return done.pid


def snapshot(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def test_only_a_pid_file_naming_no_running_dockerd_is_stale(tmp_path: Path) -> None:
    pid_file = tmp_path / "docker.pid"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        cases = {
            "a live process that is not dockerd": (str(sleeper.pid), True),
            "a process that has exited": (str(dead_pid()), True),
            "no pid at all": ("garbage\n", True),
            "the running dockerd": (f"{dockerd_pid()}\n", False),
        }
        for what, (content, stale) in cases.items():
            pid_file.write_text(content)
            done = script_function("stale_pid_file", str(pid_file))
            assert (done.returncode == 0) is stale, f"{what}: exit {done.returncode} {done.stderr}"
            assert pid_file.read_text() == content, f"{what}: the check changed the file"
        pid_file.unlink()
        missing = script_function("stale_pid_file", str(pid_file))
        assert missing.returncode == 1 and not missing.stderr, "no file: nothing to remove"
        named = script_function("running_dockerd_pid", str(PID_FILE))
        assert named.returncode == 0 and named.stdout.strip() == str(dockerd_pid())
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_user_the_engine_refuses_is_told_so_and_the_pid_file_is_kept() -> None:
    """As `nobody` (not root, not in the docker group): the engine runs, its socket refuses the user."""
    before = snapshot(PID_FILE)
    pid = dockerd_pid()
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", "bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
    )
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "a Docker engine is running, but user nobody may not use it" in said, said
    assert "permission denied on /var/run/docker.sock" in said, said
    assert "sudo usermod -aG docker nobody" in said, said
    assert "starting dockerd" not in said and "removing" not in said, said
    assert snapshot(PID_FILE) == before, "the pid file of the running engine was touched"
    assert dockerd_pid() == pid


def test_on_a_ready_host_the_script_changes_nothing() -> None:
    before = snapshot(PID_FILE)
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("install-host: docker "), done.stdout
    assert snapshot(PID_FILE) == before
