"""What machine a run was made on, and from which commit: recorded with every result."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner.config import REPO_ROOT


def _first(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key:
                return value.strip()
    except OSError:
        return None
    return None


def _output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def describe() -> dict[str, Any]:
    mem_kb = _first("/proc/meminfo", "MemTotal")
    ram_gib = round(int(mem_kb.split()[0]) / 1024 / 1024, 1) if mem_kb else None
    return {
        "nproc": os.cpu_count(),
        "ram_gib": ram_gib,
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "kernel": platform.release(),
        "os": os_release_name() or platform.platform(),
        "python": platform.python_version(),
        "docker": _output(["docker", "version", "--format", "{{.Server.Version}}"]),
        "compose": _output(["docker", "compose", "version", "--short"]),
        "load_at_start": load(),
    }


def os_release_name() -> str | None:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        return None
    return None


def commit() -> dict[str, Any]:
    head = _output(["git", "rev-parse", "HEAD"])
    dirty = _output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"commit": head, "dirty": bool(dirty)}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
