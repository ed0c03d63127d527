"""What the host-side fault tests share: a hermetic environment for `invoke` subprocesses (every path and
port of an isolated stack, nothing of the developer's own RENDERDEV_* settings), and snapshots of the
host that show whether a refused command changed anything."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from docker import DockerClient

from provisioner.config import Settings, load_settings
from provisioner.dockerapi import PROJECT_LABEL
from provisioner.ports import free_port
from tests.stackutil import env_for, running_stack

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Host:
    """The tmp paths an isolated run writes to: nothing outside `base`."""

    base: Path
    project: str

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    @property
    def install_root(self) -> Path:
        return self.base / "blender"

    @property
    def bin(self) -> Path:
        return self.base / "bin"

    @property
    def link(self) -> Path:
        return self.bin / "blender"

    @property
    def aliases_file(self) -> Path:
        return self.base / "config" / "aliases.sh"

    @property
    def rc_files(self) -> list[Path]:
        return [self.base / "home" / ".bashrc", self.base / "home" / ".zshrc"]

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = dict(
            project=self.project,
            state_dir=self.state_dir,
            redis_port=free_port(),
            db_port=free_port(),
            api_port=free_port(),
            blender_install_root=self.install_root,
            blender_link=self.link,
            aliases_file=self.aliases_file,
            rc_files=self.rc_files,
        )
        values.update(overrides)
        return load_settings(**values)


def new_host(base: Path, prefix: str) -> Host:
    base.mkdir(parents=True, exist_ok=True)
    return Host(base=base, project=f"{prefix}-{uuid.uuid4().hex[:8]}")


# One way to run `invoke` against an isolated stack, for every test that does.
invoke_env = env_for
compose_stack = running_stack


def invoke_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "invoke", *args]


def run_invoke(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(invoke_argv(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def tree(folder: Path) -> dict[str, str]:
    """Every path under folder (links not followed): a link's target, a folder's mode, a file's mode, size
    and mtime. Two equal trees mean nothing was made, removed, replaced, rewritten or re-moded."""
    found: dict[str, str] = {}
    if not folder.exists():
        return found
    for top, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(top) / name
            st = path.lstat()
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = f"dir {st.st_mode & 0o7777:o}"
            else:
                found[rel] = f"file {st.st_mode & 0o7777:o} {st.st_size} {st.st_mtime_ns}"
    return found


def containers(client: DockerClient, *projects: str) -> list[tuple[str, str, str]]:
    """`docker ps -a` for the compose projects: (name, status, id), sorted."""
    rows = []
    for project in projects:
        for c in client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}):
            rows.append((str(c.name), str(c.status), str(c.id)))
    return sorted(rows)
