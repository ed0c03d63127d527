"""--force on a file that a Debian package ships: it is diverted with dpkg-divert (never overwritten),
and `unlink` undoes the diversion. Uses a tiny throw-away package built and installed here, shipping a
file under /opt/renderdev-test-*, so the host's real packages (and /usr/bin/blender) are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.blender import dpkg
from provisioner.blender import link as links
from provisioner.blender.link import LinkState, decide
from provisioner.config import load_settings
from provisioner.errors import HostWriteError

pytestmark = pytest.mark.integration

APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]


def _run(argv: list[str]) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert out.returncode == 0, f"{' '.join(argv)} failed: {out.stderr[-2000:]}"


@pytest.fixture
def packaged_file(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(package, path): a file shipped by a test package that is installed for this test only."""
    if os.geteuid() != 0:
        pytest.fail("this test installs a throw-away Debian package: run it as root (as CI does)")
    tag = uuid.uuid4().hex[:8]
    package, folder = f"renderdev-test-divert-{tag}", Path(f"/opt/renderdev-test-{tag}")
    path = folder / "bin" / "blender"
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: renderdev tests <dev@localhost>\n"
        "Description: renderdev test package (safe to remove)\n"
    )
    shipped = root / path.relative_to("/")
    shipped.parent.mkdir(parents=True)
    shipped.write_text("#!/bin/sh\necho 'Blender 9.9.8'\n")
    shipped.chmod(0o755)
    deb = tmp_path / f"{package}.deb"
    _run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)])
    _run([*APT, "install", str(deb)])
    try:
        yield package, path
    finally:
        subprocess.run(dpkg.undivert_argv(path), capture_output=True)  # in case the test stopped half-way
        if os.path.islink(path):
            os.unlink(path)
        _run([*APT, "purge", package])
        shutil.rmtree(folder, ignore_errors=True)


def test_force_diverts_a_packaged_file_and_unlink_restores_it(packaged_file: tuple[str, Path], tmp_path: Path) -> None:
    package, path = packaged_file
    root = tmp_path / "root"
    target = root / "9.9.9" / "blender"
    target.parent.mkdir(parents=True)
    target.write_text("#!/bin/sh\necho 'Blender 9.9.9'\n")
    target.chmod(0o755)

    plan = decide(path, target, install_root=root, version="9.9.9")
    assert plan.state is LinkState.PACKAGED_FILE and plan.owner == package
    with pytest.raises(HostWriteError) as err:
        links.apply(plan, force=False, install_root=root)
    assert f"of Debian package {package} (Blender 9.9.8)" in err.value.message
    assert path.is_file() and not path.is_symlink(), "left alone without --force"

    assert decide(path, target, install_root=root, version="9.9.8").state is LinkState.PACKAGED, (
        "a packaged file of the wanted version already satisfies the link"
    )

    done = links.apply(plan, force=True, install_root=root)
    distrib = Path(f"{path}.distrib")
    assert f"diverted package {package}'s {path} to {distrib} (dpkg-divert)" in done
    assert os.readlink(path) == str(target)
    assert "Blender 9.9.8" in distrib.read_text(), "the packaged file is kept under its diverted name"
    assert dpkg.truename(path) == distrib
    assert decide(path, target, install_root=root, version="9.9.9").state is LinkState.RIGHT

    settings = load_settings(blender_link=path, blender_install_root=root)
    undone = links.unlink(settings)
    assert undone is not None and "dpkg-divert --remove" in undone
    assert path.is_file() and not path.is_symlink() and "Blender 9.9.8" in path.read_text()
    assert not distrib.exists()
    assert dpkg.truename(path) == path
    assert dpkg.owner(path) == package
