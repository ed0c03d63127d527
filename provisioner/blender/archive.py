"""A Blender release archive kept on the host, sha256-verified, for an image build (the worker image's Blender when
no Debian package gives the version): fetched by the same code, from the same sources and with the same settings as
`invoke blender --source mirror|official` (settings.blender_mirror, then settings.blender_official_base), into a
cache under the state dir (`<state>/blender-archives/blender-X.Y.Z-linux-x64.tar.xz`).

Nothing unverified is ever kept: `download.fetch` checks the sha256 the versions file pins before the file gets its
name, and a cached file is checked again before each use (one that no longer matches is fetched again).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from provisioner import fsops
from provisioner.blender.download import fetch, require_checksum
from provisioner.blender.sources import SourceName, mirror_location, official_url
from provisioner.blender.versions import VersionEntry, archive_name, release_path
from provisioner.config import Settings
from provisioner.digest import file_sha256
from provisioner.errors import BlenderError

ARCHIVE_SOURCES = (SourceName.MIRROR, SourceName.OFFICIAL)  # tried in this order, unless blender_source forces one


def cached_path(settings: Settings, version: str) -> Path:
    """Where the verified archive of `version` is kept."""
    return settings.state_dir / "blender-archives" / archive_name(version)


def locations(settings: Settings, version: str, entry: VersionEntry) -> list[tuple[SourceName, str | None]]:
    """(source, where it would fetch from) in order: the mirror (None when no mirror is set), then the official
    site; only the one settings.blender_source names when that is `mirror` or `official`."""
    forced = settings.blender_source
    names = [SourceName(forced)] if forced in ARCHIVE_SOURCES else list(ARCHIVE_SOURCES)
    found: list[tuple[SourceName, str | None]] = []
    for name in names:
        if name is SourceName.MIRROR:
            mirror = settings.blender_mirror
            found.append((name, mirror_location(mirror, version) if mirror else None))
        else:
            found.append((name, official_url(entry, settings)))
    return found


def describe(settings: Settings, version: str, entry: VersionEntry) -> str:
    """Where the archive would come from, for a plan: the cache, else each source in order. Reads no file."""
    cached = cached_path(settings, version)
    if cached.is_file():
        return f"cached {cached} (its sha256 checked again)"
    tried = [f"{name} {where}" for name, where in locations(settings, version, entry) if where is not None]
    return "fetched from " + (", else ".join(tried) if tried else "nowhere (no mirror set)")


def fetch_archive(settings: Settings, version: str, entry: VersionEntry, console: Console) -> Path:
    """The verified archive of `version` in the cache: the cached file when its sha256 matches, else fetched from
    each source in turn. BlenderError naming each source and why, when none delivers."""
    expected = entry.linux_x64.sha256
    require_checksum(
        expected, what=f"{version} linux-x64", versions_file=settings.blender_versions_file, insecure=False
    )
    path = cached_path(settings, version)
    if path.is_file():
        actual = file_sha256(path)
        if actual == expected:
            console.print(f"  blender archive: cached {escape(str(path))}, sha256 ok", highlight=False)
            return path
        console.print(
            f"  [yellow]blender archive: cached {escape(str(path))} has sha256 {actual}, expected {expected}:"
            " fetching it again[/yellow]"
        )
        fsops.remove_file(path)
    failures: list[str] = []
    for name, where in locations(settings, version, entry):
        if where is None:
            failures.append(f"{name}: no mirror set (RENDERDEV_BLENDER_MIRROR, or blender_mirror in renderdev.toml)")
            continue
        console.print(f"  blender archive: fetching {escape(where)}", highlight=False)
        try:
            fetch(where, path, sha256=expected, timeout=settings.download_timeout, console=console)
        except BlenderError as exc:
            why = exc.message.splitlines()[0]
            console.print(f"  [yellow]blender archive: {name}: failed: {escape(why)}[/yellow]")
            failures.append(f"{name}: {why}")
            continue
        return path
    listed = "\n".join(f"  - {line}" for line in failures)
    raise BlenderError(
        f"could not fetch the Blender {version} release archive {archive_name(version)} from any source:\n{listed}",
        hint=f"set a mirror that holds {release_path(version)} (RENDERDEV_BLENDER_MIRROR, an http(s) URL or a folder)"
        f" or check the sha256 of {version} in {settings.blender_versions_file}; then re-run: invoke images",
    )
