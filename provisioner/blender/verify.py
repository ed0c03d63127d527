"""Does a Blender binary run, and is it the version we want? (`blender --version`, first line).

The answer is remembered per binary file (its path, device, inode, size, mtime and ctime), so a warm
`invoke setup` confirms an unchanged Blender without starting it; a replaced file is asked again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from provisioner import proc
from provisioner.errors import BlenderError, CommandError, HostWriteError
from provisioner.fsops import atomic_write_text

VERSION_TIMEOUT = 60.0  # a cold start of a 90 MB binary from a slow disk
_FIRST_LINE = re.compile(r"^Blender (\d+\.\d+\.\d+)\b")


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "renderdev" / "blender-versions.json"


def _identity(binary: Path) -> str | None:
    try:
        real = binary.resolve(strict=True)
        st = real.stat()
    except OSError:
        return None
    return f"{real}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _load_cache() -> dict[str, list[str | None]]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache_file().read_text())
        if isinstance(data, dict):
            return data
    return {}


def reported_version(
    binary: Path, *, timeout: float = VERSION_TIMEOUT, cached: bool = True, remember: bool = True
) -> tuple[str | None, str]:
    """(version, first line) from `<binary> --version`; version is None when the line names none.

    With cached, an answer remembered for this very file is returned without running it; a new answer
    is remembered only with remember (a dry run passes False: it writes nothing, not even this cache)."""
    key = _identity(binary) if cached else None
    if key is not None:
        hit = _load_cache().get(key)
        if isinstance(hit, list) and len(hit) == 2 and isinstance(hit[1], str):
            return hit[0], hit[1]
    found, first = _ask(binary, timeout)
    if key is not None and found is not None and remember:
        entries = {k: v for k, v in _load_cache().items() if k.split(":", 1)[0] != key.split(":", 1)[0]}
        entries[key] = [found, first]
        with contextlib.suppress(HostWriteError):  # only a cache: never fail the install over it
            atomic_write_text(cache_file(), json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return found, first


def _ask(binary: Path, timeout: float) -> tuple[str | None, str]:
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


def verify(
    binary: Path, version: str, *, timeout: float = VERSION_TIMEOUT, cached: bool = True, remember: bool = True
) -> str:
    """Raise unless `<binary> --version` starts with 'Blender <version>'; return that first line."""
    found, first = reported_version(binary, timeout=timeout, cached=cached, remember=remember)
    if found != version:
        raise BlenderError(
            f"{binary} reports {first or 'nothing'!r} for --version, expected Blender {version}",
            hint="the file is not the release it claims to be: reinstall it with invoke blender --force",
        )
    return first
