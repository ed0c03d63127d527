"""A loopback Blender mirror: a release-shaped archive made from the host's Blender, served over HTTP.

The archive is laid out like download.blender.org's (`release/Blender3.4/blender-3.4.1-linux-x64.tar.xz`,
one top folder holding `blender`), made the way the integration tests make theirs: the host binary
copied in, `tar | xz -0 -T0`. Its sha256 goes into a versions file of its own, so installs from it
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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build_release(work: Path, out: Path, version: str, binary: Path = HOST_BLENDER) -> None:
    """A release-shaped tar.xz of `binary` at out (as tests/integration/test_blender_install.py makes it)."""
    if not binary.is_file():
        raise BenchError(f"no Blender to make the mirror's archive from: {binary} is missing", hint="invoke blender")
    series = version.rsplit(".", 1)[0]
    top = work / archive_name(version).removesuffix(".tar.xz")
    (top / series / "datafiles").mkdir(parents=True)
    (top / series / "datafiles" / "README.txt").write_text("renderdev bench release\n")
    shutil.copy2(binary, top / "blender")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        tar = subprocess.Popen(["tar", "-C", str(work), "-cf", "-", top.name], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        xz = subprocess.run(["xz", "-0", "-T0", "-c"], stdin=tar.stdout, stdout=fh, check=False)
        tar.stdout.close()
        if tar.wait() != 0 or xz.returncode != 0:
            raise BenchError(f"could not make {out} from {binary} (tar exit {tar.returncode}, xz exit {xz.returncode})")
    shutil.rmtree(work)


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
    build_release(root / "tree", archive, version)
    sha = sha256_of(archive)
    versions = write_versions(root / "versions.yaml", version, sha)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, name="bench-mirror", daemon=True)
    thread.start()
    try:
        yield Mirror(folder, f"http://127.0.0.1:{server.server_address[1]}", archive, sha, version, versions)
    finally:
        server.shutdown()
        server.server_close()
