"""Sources: order, fallthrough reporting, and the tarball path end to end from a local-folder mirror
(a real archive made here, holding a tiny script that answers `--version` like Blender)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from rich.console import Console

from provisioner.blender import sources
from provisioner.blender.download import fetch
from provisioner.blender.install_root import METADATA, read_record, verified_install
from provisioner.blender.sources import (
    ORDER,
    Request,
    Result,
    SourceName,
    Unavailable,
    host_distro,
    install_from_sources,
    mirror_location,
    official_url,
    order,
)
from provisioner.blender.versions import load_versions
from provisioner.config import load_settings
from provisioner.errors import BlenderError

VERSION = "9.9.9"
TOP = f"blender-{VERSION}-linux-x64"
URL = f"https://download.blender.org/release/Blender9.9/{TOP}.tar.xz"


def make_release(path: Path, version: str = VERSION, *, says: str | None = None) -> Path:
    """A release-shaped archive whose `blender` is a script printing 'Blender <version>' (or `says`) first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    top = f"blender-{version}-linux-x64"
    script = f"#!/bin/sh\necho '{says or f'Blender {version}'}'\necho 'build hash: test'\n".encode()
    with tarfile.open(path, "w:xz", preset=0) as tar:
        for name, data, mode in [(top, None, 0o755), (f"{top}/blender", script, 0o755), (f"{top}/9.9", None, 0o755)]:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    folder = tmp_path / "mirror"
    make_release(folder / "release" / "Blender9.9" / f"{TOP}.tar.xz")
    return folder


def versions_file(tmp_path: Path, sha: str | None, *, apt: str = "") -> Path:
    path = tmp_path / "versions.yaml"
    sha_text = "null" if sha is None else f'"{sha}"'
    path.write_text(f'versions:\n  "{VERSION}":\n    linux-x64:\n      url: {URL}\n      sha256: {sha_text}\n{apt}')
    return path


def request(tmp_path: Path, vfile: Path, *, insecure: bool = False, **settings: object) -> tuple[Request, Console]:
    console = Console(file=io.StringIO(), width=200)
    values: dict[str, object] = {
        "blender_install_root": tmp_path / "root",
        "blender_link": tmp_path / "bin" / "blender",
        "blender_official_base": "http://127.0.0.1:1/release",  # refused at once: never the real site
    }
    values.update(settings)
    s = load_settings(**values)
    vf = load_versions(vfile)
    return Request(VERSION, vf.entry(VERSION), vf.path, s, console, insecure), console


def printed(console: Console) -> str:
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


# --- order and fallthrough ----------------------------------------------------------------------


def test_order() -> None:
    assert order("auto") == list(ORDER) == ["installed", "mirror", "official", "apt"]
    assert order("apt") == [SourceName.APT]
    with pytest.raises(BlenderError, match="unknown Blender source 'ftp'"):
        order("ftp")


def test_fallthrough_reports_each_source_in_one_line(tmp_path: Path) -> None:
    req, console = request(tmp_path, versions_file(tmp_path, "0" * 64))
    tried: list[str] = []

    def skipped(r: Request) -> Result:
        tried.append("installed")
        raise Unavailable("nothing installed")

    def failing(r: Request) -> Result:
        tried.append("mirror")
        raise BlenderError("GET http://m/x: HTTP 404 Not Found\nsecond line", hint="h")

    def working(r: Request) -> Result:
        tried.append("official")
        return Result(r.version, Path("/x/blender"), SourceName.OFFICIAL, "from test")

    def never(r: Request) -> Result:
        tried.append("apt")
        raise AssertionError("not reached")

    table = {
        SourceName.INSTALLED: skipped,
        SourceName.MIRROR: failing,
        SourceName.OFFICIAL: working,
        SourceName.APT: never,
    }
    got = install_from_sources(req, ORDER, sources=table)
    assert got.source is SourceName.OFFICIAL
    assert tried == ["installed", "mirror", "official"]
    lines = printed(console).splitlines()
    assert "blender source installed: skipped: nothing installed" in lines[0]
    assert "blender source mirror: failed: GET http://m/x: HTTP 404 Not Found" in lines[1]
    assert len(lines) == 2


def test_all_sources_failing_lists_each(tmp_path: Path, mirror: Path) -> None:
    """Real sources: the mirror has other bytes, the official site refuses, apt has no pin."""
    req, console = request(tmp_path, versions_file(tmp_path, "0" * 64), blender_mirror=str(mirror))
    with pytest.raises(BlenderError) as err:
        install_from_sources(req, order("auto"))
    msg = err.value.message
    assert f"could not install Blender {VERSION} from any source" in msg
    assert "- installed: no verified install of 9.9.9" in msg
    assert "- mirror: sha256 mismatch for" in msg
    assert "- official: GET http://127.0.0.1:1/release/Blender9.9/" in msg
    assert "- apt: " in msg and "pins no distro package for 9.9.9" in msg
    assert "release/Blender9.9/blender-9.9.9-linux-x64.tar.xz" in (err.value.hint or "")
    assert len([line for line in printed(console).splitlines() if "blender source" in line]) == 4
    assert not (tmp_path / "root").exists(), "nothing left: not even the install root it made"


# --- locations ----------------------------------------------------------------------------------


def test_mirror_locations(tmp_path: Path) -> None:
    rel = "release/Blender3.4/blender-3.4.1-linux-x64.tar.xz"
    assert mirror_location("http://m.example/blender/", "3.4.1") == f"http://m.example/blender/{rel}"
    assert mirror_location(str(tmp_path), "3.4.1") == f"{tmp_path}/{rel}"
    assert mirror_location(f"file://{tmp_path}", "3.4.1") == f"{tmp_path}/{rel}"


def test_official_url_follows_the_base_setting(tmp_path: Path) -> None:
    vf = load_versions(versions_file(tmp_path, "0" * 64))
    entry = vf.entry(VERSION)
    assert official_url(entry, load_settings()) == URL
    moved = official_url(entry, load_settings(blender_official_base="https://proxy.example/blender/release/"))
    assert moved == f"https://proxy.example/blender/release/Blender9.9/{TOP}.tar.xz"


def test_mirror_not_set_or_missing(tmp_path: Path) -> None:
    req, _ = request(tmp_path, versions_file(tmp_path, "0" * 64))
    with pytest.raises(Unavailable, match="no mirror set"):
        sources.from_mirror(req)
    req, _ = request(tmp_path, versions_file(tmp_path, "0" * 64), blender_mirror=str(tmp_path / "nope"))
    with pytest.raises(BlenderError, match="neither an http\\(s\\) URL nor an existing folder"):
        sources.from_mirror(req)
    req, _ = request(tmp_path, versions_file(tmp_path, "0" * 64), blender_mirror=str(tmp_path))
    with pytest.raises(BlenderError, match=f"has no release/Blender9.9/{TOP}.tar.xz"):
        sources.from_mirror(req)


def test_apt_applies_only_with_a_pin_for_this_distro(tmp_path: Path) -> None:
    req, _ = request(tmp_path, versions_file(tmp_path, "0" * 64))
    with pytest.raises(Unavailable, match="pins no distro package"):
        sources.from_apt(req)
    other = "    apt:\n      package: blender\n      version: 9.9.9-1\n      distro: debian-99\n"
    req, _ = request(tmp_path, versions_file(tmp_path, "0" * 64, apt=other))
    with pytest.raises(Unavailable, match="is for debian-99"):
        sources.from_apt(req)
    assert sources.apt_installed(req) is None


def test_host_distro(tmp_path: Path) -> None:
    f = tmp_path / "os-release"
    f.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    assert host_distro(f) == "debian-12"
    f.write_text("ID=arch\n")
    assert host_distro(f) == "arch"
    assert host_distro(tmp_path / "none") is None


# --- the tarball path from a local folder --------------------------------------------------------


def test_local_mirror_installs_verifies_and_records(tmp_path: Path, mirror: Path) -> None:
    archive = mirror / "release" / "Blender9.9" / f"{TOP}.tar.xz"
    req, _ = request(tmp_path, versions_file(tmp_path, sha256_of(archive)), blender_mirror=str(mirror))
    got = sources.from_mirror(req)
    root = tmp_path / "root"
    assert got.binary == root / VERSION / "blender" and got.source is SourceName.MIRROR
    record = read_record(root, VERSION)
    assert record is not None and record.sha256 == sha256_of(archive) and record.verified == "Blender 9.9.9"
    assert sorted(p.name for p in root.iterdir()) == [VERSION], "no staging folder or archive left"
    assert sorted(p.name for p in (root / VERSION).iterdir()) == [METADATA, "9.9", "blender"]
    again = sources.from_installed(req)
    assert again.source is SourceName.INSTALLED and again.binary == got.binary


def test_checksum_mismatch_leaves_nothing(tmp_path: Path, mirror: Path) -> None:
    req, _ = request(tmp_path, versions_file(tmp_path, "0" * 64), blender_mirror=str(mirror))
    with pytest.raises(BlenderError, match="sha256 mismatch"):
        sources.from_mirror(req)
    assert not (tmp_path / "root").exists()


def test_missing_checksum_refused_unless_insecure(tmp_path: Path, mirror: Path) -> None:
    vfile = versions_file(tmp_path, None)
    req, _ = request(tmp_path, vfile, blender_mirror=str(mirror))
    with pytest.raises(BlenderError, match="has no sha256 for 9.9.9 linux-x64") as err:
        sources.from_mirror(req)
    assert "--insecure" in (err.value.hint or "")
    assert not (tmp_path / "root").exists(), "refused before fetching anything"

    req, console = request(tmp_path, vfile, insecure=True, blender_mirror=str(mirror))
    got = sources.from_mirror(req)
    assert "WARNING: --insecure" in printed(console) and "UNVERIFIED" in printed(console)
    record = read_record(tmp_path / "root", VERSION)
    assert record is not None and record.insecure
    assert verified_install(tmp_path / "root", VERSION, sha256=None) is None, "an unverified install is not trusted"
    assert verified_install(tmp_path / "root", VERSION, sha256=None, insecure=True) is not None
    assert got.binary.is_file()


def test_wrong_version_inside_the_archive_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mirror"
    archive = folder / "release" / "Blender9.9" / f"{TOP}.tar.xz"
    make_release(archive)
    # same layout, but the binary answers another version
    make_release(tmp_path / "other.tar.xz", "9.9.8")
    with tarfile.open(tmp_path / "other.tar.xz") as src, tarfile.open(archive, "w:xz", preset=0) as dst:
        for m in src.getmembers():
            data = src.extractfile(m) if m.isfile() else None
            m.name = m.name.replace("9.9.8", "9.9.9")
            dst.addfile(m, data)
    req, _ = request(tmp_path, versions_file(tmp_path, sha256_of(archive)), blender_mirror=str(folder))
    with pytest.raises(BlenderError, match="reports 'Blender 9.9.8' for --version, expected Blender 9.9.9"):
        sources.from_mirror(req)
    assert not (tmp_path / "root").exists()


def test_unverified_folder_in_the_root_is_replaced(tmp_path: Path, mirror: Path) -> None:
    archive = mirror / "release" / "Blender9.9" / f"{TOP}.tar.xz"
    stale = tmp_path / "root" / VERSION
    stale.mkdir(parents=True)
    (stale / "half-written").write_text("x")
    req, _ = request(tmp_path, versions_file(tmp_path, sha256_of(archive)), blender_mirror=str(mirror))
    with pytest.raises(Unavailable):
        sources.from_installed(req)
    sources.from_mirror(req)
    assert not (stale / "half-written").exists()
    assert os.access(stale / "blender", os.X_OK)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [VERSION]


# --- download of a local file -------------------------------------------------------------------


def test_fetch_hashes_and_refuses_a_mismatch(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    console = Console(file=io.StringIO())
    dest = tmp_path / "out" / "file.bin"
    assert fetch(str(src), dest, sha256=sha256_of(src), timeout=5, console=console) == sha256_of(src)
    assert dest.read_bytes() == src.read_bytes()
    dest.unlink()
    with pytest.raises(BlenderError, match="sha256 mismatch"):
        fetch(str(src), dest, sha256="0" * 64, timeout=5, console=console)
    assert list(dest.parent.iterdir()) == [], "no temporary file left"
    with pytest.raises(BlenderError, match="GET http://127.0.0.1:1/x: ConnectError"):
        fetch("http://127.0.0.1:1/x", dest, sha256="0" * 64, timeout=5, console=console)
    assert list(dest.parent.iterdir()) == []
