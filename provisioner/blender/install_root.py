"""The install root: one folder per version (`<root>/X.Y.Z/blender`), each with a metadata file.

The metadata file is written (atomically) only after the binary was verified, and the folder is
renamed into place only after that, so a version folder with valid metadata is a verified install.
Several versions live side by side; switching versions only moves the link.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from provisioner import fsops
from provisioner.blender.versions import is_version, parse_version
from provisioner.errors import BlenderError, HostWriteError

METADATA = ".renderdev-install.json"
METADATA_FORMAT = 1


def install_dir(root: Path, version: str) -> Path:
    """<root>/<version>; the version is checked against X.Y.Z before it becomes a path."""
    if not is_version(version):
        parse_version(version)  # raises with the message
    return root / version


def binary_path(root: Path, version: str) -> Path:
    return install_dir(root, version) / "blender"


@dataclass(frozen=True)
class InstallRecord:
    version: str
    sha256: str  # of the archive it came from
    source: str  # installed from: mirror / official
    location: str  # URL or file it was fetched from
    verified: str  # first line of `blender --version`
    insecure: bool = False  # installed with --insecure (checksum missing or different)
    installed_at: str = ""


def write_record(tree: Path, record: InstallRecord) -> None:
    data = {"format": METADATA_FORMAT, **asdict(record)}
    if not record.installed_at:
        data["installed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    fsops.atomic_write_text(tree / METADATA, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_record(root: Path, version: str) -> InstallRecord | None:
    """The metadata of <root>/<version>, or None when there is no (readable) metadata."""
    path = install_dir(root, version) / METADATA
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    fmt = data.pop("format", None)
    if isinstance(fmt, int) and fmt > METADATA_FORMAT:
        raise BlenderError(
            f"{path} was written by a newer renderdev (metadata format {fmt}, this one reads {METADATA_FORMAT})",
            hint="upgrade renderdev, or remove that folder and re-run: invoke blender",
        )
    try:
        return InstallRecord(**data)
    except TypeError:
        return None


def verified_install(root: Path, version: str, *, sha256: str | None, insecure: bool = False) -> InstallRecord | None:
    """The record of a verified install of version whose archive matches sha256, else None.

    With insecure, any verified install of that version counts (it may have been installed unverified).
    """
    record = read_record(root, version)
    if record is None or record.version != version:
        return None
    binary = binary_path(root, version)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return None
    if not insecure and (record.insecure or sha256 is None or record.sha256 != sha256):
        return None
    return record


def installed_versions(root: Path) -> list[str]:
    """Versions with metadata in the install root, oldest first."""
    try:
        names = [p.name for p in root.iterdir() if p.is_dir() and is_version(p.name)]
    except OSError:
        return []
    return sorted((n for n in names if (root / n / METADATA).is_file()), key=parse_version)


def place(tree: Path, target: Path, stage: Path) -> None:
    """Rename the verified tree to target. An earlier (unverified) folder there goes into the stage first,
    and is removed with it; if the rename fails, that folder is put back."""
    previous = stage / "previous"
    had_previous = target.exists() or target.is_symlink()
    try:
        if had_previous:
            os.rename(target, previous)
        os.rename(tree, target)
    except OSError as exc:
        if had_previous and previous.exists() and not target.exists():
            os.rename(previous, target)
        raise HostWriteError(f"cannot move the new install into {target}: {exc.strerror or exc}") from exc


def points_into(root: Path, path: str) -> bool:
    """True when path (absolute) lies inside the install root (as given, or with links resolved)."""
    norm = os.path.normpath(path)
    for base in {os.path.normpath(root), os.path.realpath(root)}:
        if norm.startswith(base.rstrip(os.sep) + os.sep):
            return True
    return False
