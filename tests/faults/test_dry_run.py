"""`--dry-run` writes nothing anywhere (issue 8): no state folder, no lock file, no secrets, no Blender version
cache, no link, aliases or rc file, no container, no iptables rule; the plan is printed and that is all.

Every path an isolated run can write to lies under one folder (the state folder, the install root, the link's
folder, the aliases and rc files, and XDG_CACHE_HOME for the Blender version cache), which is compared, file
by file (mode, size, mtime), before and after each dry run."""

from __future__ import annotations

from pathlib import Path

import pytest
from docker import DockerClient

from provisioner.config import Settings
from provisioner.firewall import ours, parse_listing
from tests.faults.common import Host, compose_stack, containers, invoke_env, new_host, run_invoke, tree

pytestmark = [pytest.mark.integration, pytest.mark.faults]
DRY_RUNS = (
    ("setup", "--dry-run"),
    ("services", "--dry-run"),
    ("images", "--dry-run"),
    ("aliases", "--dry-run"),
    # --version: no api container needed; the plan asks the Debian package's Blender for its version
    ("blender", "--dry-run", "--version", "3.4.1"),
)


def prepared_host(tmp_path: Path, prefix: str) -> tuple[Host, Settings, dict[str, str]]:
    host = new_host(tmp_path / "host", prefix)
    settings = host.settings()
    env = invoke_env(settings, XDG_CACHE_HOME=str(host.base / "cache"))
    host.rc_files[0].parent.mkdir(parents=True)
    host.rc_files[0].write_text("# the user's own\n")
    host.bin.mkdir()
    return host, settings, env


def guard_rules(project: str) -> list[str]:
    from provisioner.firewall import HOST

    return [" ".join(item.tokens) for item in ours(parse_listing(HOST.listing()), project)]


def assert_dry_runs_change_nothing(host: Host, settings: Settings, env: dict[str, str], client: DockerClient) -> None:
    for args in DRY_RUNS:
        before = tree(host.base)
        stack = containers(client, settings.project)
        done = run_invoke(env, *args)
        said = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(args)}: {said}"
        assert "Dry run: nothing was changed." in done.stdout, said
        assert tree(host.base) == before, f"{' '.join(args)} wrote under {host.base}"
        assert containers(client, settings.project) == stack, f"{' '.join(args)} changed the containers"
        assert guard_rules(settings.project) == [], f"{' '.join(args)} added an iptables rule"


def test_dry_runs_on_a_fresh_host_make_no_state_folder_and_write_nothing(
    docker_client: DockerClient, project_images: Settings, tmp_path: Path
) -> None:
    host, settings, env = prepared_host(tmp_path, "rddry")
    assert_dry_runs_change_nothing(host, settings, env, docker_client)
    assert not settings.state_dir.exists(), "a dry run made the state folder (or the lock file in it)"
    assert not (host.base / "cache").exists(), "a dry run wrote the Blender version cache"
    assert sorted(p.name for p in host.base.iterdir()) == ["bin", "home"]


def test_dry_runs_against_a_running_stack_write_nothing(
    docker_client: DockerClient, project_images: Settings, tmp_path: Path, cleanup_project: list[str]
) -> None:
    """With the api container up, setup's dry run also plans the Blender install and link from its version."""
    host, settings, env = prepared_host(tmp_path, "rddrystack")
    cleanup_project.append(settings.project)
    with compose_stack(docker_client, settings):
        assert_dry_runs_change_nothing(host, settings, env, docker_client)
        dry = run_invoke(env, "setup", "--dry-run")
        assert "change blender: link" in dry.stdout and "resolve version (Blender 3.4.1" in dry.stdout, dry.stdout
    assert not (settings.state_dir / "setup.lock").exists()
    assert not (host.base / "cache").exists(), "a dry run wrote the Blender version cache"
