"""Where a Blender install comes from: the sources, tried in order unless one is forced.

1. `installed`: a verified install already in the install root (no network);
2. `mirror`: settings.blender_mirror / RENDERDEV_BLENDER_MIRROR, an http(s) URL or a local folder laid out
   like download.blender.org (`release/BlenderX.Y/<file>` under it);
3. `official`: download.blender.org (settings.blender_official_base);
4. `apt`: the distro package, when the versions file pins one that provides the version.

Each source that does not deliver is reported in one line and the next is tried; when none does,
the error lists each source and why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from provisioner import fsops, proc
from provisioner.blender import dpkg
from provisioner.blender.download import fetch, is_url, require_checksum
from provisioner.blender.extract import extract_release
from provisioner.blender.install_root import (
    InstallRecord,
    binary_path,
    install_dir,
    place,
    verified_install,
    write_record,
)
from provisioner.blender.verify import verify
from provisioner.blender.versions import AptPin, VersionEntry, archive_name, host_platform, release_path
from provisioner.config import Settings
from provisioner.errors import BlenderError, CommandError, HostWriteError, RenderdevError

APT_TIMEOUT = 1800.0
OS_RELEASE = Path("/etc/os-release")


class SourceName(StrEnum):
    INSTALLED = "installed"
    MIRROR = "mirror"
    OFFICIAL = "official"
    APT = "apt"


ORDER = (SourceName.INSTALLED, SourceName.MIRROR, SourceName.OFFICIAL, SourceName.APT)


class Unavailable(BlenderError):
    """A source that does not apply here (not configured, no pin, other platform): skipped, not tried."""


@dataclass(frozen=True)
class Request:
    """What to install, and with what."""

    version: str
    entry: VersionEntry
    versions_file: Path
    settings: Settings
    console: Console
    insecure: bool = False
    remember: bool = True  # remember `blender --version` answers (False in a dry run: it writes nothing)


@dataclass(frozen=True)
class Result:
    version: str
    binary: Path
    source: SourceName
    detail: str  # where it came from, in words


SourceFn = Callable[[Request], Result]


def order(forced: str) -> list[SourceName]:
    """The sources to try: all in order for 'auto', else only the forced one."""
    if forced == "auto":
        return list(ORDER)
    try:
        return [SourceName(forced)]
    except ValueError:
        allowed = ", ".join(["auto", *ORDER])
        raise BlenderError(f"unknown Blender source {forced!r} (allowed: {allowed})") from None


def install_from_sources(
    req: Request, names: Sequence[SourceName], *, sources: Mapping[SourceName, SourceFn] | None = None
) -> Result:
    """Try each named source in order; return the first result, or raise listing why each one failed."""
    table = SOURCES if sources is None else sources
    failures: list[tuple[SourceName, str]] = []
    for name in names:
        try:
            return table[name](req)
        except Unavailable as exc:
            failures.append((name, exc.message))
            req.console.print(f"  [dim]blender source {name}: skipped: {escape(exc.message)}[/dim]")
        except RenderdevError as exc:
            why = exc.message.splitlines()[0]
            req.console.print(f"  [yellow]blender source {name}: failed: {escape(why)}[/yellow]")
            if exc.hint:  # what this source's failure means (e.g. "the download is damaged: try again")
                why += f"\n      ({exc.hint})"
            failures.append((name, why))
    listed = "\n".join(f"  - {name}: {why}" for name, why in failures)
    raise BlenderError(
        f"could not install Blender {req.version} from any source:\n{listed}",
        hint=f"set a mirror that holds {release_path(req.version)} "
        "(--mirror URL|FOLDER or RENDERDEV_BLENDER_MIRROR), or pick a source with --source",
    )


_TARBALL_SOURCES = (SourceName.INSTALLED, SourceName.MIRROR, SourceName.OFFICIAL)


def existing_install(req: Request, names: Sequence[SourceName]) -> Result | None:
    """What already satisfies the request among the allowed sources: a verified install in the
    install root (any tarball source), else the pinned distro package (apt), else None."""
    if any(n in names for n in _TARBALL_SOURCES):
        try:
            return from_installed(req)
        except Unavailable:
            pass
    if SourceName.APT in names:
        return apt_installed(req)
    return None


# --- the sources ----------------------------------------------------------------------------


def from_installed(req: Request) -> Result:
    root = req.settings.blender_install_root
    record = verified_install(root, req.version, sha256=req.entry.linux_x64.sha256, insecure=req.insecure)
    if record is None:
        raise Unavailable(f"no verified install of {req.version} in {root}")
    return Result(
        req.version, binary_path(root, req.version), SourceName.INSTALLED, f"in {install_dir(root, req.version)}"
    )


def mirror_location(mirror: str, version: str) -> str:
    """The archive's location on a mirror: a URL, or a file under a local folder."""
    rel = release_path(version)
    if is_url(mirror):
        return f"{mirror.rstrip('/')}/{rel}"
    folder = Path(mirror.removeprefix("file://")).expanduser()
    return str(folder / rel)


def from_mirror(req: Request) -> Result:
    mirror = req.settings.blender_mirror
    if not mirror:
        raise Unavailable("no mirror set (--mirror URL|FOLDER or RENDERDEV_BLENDER_MIRROR)")
    location = mirror_location(mirror, req.version)
    if not is_url(mirror):
        folder = Path(mirror.removeprefix("file://")).expanduser()
        if not folder.is_dir():
            raise BlenderError(f"mirror {mirror} is neither an http(s) URL nor an existing folder")
        if not Path(location).is_file():
            raise BlenderError(f"mirror folder {folder} has no {release_path(req.version)}")
    return _from_archive(req, SourceName.MIRROR, location)


def official_url(entry: VersionEntry, settings: Settings) -> str:
    """The versions file's URL, moved onto settings.blender_official_base when that is overridden."""
    default = str(Settings.model_fields["blender_official_base"].default).rstrip("/")
    url = entry.linux_x64.url
    if url.startswith(default + "/"):
        return settings.blender_official_base.rstrip("/") + url[len(default) :]
    return url


def from_official(req: Request) -> Result:
    return _from_archive(req, SourceName.OFFICIAL, official_url(req.entry, req.settings))


def _from_archive(req: Request, name: SourceName, location: str) -> Result:
    plat = host_platform()
    if plat != "linux-x64":
        raise Unavailable(f"renderdev installs release tarballs on linux-x64 only (this host: {plat or 'other'})")
    dl = req.entry.linux_x64
    require_checksum(dl.sha256, what=f"{req.version} linux-x64", versions_file=req.versions_file, insecure=req.insecure)
    root = req.settings.blender_install_root
    target = install_dir(root, req.version)
    top = archive_name(req.version).removesuffix(".tar.xz")
    req.console.print(f"  blender: fetching {escape(location)}")
    created = [p for p in (root, *root.parents) if not p.exists()]  # removed again if this fails
    try:
        return _install_archive(req, name, location, target, top)
    except BaseException:
        for folder in created:  # deepest first; stops at the first one that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _install_archive(req: Request, name: SourceName, location: str, target: Path, top: str) -> Result:
    dl = req.entry.linux_x64
    with fsops.staging_dir(target) as stage:
        archive = stage / archive_name(req.version)
        digest = fetch(
            location,
            archive,
            sha256=dl.sha256,
            timeout=req.settings.download_timeout,
            console=req.console,
            insecure=req.insecure,
        )
        size = archive.stat().st_size
        req.console.print(f"  blender: {size / 1e6:.0f} MB, sha256 {'ok' if digest == dl.sha256 else 'NOT CHECKED'}")
        tree = extract_release(archive, stage / "tree", top=top)
        archive.unlink()
        first = verify(tree / "blender", req.version)
        record = InstallRecord(
            version=req.version,
            sha256=digest,
            source=str(name),
            location=location,
            verified=first,
            insecure=dl.sha256 != digest,
        )
        write_record(tree, record)
        place(tree, target, stage)
    return Result(req.version, target / "blender", name, f"from {location}")


def host_distro(os_release: Path = OS_RELEASE) -> str | None:
    """'debian-12' from /etc/os-release (ID-VERSION_ID), or None."""
    try:
        text = os_release.read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    if "ID" not in fields:
        return None
    return f"{fields['ID']}-{fields['VERSION_ID']}" if fields.get("VERSION_ID") else fields["ID"]


def apt_pin(req: Request) -> AptPin:
    """The versions file's distro package for this version, when it applies to this host."""
    pin = req.entry.apt
    if pin is None:
        raise Unavailable(f"{req.versions_file} pins no distro package for {req.version}")
    if shutil.which("apt-get") is None or not dpkg.available():
        raise Unavailable("this host has no apt-get/dpkg")
    host = host_distro()
    if pin.distro is not None and host != pin.distro:
        raise Unavailable(f"the pinned package {pin.spec} is for {pin.distro}, this host is {host or 'unknown'}")
    return pin


def apt_installed(req: Request) -> Result | None:
    """The pinned package when it is already installed at the pinned version (and verifies), else None."""
    try:
        pin = apt_pin(req)
    except Unavailable:
        return None
    if dpkg.package_version(pin.package) != pin.version:
        return None
    binary = dpkg.truename(Path(pin.binary))
    try:
        verify(binary, req.version, remember=req.remember)
    except BlenderError:
        return None
    return Result(req.version, binary, SourceName.APT, f"Debian package {pin.package} {pin.version}")


# apt-get waits this long for dpkg's lock instead of failing at once (exit 100) when another apt is running:
# unattended-upgrades, a person's apt, another `invoke blender` (two pytest-xdist workers' session fixtures).
APT_LOCK_WAIT = 600


def apt_get(*args: str) -> list[str]:
    return ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT}", *args]


def apt_argv(pin: AptPin) -> list[str]:
    return apt_get("install", "-y", "--no-install-recommends", "--allow-downgrades", pin.spec)


def from_apt(req: Request) -> Result:
    pin = apt_pin(req)
    if dpkg.package_version(pin.package) != pin.version:
        argv = apt_argv(pin)
        if os.geteuid() != 0:
            raise HostWriteError(
                f"installing {pin.spec} needs root",
                hint="run: sudo " + " ".join(argv),
            )
        req.console.print(f"  blender: {' '.join(argv)}")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        try:
            proc.run(argv, env=env, timeout=APT_TIMEOUT)
        except CommandError:
            # stale package lists are the usual cause: refresh them once and try again
            proc.run(apt_get("update"), env=env, timeout=APT_TIMEOUT)
            proc.run(argv, env=env, timeout=APT_TIMEOUT)
    binary = dpkg.truename(Path(pin.binary))
    verify(binary, req.version)
    return Result(req.version, binary, SourceName.APT, f"Debian package {pin.package} {pin.version}")


SOURCES: dict[SourceName, SourceFn] = {
    SourceName.INSTALLED: from_installed,
    SourceName.MIRROR: from_mirror,
    SourceName.OFFICIAL: from_official,
    SourceName.APT: from_apt,
}


def describe(req: Request, name: SourceName) -> str:
    """One line on what a source would do (for the plan), without touching the network."""
    if name is SourceName.INSTALLED:
        return f"installed ({req.settings.blender_install_root})"
    if name is SourceName.MIRROR:
        m = req.settings.blender_mirror
        return f"mirror ({mirror_location(m, req.version)})" if m else "mirror (none set)"
    if name is SourceName.OFFICIAL:
        return f"official ({official_url(req.entry, req.settings)})"
    pin = req.entry.apt
    return f"apt ({pin.spec})" if pin is not None else "apt (no pin)"
