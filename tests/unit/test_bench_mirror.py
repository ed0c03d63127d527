"""The bench's loopback mirror makes archives the installer accepts, even from a host whose files link outside."""

from __future__ import annotations

import tarfile
from pathlib import Path

from bench.mirror import _resolve_absolute_links
from provisioner.blender.extract import extract_release


def test_links_out_of_the_release_become_copies_and_the_installer_accepts_it(tmp_path: Path) -> None:
    outside = tmp_path / "etc" / "sitecustomize.py"
    outside.parent.mkdir()
    outside.write_text("# host file\n")
    top = tmp_path / "work" / "blender-3.4.1-linux-x64"
    lib = top / "3.4" / "python" / "lib" / "python3.11"
    lib.mkdir(parents=True)
    (lib / "os.py").write_text("# os\n")
    (top / "blender").write_text("#!/bin/sh\n")
    (lib / "sitecustomize.py").symlink_to(outside)  # absolute, as Debian's is
    (lib / "up.py").symlink_to("../../../../../../etc/sitecustomize.py")  # relative, but out of the release
    (lib / "alias.py").symlink_to("os.py")  # relative, inside: stays a link
    (lib / "gone.py").symlink_to("/no/such/file")  # dangling: dropped

    _resolve_absolute_links(top)

    assert not (lib / "sitecustomize.py").is_symlink()
    assert (lib / "sitecustomize.py").read_text() == "# host file\n"
    assert not (lib / "up.py").is_symlink() and (lib / "up.py").read_text() == "# host file\n"
    assert (lib / "alias.py").is_symlink() and str((lib / "alias.py").readlink()) == "os.py"
    assert not (lib / "gone.py").exists() and not (lib / "gone.py").is_symlink()

    archive = tmp_path / "blender-3.4.1-linux-x64.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(top, arcname=top.name)
    dest = tmp_path / "install"
    dest.mkdir()
    extracted = extract_release(archive, dest, top=top.name)
    assert (extracted / "3.4" / "python" / "lib" / "python3.11" / "sitecustomize.py").read_text() == "# host file\n"
