"""Safe extraction of a release archive (refuses tar slip: absolute paths, `..`, links out, device nodes).

Every member is checked before it is written, so an unsafe archive stops at its first bad entry
with nothing outside the destination touched; the caller extracts into a staging folder that is
removed on failure (`fsops.staging_dir`), so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, cast

from provisioner.errors import BlenderError

_HAS_FILTERS = hasattr(tarfile, "data_filter")  # Python >= 3.11.4


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def unsafe_reason(member: tarfile.TarInfo, dest: Path, *, top: str) -> str | None:
    """Why `member` must not be extracted into dest (whose single top folder is `top`), or None."""
    name = member.name
    if not name or name.startswith("/") or PurePosixPath(name).is_absolute():
        return "is an absolute path"
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        return "climbs out with '..'"
    if not parts or parts[0] != top:
        return f"is outside the archive's top folder {top}/"
    if member.ischr() or member.isblk() or member.isfifo():
        return "is a device node or fifo"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return f"has an unsupported type ({member.type!r})"
    root = os.path.realpath(dest)
    top_root = os.path.join(root, top)
    # realpath follows links extracted before this member: a path through one of them must stay inside
    if not _within(os.path.realpath(os.path.join(root, *parts)), top_root):
        return "would be written outside the destination (through a link)"
    if member.issym() or member.islnk():
        link = member.linkname
        kind = "symlink" if member.issym() else "hard link"
        if not link or link.startswith("/"):
            return f"is a {kind} to an absolute path ({link!r})"
        base = os.path.join(root, *parts[:-1]) if member.issym() else root
        if not _within(os.path.realpath(os.path.join(base, link)), top_root):
            return f"is a {kind} pointing outside ({link!r})"
    return None


def extract_release(archive: Path, dest: Path, *, top: str) -> Path:
    """Extract a release archive into dest (a new, empty folder); return dest/top.

    The archive must hold a single top folder `top` with the `blender` binary in it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with _open(archive) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                reason = unsafe_reason(member, dest, top=top)
                if reason is not None:
                    raise BlenderError(
                        f"refusing {archive.name}: entry {member.name!r} {reason} (tar slip)",
                        hint="the archive is not an official Blender release: use the official file or mirror",
                    )
                _normalise(member)
                if _HAS_FILTERS:
                    tar.extract(member, dest, filter="data")
                else:  # pragma: no cover - Python < 3.11.4: unsafe_reason is the only guard
                    tar.extract(member, dest)
            while raw.read(1024 * 1024):  # read to the end: checks the stream's end marker and checksum
                pass
    except (tarfile.TarError, lzma.LZMAError, zlib.error, gzip.BadGzipFile, EOFError, _Damaged) as exc:
        raise BlenderError(f"cannot extract {archive.name}: {exc}", hint="the download is damaged: try again") from exc
    except OSError as exc:
        raise BlenderError(f"cannot extract {archive.name} into {dest}: {exc}") from exc
    tree = dest / top
    if not (tree / "blender").is_file():
        raise BlenderError(f"{archive.name} has no {top}/blender: not a Blender release archive")
    return tree


class _Damaged(Exception):
    pass


class _XzPipe(io.RawIOBase):
    """xz's own decompressor (`xz -dc -T0`), read as a stream. Python's lzma decodes on one core; xz
    decodes the blocks of a multi-block archive on every core, which is most of an install's time.
    Closing checks xz's exit status, so a truncated or corrupt archive is an error, as with lzma.open."""

    def __init__(self, archive: Path, xz: str) -> None:
        self._proc = subprocess.Popen(
            [xz, "-dc", "-T0", "--", str(archive)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._out = cast(io.BufferedReader, self._proc.stdout)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._out.readinto(buffer)
        if n == 0:
            self._check()
        return n

    def _check(self) -> None:
        code = self._proc.wait()
        if code != 0:
            err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
            raise _Damaged(f"xz exited {code}: {err}")

    def close(self) -> None:
        if not self.closed:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._out.close()
            if self._proc.stderr:
                self._proc.stderr.close()
        super().close()


def _open(archive: Path) -> io.BufferedIOBase:
    if archive.name.endswith((".xz", ".txz")):
        xz = shutil.which("xz")
        if xz is not None:
            return io.BufferedReader(_XzPipe(archive, xz), buffer_size=1 << 20)
        # lzma.open (not tarfile's own "r|xz") so that a truncated stream raises instead of ending early
        return lzma.open(archive, "rb")
    if archive.name.endswith((".gz", ".tgz")):
        return gzip.open(archive, "rb")
    if archive.name.endswith(".bz2"):
        return bz2.open(archive, "rb")
    return archive.open("rb")


def _normalise(member: tarfile.TarInfo) -> None:
    """Our files: owned by the installing user, no setuid/setgid/sticky bits, not group/other writable."""
    member.uid, member.gid = os.getuid(), os.getgid()
    member.uname = member.gname = ""
    member.mode &= 0o755
    if member.isdir():
        member.mode |= 0o700
