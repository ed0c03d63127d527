from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from provisioner.errors import HostWriteError
from provisioner.fsops import (
    atomic_symlink,
    atomic_write_text,
    link_or_copy,
    move_aside,
    remove_file,
    replace_marked_block,
    staging_dir,
)

B, E = "# >>> x >>>", "# <<< x <<<"


def test_atomic_write_is_idempotent_and_sets_mode(tmp_path: Path) -> None:
    p = tmp_path / "a" / "f.txt"
    assert atomic_write_text(p, "hello\n", mode=0o600) is True
    assert p.read_text() == "hello\n"
    assert p.stat().st_mode & 0o777 == 0o600
    mtime = p.stat().st_mtime_ns
    assert atomic_write_text(p, "hello\n", mode=0o600) is False
    assert p.stat().st_mtime_ns == mtime
    assert [x.name for x in p.parent.iterdir()] == ["f.txt"]  # no temp file left


def test_atomic_write_into_unwritable_place_names_path_and_sudo(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(HostWriteError) as err:
        atomic_write_text(blocker / "x.txt", "y")
    assert str(blocker / "x.txt") in str(err.value)


def test_atomic_symlink_replaces_link_in_one_rename(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    link = tmp_path / "bin" / "tool"
    atomic_symlink(link, a)
    assert os.readlink(link) == str(a)
    atomic_symlink(link, b)
    assert os.readlink(link) == str(b)
    assert sorted(x.name for x in link.parent.iterdir()) == ["tool"]


def test_move_aside_names_a_backup(tmp_path: Path) -> None:
    f = tmp_path / "blender"
    f.write_text("foreign")
    backup = move_aside(f)
    assert not f.exists()
    assert backup.read_text() == "foreign"
    assert backup.name.startswith("blender.renderdev-backup-")
    f.write_text("again")
    assert move_aside(f) != backup


def test_staging_dir_is_removed_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "root" / "3.4.1"
    with pytest.raises(RuntimeError), staging_dir(target) as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")
    assert list((tmp_path / "root").iterdir()) == []


def test_staging_dir_renamed_into_place_survives(tmp_path: Path) -> None:
    target = tmp_path / "root" / "3.4.1"
    with staging_dir(target) as tmp:
        (tmp / "blender").write_text("x")
        tmp.rename(target)
    assert (target / "blender").exists()
    assert [p.name for p in target.parent.iterdir()] == ["3.4.1"]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", f"{B}\nbody\n{E}\n"),
        ("export A=1", f"export A=1\n{B}\nbody\n{E}\n"),
        (f"x\n{B}\nold\n{E}\ny\n", f"x\n{B}\nbody\n{E}\ny\n"),
        (f"{B}\nold\n{E}\nmid\n{B}\nold2\n{E}\n", f"{B}\nbody\n{E}\nmid\n"),
    ],
)
def test_marked_block_set(before: str, after: str) -> None:
    assert replace_marked_block(before, B, E, "body") == after
    assert replace_marked_block(after, B, E, "body") == after  # idempotent


def test_marked_block_remove_keeps_the_rest() -> None:
    text = f"a\n{B}\nbody\n{E}\nb\n"
    assert replace_marked_block(text, B, E, None) == "a\nb\n"


def test_unterminated_block_does_not_eat_the_file() -> None:
    text = f"a\n{B}\nhalf\nimportant\n"
    assert replace_marked_block(text, B, E, None) == text


def test_link_or_copy_links_on_one_filesystem_else_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"archive bytes")
    linked = tmp_path / "ctx" / "a.bin"
    link_or_copy(src, linked)
    assert linked.read_bytes() == b"archive bytes" and linked.stat().st_ino == src.stat().st_ino

    def cross_device(a: object, b: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    copied = tmp_path / "ctx" / "b.bin"
    copied.write_bytes(b"old")
    link_or_copy(src, copied)
    assert copied.read_bytes() == b"archive bytes" and copied.stat().st_ino != src.stat().st_ino
    assert sorted(p.name for p in copied.parent.iterdir()) == ["a.bin", "b.bin"]  # no temp file left


def test_remove_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    assert remove_file(f) is True and not f.exists()
    assert remove_file(f) is False
