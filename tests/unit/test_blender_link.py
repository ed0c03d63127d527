"""Link decisions on tmp paths: missing, already right, ours, dangling ours, foreign link, regular file,
folder, no write access; and `unlink`, which removes only what is ours."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.blender import link as links
from provisioner.blender.link import LinkState, decide
from provisioner.config import load_settings
from provisioner.errors import HostWriteError

VERSION = "9.9.9"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An install root with two versions (plain files standing in for the binaries)."""
    for v in ("9.9.9", "9.9.8"):
        (tmp_path / "root" / v).mkdir(parents=True)
        binary = tmp_path / "root" / v / "blender"
        binary.write_text(f"#!/bin/sh\necho 'Blender {v}'\n")
        binary.chmod(0o755)
    return tmp_path / "root"


@pytest.fixture
def link(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    return tmp_path / "bin" / "blender"


def target(root: Path, version: str = VERSION) -> Path:
    return root / version / "blender"


def test_missing_link_is_created(root: Path, link: Path) -> None:
    plan = decide(link, target(root), install_root=root, version=VERSION)
    assert plan.state is LinkState.MISSING and not plan.ok and not plan.needs_force
    done = links.apply(plan, force=False, install_root=root)
    assert os.readlink(link) == str(target(root))
    assert "linked" in done
    assert decide(link, target(root), install_root=root, version=VERSION).state is LinkState.RIGHT


def test_link_already_right_is_a_noop(root: Path, link: Path) -> None:
    link.symlink_to(target(root))
    before = os.lstat(link)
    plan = decide(link, target(root), install_root=root, version=VERSION)
    assert plan.state is LinkState.RIGHT and plan.ok
    links.apply(plan, force=False, install_root=root)
    after = os.lstat(link)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert not (root / links.RECORDS).exists(), "nothing was written"


def test_relative_link_to_the_same_binary_is_right(root: Path, link: Path) -> None:
    link.symlink_to(os.path.relpath(target(root), link.parent))
    assert decide(link, target(root), install_root=root, version=VERSION).state is LinkState.RIGHT


def test_our_link_to_another_version_is_switched_without_force(root: Path, link: Path) -> None:
    link.symlink_to(target(root, "9.9.8"))
    plan = decide(link, target(root), install_root=root, version=VERSION)
    assert plan.state is LinkState.OURS and not plan.needs_force
    done = links.apply(plan, force=False, install_root=root)
    assert os.readlink(link) == str(target(root))
    assert "was renderdev's link" in done
    assert (root / "9.9.8" / "blender").exists(), "versions live side by side"


def test_dangling_link_of_ours_is_replaced(root: Path, link: Path) -> None:
    link.symlink_to(root / "1.2.3" / "blender")
    plan = decide(link, target(root), install_root=root, version=VERSION)
    assert plan.state is LinkState.OURS and "dangling" in plan.now
    links.apply(plan, force=False, install_root=root)
    assert os.readlink(link) == str(target(root))


def test_foreign_link_refused_then_moved_aside_with_force(root: Path, link: Path) -> None:
    link.symlink_to("/bin/true")
    plan = decide(link, target(root), install_root=root, version=VERSION)
    assert plan.state is LinkState.FOREIGN_LINK and plan.needs_force
    with pytest.raises(HostWriteError) as err:
        links.apply(plan, force=False, install_root=root)
    assert str(link) in err.value.message and "a link to /bin/true" in err.value.message
    assert "--force" in (err.value.hint or "")
    assert os.readlink(link) == "/bin/true", "left alone"

    done = links.apply(plan, force=True, install_root=root)
    backups = [p for p in link.parent.iterdir() if p.name.startswith("blender.renderdev-backup-")]
    assert len(backups) == 1 and os.readlink(backups[0]) == "/bin/true"
    assert str(backups[0]) in done
    assert os.readlink(link) == str(target(root))

    settings = load_settings(blender_link=link, blender_install_root=root)
    undone = links.unlink(settings)
    assert undone is not None and "removed" in undone and "put back" in undone
    assert os.readlink(link) == "/bin/true", "the foreign link is back"
    assert links.unlink(settings) is None, "the foreign link is not ours to remove"


def test_regular_file_refused_then_moved_aside_with_force(root: Path, link: Path) -> None:
    link.write_text("a user's own script\n")
    plan = decide(link, target(root), install_root=root, version=VERSION)
    assert plan.state is LinkState.FILE and plan.owner is None
    with pytest.raises(HostWriteError, match="is a regular file, not a link renderdev made"):
        links.check(plan, force=False)
    done = links.apply(plan, force=True, install_root=root)
    backup = Path(done.split(" aside to ")[1].split(";")[0])
    assert backup.read_text() == "a user's own script\n"
    assert os.readlink(link) == str(target(root))


def test_folder_is_never_replaced(root: Path, link: Path) -> None:
    link.mkdir()
    plan = decide(link, target(root), install_root=root, version=VERSION)
    assert plan.state is LinkState.OTHER
    with pytest.raises(HostWriteError, match="is a folder"):
        links.apply(plan, force=True, install_root=root)
    assert link.is_dir()


def test_recorded_link_outside_the_root_is_ours(root: Path, link: Path, tmp_path: Path) -> None:
    packaged = tmp_path / "usr-bin-blender"
    packaged.write_text("#!/bin/sh\necho 'Blender 9.9.9'\n")
    links.apply(decide(link, packaged, install_root=root, version=VERSION), force=False, install_root=root)
    assert decide(link, packaged, install_root=root, version=VERSION).state is LinkState.RIGHT
    assert decide(link, target(root), install_root=root, version=VERSION).state is LinkState.OURS
    assert links.unlink(load_settings(blender_link=link, blender_install_root=root)) is not None
    assert not os.path.lexists(link)


def test_unlink_leaves_foreign_things_alone(root: Path, link: Path) -> None:
    settings = load_settings(blender_link=link, blender_install_root=root)
    assert links.unlink(settings) is None
    link.write_text("mine")
    assert links.unlink(settings) is None and link.read_text() == "mine"


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder this process cannot write to: a read-only bind mount as root, a 0555 folder otherwise."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(ro), str(ro)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"root here cannot make a read-only bind mount ({mounted.stderr.strip()})")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True, capture_output=True)
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_no_write_access_gives_the_sudo_command(root: Path, read_only_dir: Path) -> None:
    assert not os.access(read_only_dir, os.W_OK)
    link = read_only_dir / "blender"
    plan = decide(link, target(root), install_root=root, version=VERSION)
    with pytest.raises(HostWriteError) as err:
        links.apply(plan, force=False, install_root=root)
    assert f"no write access to {read_only_dir}" in err.value.message
    assert f"sudo ln -sfn {target(root)} {link}" in (err.value.hint or "")
    assert not os.path.lexists(link)
