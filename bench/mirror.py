"""A loopback Blender mirror: a release-shaped archive made from the host's Blender, served over HTTP.

The archive is laid out like download.blender.org's (`release/Blender3.4/blender-3.4.1-linux-x64.tar.xz`,
one top folder holding `blender`, `X.Y/` and `lib/`) and has a release's thousands of entries (see build_release),
made with `tar | xz -0 -T0`. Its sha256 goes into a versions file of its own, so installs from it
are checked like any other.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.errors import BenchError
from provisioner.blender.versions import archive_name, release_path

HOST_BLENDER = Path("/usr/bin/blender")  # only read, to build the archive: never run or linked by the bench


@dataclass(frozen=True)
class Mirror:
    folder: Path  # the mirror's root (release/BlenderX.Y/<file> under it)
    url: str  # the same folder over loopback HTTP
    archive: Path
    sha256: str
    version: str
    versions_file: Path
    shape: Shape


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# What a real release holds beside its binary, taken from this host so the archive has a release's shape: its
# thousands of entries (files, folders, library links) are what the install's per-entry checks pay for.
HOST_DATA = Path("/usr/share/blender")  # Debian's datafiles/ and scripts/ (a release's X.Y/datafiles, X.Y/scripts)
HOST_PYTHON = Path("/usr/lib/python3.11")  # a release bundles its Python under X.Y/python/lib/
RELEASE_LIBS = 20  # a release ships its libraries in lib/, each with its soname link


@dataclass(frozen=True)
class Shape:
    files: int
    folders: int
    links: int
    bytes: int

    def __str__(self) -> str:
        return f"{self.files} files, {self.folders} folders, {self.links} links, {self.bytes / 1e6:.0f} MB"


def shape_of(top: Path) -> Shape:
    files = folders = links = size = 0
    for path in top.rglob("*"):
        if path.is_symlink():
            links += 1
        elif path.is_dir():
            folders += 1
        else:
            files += 1
            size += path.stat().st_size
    return Shape(files, folders, links, size)


def _copy_libs(binary: Path, lib: Path) -> None:
    """The first RELEASE_LIBS shared libraries the binary loads from the host, as a release lays them out:
    the real file under its full name, and its soname as a relative link to it."""
    lib.mkdir()
    found = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    paths = [Path(line.split("=>", 1)[1].split()[0]) for line in found.splitlines() if "=> /" in line]
    for soname in paths[:RELEASE_LIBS]:
        real = soname.resolve()
        shutil.copy2(real, lib / real.name)
        if real.name != soname.name:
            (lib / soname.name).symlink_to(real.name)


def _resolve_absolute_links(top: Path) -> None:
    """A release holds only relative links inside its own folder; the host's copies may point outside it
    (Debian's python3.11/sitecustomize.py -> /etc/python3.11/...), which the installer rightly refuses as a
    tar slip. Such a link becomes a copy of what it points at, or goes if that is missing."""
    for path in list(top.rglob("*")):
        if not path.is_symlink():
            continue
        target = Path(path.readlink())
        if not target.is_absolute() and top in (path.parent / target).resolve().parents:
            continue
        real = path.resolve()
        path.unlink()
        if real.is_file():
            shutil.copy2(real, path)


def build_release(work: Path, out: Path, version: str, binary: Path = HOST_BLENDER) -> Shape:
    """A release-shaped tar.xz at out: `blender-X.Y.Z-linux-x64/` holding the binary, `X.Y/datafiles`,
    `X.Y/scripts` and `X.Y/python/lib/python3.11` from this host, and `lib/` with library links. Returns its shape."""
    if not binary.is_file():
        raise BenchError(f"no Blender to make the mirror's archive from: {binary} is missing", hint="invoke blender")
    series = version.rsplit(".", 1)[0]
    top = work / archive_name(version).removesuffix(".tar.xz")
    (top / series).mkdir(parents=True)
    for name in ("datafiles", "scripts"):
        if (HOST_DATA / name).is_dir():
            shutil.copytree(HOST_DATA / name, top / series / name, symlinks=True)
    if not (top / series / "datafiles").is_dir():
        (top / series / "datafiles").mkdir()
        (top / series / "datafiles" / "README.txt").write_text("renderdev bench release\n")
    if HOST_PYTHON.is_dir():
        shutil.copytree(
            HOST_PYTHON,
            top / series / "python" / "lib" / HOST_PYTHON.name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "dist-packages"),
        )
    _resolve_absolute_links(top)
    _copy_libs(binary, top / "lib")
    shutil.copy2(binary, top / "blender")
    shape = shape_of(top)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        tar = subprocess.Popen(["tar", "-C", str(work), "-cf", "-", top.name], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        xz = subprocess.run(["xz", "-0", "-T0", "-c"], stdin=tar.stdout, stdout=fh, check=False)
        tar.stdout.close()
        if tar.wait() != 0 or xz.returncode != 0:
            raise BenchError(f"could not make {out} from {binary} (tar exit {tar.returncode}, xz exit {xz.returncode})")
    shutil.rmtree(work)
    return shape


def write_versions(path: Path, version: str, sha256: str) -> Path:
    series = version.rsplit(".", 1)[0]
    url = f"https://download.blender.org/release/Blender{series}/{archive_name(version)}"
    path.write_text(
        "\n".join(
            [
                "format: 1",
                "versions:",
                f'  "{version}":',
                "    linux-x64:",
                f"      url: {url}",
                f'      sha256: "{sha256}"',
            ]
        )
        + "\n"
    )
    return path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def loopback_mirror(root: Path, version: str) -> Iterator[Mirror]:
    """Make the archive under root/www and serve root/www on 127.0.0.1 (a free port) until the block ends."""
    folder = root / "www"
    archive = folder / release_path(version)
    shape = build_release(root / "tree", archive, version)
    sha = sha256_of(archive)
    versions = write_versions(root / "versions.yaml", version, sha)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, name="bench-mirror", daemon=True)
    thread.start()
    try:
        yield Mirror(folder, f"http://127.0.0.1:{server.server_address[1]}", archive, sha, version, versions, shape)
    finally:
        server.shutdown()
        server.server_close()
