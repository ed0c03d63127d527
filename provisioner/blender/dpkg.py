"""What Debian's package manager says about a path or a package, and its diversions.

On a host without dpkg every question answers "nothing" (no owner, no package, no diversion).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from provisioner import proc

_TIMEOUT = 60.0


def available() -> bool:
    return shutil.which("dpkg-query") is not None


def owner(path: Path) -> str | None:
    """The package that ships `path` (dpkg-query -S), or None."""
    if not available():
        return None
    out = proc.run(["dpkg-query", "-S", str(path)], check=False, timeout=_TIMEOUT)
    if out.returncode != 0:
        return None
    for line in out.stdout.splitlines():
        # "blender: /usr/bin/blender"; diversion lines read "local diversion from: ..." / "diversion by ..."
        pkgs, sep, shipped = line.partition(": ")
        if not sep or "diversion" in pkgs or shipped.strip() != str(path):
            continue
        return pkgs.split(",")[0].strip()
    return None


def package_version(package: str) -> str | None:
    """The installed version of `package`, or None when it is not (fully) installed."""
    if not available():
        return None
    out = proc.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", package], check=False, timeout=_TIMEOUT)
    if out.returncode != 0:
        return None
    status, _, version = out.stdout.strip().partition(" ")
    return version if status == "installed" and version else None


def truename(path: Path) -> Path:
    """Where the packaged file at `path` really is (its diverted name when it is diverted)."""
    if shutil.which("dpkg-divert") is None:
        return path
    out = proc.run(["dpkg-divert", "--truename", str(path)], check=False, timeout=_TIMEOUT)
    name = out.stdout.strip()
    return Path(name) if out.returncode == 0 and name else path


def divert_argv(path: Path, to: Path) -> list[str]:
    return ["dpkg-divert", "--local", "--rename", "--divert", str(to), "--add", str(path)]


def undivert_argv(path: Path) -> list[str]:
    return ["dpkg-divert", "--local", "--rename", "--remove", str(path)]


def divert(path: Path, to: Path) -> None:
    """Move the packaged file at path to `to`, and make dpkg install it there from now on."""
    proc.run(divert_argv(path, to), timeout=_TIMEOUT, hint=f"check `dpkg-divert --list {path}`")


def undivert(path: Path) -> None:
    """Undo a local diversion of path: the packaged file goes back to its own name."""
    proc.run(undivert_argv(path), timeout=_TIMEOUT, hint=f"check `dpkg-divert --list {path}`")
