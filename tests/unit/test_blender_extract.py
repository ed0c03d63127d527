"""Safe extraction: tar-slip archives made here are refused, and a refused archive leaves nothing behind."""

from __future__ import annotations

import io
import lzma
import os
import tarfile
import uuid
from pathlib import Path

import pytest

from provisioner.blender.extract import extract_release
from provisioner.errors import BlenderError
from provisioner.fsops import staging_dir

TOP = "blender-9.9.9-linux-x64"


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def _special(name: str, kind: bytes, linkname: str = "", mode: int | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode if mode is not None else 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, b""


def make_archive(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:xz", preset=0) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def good_entries() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        _special(TOP, tarfile.DIRTYPE),
        _file(f"{TOP}/blender", b"#!/bin/sh\necho 'Blender 9.9.9'\n", 0o4755),
        _special(f"{TOP}/9.9", tarfile.DIRTYPE),
        _file(f"{TOP}/9.9/readme.txt", b"data"),
        _special(f"{TOP}/lib", tarfile.DIRTYPE),
        _file(f"{TOP}/lib/libfoo.so.1", b"lib"),
        _special(f"{TOP}/lib/libfoo.so", tarfile.SYMTYPE, "libfoo.so.1"),
        _special(f"{TOP}/lib/data", tarfile.SYMTYPE, "../9.9"),
        _special(f"{TOP}/blender-hardlink", tarfile.LNKTYPE, f"{TOP}/blender", mode=0o755),
    ]


def test_good_archive_extracts(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "good.tar.xz", good_entries())
    tree = extract_release(archive, tmp_path / "out", top=TOP)
    assert tree == tmp_path / "out" / TOP
    assert (tree / "blender").read_bytes().startswith(b"#!/bin/sh")
    assert os.access(tree / "blender", os.X_OK)
    assert not (tree / "blender").stat().st_mode & 0o4000, "setuid bits are dropped"
    assert os.readlink(tree / "lib" / "libfoo.so") == "libfoo.so.1"
    assert (tree / "lib" / "data" / "readme.txt").read_text() == "data"
    assert os.path.samefile(tree / "blender-hardlink", tree / "blender")


def _outside() -> str:
    return f"renderdev-slip-{uuid.uuid4().hex[:8]}"


SLIP_CASES = {
    "absolute path": (lambda o: _file(f"/tmp/{o}"), "is an absolute path"),
    "dot-dot": (lambda o: _file(f"{TOP}/../../{o}"), "climbs out with '..'"),
    "outside the top folder": (lambda o: _file(f"{o}/x"), "is outside the archive's top folder"),
    "symlink absolute": (lambda o: _special(f"{TOP}/etc", tarfile.SYMTYPE, "/etc"), "symlink to an absolute path"),
    "symlink climbing out": (
        lambda o: _special(f"{TOP}/up", tarfile.SYMTYPE, "../../../.."),
        "symlink pointing outside",
    ),
    "symlink out through dot-dot in a subfolder": (
        lambda o: _special(f"{TOP}/lib/up", tarfile.SYMTYPE, "../../x"),
        "symlink pointing outside",
    ),
    "hardlink absolute": (
        lambda o: _special(f"{TOP}/passwd", tarfile.LNKTYPE, "/etc/passwd"),
        "hard link to an absolute path",
    ),
    "hardlink climbing out": (
        lambda o: _special(f"{TOP}/passwd", tarfile.LNKTYPE, "../etc/passwd"),
        "hard link pointing outside",
    ),
    "char device": (lambda o: _special(f"{TOP}/null", tarfile.CHRTYPE), "is a device node or fifo"),
    "block device": (lambda o: _special(f"{TOP}/sda", tarfile.BLKTYPE), "is a device node or fifo"),
    "fifo": (lambda o: _special(f"{TOP}/pipe", tarfile.FIFOTYPE), "is a device node or fifo"),
}


@pytest.mark.parametrize("case", list(SLIP_CASES))
def test_tar_slip_refused_and_nothing_left(tmp_path: Path, case: str) -> None:
    make_entry, reason = SLIP_CASES[case]
    outside = _outside()
    bad = make_entry(outside)
    entries = good_entries()
    entries.insert(4, bad)  # after some good entries, which are written before the bad one is met
    archive = make_archive(tmp_path / "slip.tar.xz", entries)
    root = tmp_path / "root"
    target = root / "9.9.9"
    with pytest.raises(BlenderError) as err, staging_dir(target) as stage:
        extract_release(archive, stage / "tree", top=TOP)
    assert reason in err.value.message
    assert repr(bad[0].name) in err.value.message
    assert "tar slip" in err.value.message
    assert list(root.iterdir()) == [], "the staging folder is gone"
    assert not Path("/tmp", outside).exists()
    assert not [p for p in tmp_path.rglob("*") if outside in p.name]


def test_archive_without_binary(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "empty.tar.xz", [_special(TOP, tarfile.DIRTYPE), _file(f"{TOP}/README")])
    with pytest.raises(BlenderError, match=f"has no {TOP}/blender"):
        extract_release(archive, tmp_path / "out", top=TOP)


def test_damaged_archive(tmp_path: Path) -> None:
    good = make_archive(tmp_path / "good.tar.xz", good_entries()).read_bytes()
    damaged = tmp_path / "damaged.tar.xz"
    damaged.write_bytes(good[: len(good) // 2])
    with pytest.raises(BlenderError, match="cannot extract damaged.tar.xz"):
        extract_release(damaged, tmp_path / "out", top=TOP)
    not_xz = tmp_path / "text.tar.xz"
    not_xz.write_bytes(lzma.compress(b"not a tar file at all" * 40))
    with pytest.raises(BlenderError, match="cannot extract text.tar.xz"):
        extract_release(not_xz, tmp_path / "out2", top=TOP)
