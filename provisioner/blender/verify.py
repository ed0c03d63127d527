"""Does a Blender binary run, and is it the version we want? (`blender --version`, first line)."""

from __future__ import annotations

import re
from pathlib import Path

from provisioner import proc
from provisioner.errors import BlenderError, CommandError

VERSION_TIMEOUT = 60.0  # a cold start of a 90 MB binary from a slow disk
_FIRST_LINE = re.compile(r"^Blender (\d+\.\d+\.\d+)\b")


def reported_version(binary: Path, *, timeout: float = VERSION_TIMEOUT) -> tuple[str | None, str]:
    """(version, first line) from `<binary> --version`; version is None when the line names none."""
    try:
        out = proc.run([str(binary), "--version"], timeout=timeout)
    except CommandError as exc:
        raise BlenderError(
            f"{binary} does not run: {exc.message}",
            hint=f"check {binary} (missing libraries? try running it), then re-run: invoke blender",
        ) from exc
    lines = [line.strip() for line in (out.stdout or "").splitlines() if line.strip()]
    first = lines[0] if lines else ""
    m = _FIRST_LINE.match(first)
    return (m.group(1) if m else None), first


def verify(binary: Path, version: str, *, timeout: float = VERSION_TIMEOUT) -> str:
    """Raise unless `<binary> --version` starts with 'Blender <version>'; return that first line."""
    found, first = reported_version(binary, timeout=timeout)
    if found != version:
        raise BlenderError(
            f"{binary} reports {first or 'nothing'!r} for --version, expected Blender {version}",
            hint="the file is not the release it claims to be: reinstall it with invoke blender --force",
        )
    return first
