"""Content digests of file trees: what decides whether an image or the wheelhouse must be rebuilt.

Only what ends up in the result counts: relative paths, bytes, the executable bit and link
targets. Modification times, owners and the order files were made in do not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

# Caches tools leave inside source folders; never part of a build's input.
IGNORED_DIRS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
IGNORED_SUFFIXES = (".pyc", ".pyo")


def tree_files(root: Path, *, exclude: Collection[str] = ()) -> list[str]:
    """Every file and link under root as a sorted POSIX path relative to root.

    `exclude` holds relative paths (e.g. "wheels") whose whole subtree is left out.
    """
    skip = {e.strip("/") for e in exclude}
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        kept = []
        for d in dirnames:
            rel = prefix + d
            if d in IGNORED_DIRS or rel in skip:
                continue
            if Path(dirpath, d).is_symlink():  # os.walk does not follow it: record the link itself
                found.append(rel)
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            rel = prefix + name
            if rel in skip or name.endswith(IGNORED_SUFFIXES):
                continue
            found.append(rel)
    return sorted(found)


def digest_files(root: Path, rel_paths: Iterable[str], *, extra: Mapping[str, str] | None = None) -> str:
    """sha256 over the named files under root (path, kind, content) and the extra key/value pairs."""
    h = hashlib.sha256()
    for rel in sorted(rel_paths):
        path = root / rel
        if path.is_symlink():
            h.update(f"L {rel}\0{os.readlink(path)}\n".encode())
            continue
        kind = "X" if path.stat().st_mode & 0o111 else "F"
        h.update(f"{kind} {rel}\0{file_sha256(path)}\n".encode())
    for key, value in sorted((extra or {}).items()):
        h.update(f"E {key}\0{value}\n".encode())
    return h.hexdigest()


def digest_tree(root: Path, *, exclude: Collection[str] = (), extra: Mapping[str, str] | None = None) -> str:
    """The digest of everything under root, less `exclude` and tool caches."""
    return digest_files(root, tree_files(root, exclude=exclude), extra=extra)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
