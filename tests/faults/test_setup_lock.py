"""Two `invoke setup` at once on one host: the lock makes the second wait for the first, both succeed, the
second redoes nothing the first did, and the Blender link is never seen half-made."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
from docker import DockerClient

from provisioner.config import Settings
from tests.faults.common import REPO, invoke_argv, invoke_env, new_host, run_invoke

pytestmark = [pytest.mark.integration, pytest.mark.faults]
POLL = 0.005


def link_problem(link: Path, targets: set[str]) -> str | None:
    """None when the link is absent or a whole link to an executable file (whose path goes into targets)."""
    try:
        st = os.lstat(link)
    except FileNotFoundError:
        return None
    if not stat.S_ISLNK(st.st_mode):
        return f"{link} is not a link (mode {st.st_mode:o})"
    try:
        raw = os.readlink(link)
    except FileNotFoundError:
        return None  # replaced between the two calls: the next poll sees the new one
    target = os.path.realpath(link)
    if not (os.path.isfile(target) and os.access(target, os.X_OK)):
        return f"{link} -> {raw} does not resolve to an executable file"
    targets.add(target)
    return None


def changed_items(output: str) -> list[str]:
    """The `- item` lines under "Changed:" in a setup's report."""
    if "Changed:" not in output:
        return []
    items = []
    for line in output.split("Changed:", 1)[1].splitlines()[1:]:
        if not line.startswith("  - "):
            break
        items.append(line[4:].strip())
    return items


def test_two_setups_at_once_wait_for_each_other_and_never_half_make_the_link(
    docker_client: DockerClient, project_images: Settings, tmp_path: Path, cleanup_project: list[str]
) -> None:
    host = new_host(tmp_path / "host", "rdlock")
    cleanup_project.append(host.project)
    settings = host.settings()
    env = invoke_env(settings)
    host.rc_files[0].parent.mkdir(parents=True)
    host.rc_files[0].write_text("# the user's own\n")
    lock = settings.state_dir / "setup.lock"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    link = settings.blender_link

    procs: list[subprocess.Popen[bytes]] = []
    problems: list[str] = []
    targets: set[str] = set()
    seen = {"absent": 0, "link": 0}
    try:
        for log in logs:
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(invoke_argv("setup"), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
                )
            if len(procs) == 1:  # the second starts once the first holds the lock
                deadline = time.monotonic() + 120
                while not (lock.exists() and lock.read_text().strip() == str(procs[0].pid)):
                    assert procs[0].poll() is None, logs[0].read_text()
                    assert time.monotonic() < deadline, "the first setup never took the lock"
                    time.sleep(0.05)
        deadline = time.monotonic() + 1500
        while any(p.poll() is None for p in procs):
            problem = link_problem(link, targets)
            if problem:
                problems.append(problem)
            seen["link" if os.path.lexists(link) else "absent"] += 1
            assert time.monotonic() < deadline, "the setups did not finish in time"
            time.sleep(POLL)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    first, second = (log.read_text() for log in logs)

    try:
        assert [p.returncode for p in procs] == [0, 0], f"first:\n{first}\nsecond:\n{second}"
        waited = re.findall(r"Waiting for another invoke setup \(pid (\d+)\)", second)
        assert waited == [str(procs[0].pid)], second
        assert "Waiting for another" not in first, first

        assert not problems, problems[:5]
        assert seen["absent"] and seen["link"], f"the polls never saw the link being made: {seen}"
        assert os.path.islink(link) and os.path.realpath(link) in targets
        for target in sorted(targets):  # every Blender the link ever pointed at answers
            answer = subprocess.run([target, "--version"], capture_output=True, text=True, timeout=120, check=True)
            assert answer.stdout.splitlines()[0].startswith("Blender "), answer.stdout
        leftovers = [p.name for p in link.parent.iterdir() if p.name.startswith(f".{link.name}.renderdev-")]
        assert not leftovers, leftovers

        did_first = {item.split(" (")[0] for item in changed_items(first)}
        did_second = {item.split(" (")[0] for item in changed_items(second)}
        assert did_first, first
        assert "Nothing changed" in second or not did_first & did_second, second
    finally:
        down = run_invoke(env, "down", "--all")
        assert down.returncode == 0, down.stdout + down.stderr
