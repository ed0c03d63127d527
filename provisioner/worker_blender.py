"""The worker image's Blender: which source gives it, what the build is told, and the archive it is handed.

The version is the one the api image declares (provisioner/images.py reads it). It comes from
- `apt`: the Debian package blender_versions.yaml pins for that version on the base image's distro, when there is
  one (Debian 12 packages 3.4.1); else
- `archive`: the release archive blender_versions.yaml names for it, fetched on the host and sha256-verified
  (provisioner/blender/archive.py, the code of `invoke blender --source mirror|official`), then staged into the
  build context's folder compose/worker/blender/ (git-ignored) for the build only. The Dockerfile's first stage
  checks its sha256 again and unpacks it to /opt/blender-<version>; the build runs no download.

Both end in the same check inside the build: `blender --version` must name the version.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from rich.console import Console

from provisioner import fsops
from provisioner.blender import archive
from provisioner.blender.versions import VersionEntry, VersionsFile, archive_name
from provisioner.config import Settings
from provisioner.errors import BlenderError


class WorkerSource(StrEnum):
    APT = "apt"
    ARCHIVE = "archive"


@dataclass(frozen=True)
class WorkerBlender:
    """The worker image's Blender: its version, its source, and that source's pin (apt: package=version; archive:
    the file name and its sha256)."""

    version: str
    source: WorkerSource
    entry: VersionEntry
    package: str = ""
    archive: str = ""
    sha256: str = ""

    def build_args(self) -> dict[str, str]:
        """What compose/worker/Dockerfile is given. The archive's sha256 is one of them, so it is part of the image's
        context hash: a changed archive rebuilds the image, the same one does not."""
        return {
            "BLENDER_SOURCE": str(self.source),
            "BLENDER_VERSION": self.version,
            "BLENDER_PACKAGE": self.package,
            "BLENDER_ARCHIVE": self.archive,
            "BLENDER_SHA256": self.sha256,
        }


def choose(version: str, versions: VersionsFile, distro: str) -> WorkerBlender:
    """Debian's package when the versions file pins one of `version` for `distro` (or for any distro), else the
    release archive, which must have a sha256 (the image takes no unverified download). Reads no file."""
    entry = versions.entry(version)
    pin = entry.apt
    if pin is not None and pin.distro in (None, distro):
        return WorkerBlender(version, WorkerSource.APT, entry, package=pin.spec)
    sha256 = entry.linux_x64.sha256
    if sha256 is None:
        raise BlenderError(
            f"cannot put Blender {version} in the worker image: {versions.path} pins no {distro} package of it and"
            " has no sha256 for its release archive (the image takes no unverified download)",
            hint=f"add the published sha256 of {archive_name(version)} to {versions.path}, then re-run: invoke images",
        )
    return WorkerBlender(version, WorkerSource.ARCHIVE, entry, archive=archive_name(version), sha256=sha256)


def describe(settings: Settings, chosen: WorkerBlender) -> str:
    """One line for the plan (`invoke images --dry-run`): where the worker's Blender comes from."""
    if chosen.source is WorkerSource.APT:
        return f"Blender {chosen.version} from Debian's package {chosen.package}"
    where = archive.describe(settings, chosen.version, chosen.entry)
    sha = chosen.sha256[:12]
    return f"Blender {chosen.version} from the release archive {chosen.archive} (sha256 {sha}...), {where}"


def staging_dir(settings: Settings) -> Path:
    """The build context's folder for the archive (compose/worker/blender/, git-ignored)."""
    return settings.compose_dir / "worker" / "blender"


@contextmanager
def staged(settings: Settings, chosen: WorkerBlender, console: Console) -> Iterator[None]:
    """For the length of a build: the verified archive in staging_dir (nothing else of ours there; nothing at all
    for apt). The archive is fetched and verified first, outside any build context; what is staged is removed after.
    """
    folder = staging_dir(settings)
    fsops.ensure_dir(folder)  # the Dockerfile copies it, empty or not
    _clear(folder)
    if chosen.source is WorkerSource.APT:
        yield
        return
    verified = archive.fetch_archive(settings, chosen.version, chosen.entry, console)
    try:
        fsops.link_or_copy(verified, folder / chosen.archive)
        yield
    finally:
        _clear(folder)


def _clear(folder: Path) -> None:
    """Remove release archives left in the staging folder (by an interrupted build): the build context carries
    only the one it needs."""
    for path in folder.glob("blender-*-linux-x64.tar.xz"):
        fsops.remove_file(path)
    for path in folder.glob(".blender-*-linux-x64.tar.xz.renderdev-*"):
        fsops.remove_file(path)
