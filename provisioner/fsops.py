"""The few careful helpers every host write goes through.

- writes are atomic (temp file in the same folder, fsync, `os.replace`);
- links are made as a new link renamed over the old one, so a reader never sees a half-made link;
- nothing we do not own is clobbered: callers decide ownership and pass `force` to move it aside;
- partial work is removed on failure (`staging_dir`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from provisioner.errors import HostWriteError


def _sudo_hint(path: Path) -> str:
    return f"no write access to {path.parent}: re-run with sudo (sudo -E invoke ...), or choose another path"


def _raise_write(path: Path, exc: OSError) -> HostWriteError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HostWriteError(f"cannot write {path}: {exc.strerror}", hint=_sudo_hint(path))
    return HostWriteError(f"cannot write {path}: {exc}")


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> bool:
    """Write text to path atomically. Returns False (and writes nothing) when it is already there."""
    try:
        if path.is_file() and not path.is_symlink() and path.read_text() == text:
            if (path.stat().st_mode & 0o777) != mode:
                os.chmod(path, mode)
                return True
            return False
    except OSError:
        pass
    atomic_write_bytes(path, text.encode(), mode=mode)
    return True


def atomic_symlink(link: Path, target: Path) -> None:
    """Point link at target: a new link is made beside it and renamed over the old one."""
    tmp = link.parent / f".{link.name}.renderdev-{os.getpid()}-{time.monotonic_ns()}"
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _raise_write(link, exc) from exc


def backup_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.renderdev-backup-{stamp}")
    n = 1
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.name}.renderdev-backup-{stamp}-{n}")
        n += 1
    return candidate


def move_aside(path: Path) -> Path:
    """Rename a file or link we do not own to a named backup beside it; return the backup's path."""
    dest = backup_path(path)
    try:
        os.rename(path, dest)
    except OSError as exc:
        raise _raise_write(path, exc) from exc
    return dest


def writable(path: Path) -> bool:
    """True when we could create or replace `path` (its nearest existing parent is writable)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return os.access(parent, os.W_OK | os.X_OK)


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside target (same filesystem, so it can be renamed into place).

    It is removed if the block fails, and also if the block leaves it behind without renaming it.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    except OSError as exc:
        raise _raise_write(target, exc) from exc
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_marked_block(text: str, begin: str, end: str, body: str | None) -> str:
    """Return text with the block between the marker lines set to body (None removes the block).

    Exactly one block is kept; duplicates left by hand edits are folded into one.
    """
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    inside = False
    placed = False
    for line in lines:
        stripped = line.rstrip("\n")
        if stripped == begin:
            inside = True
            continue
        if inside:
            if stripped == end:
                inside = False
                if body is not None and not placed:
                    out.append(_block(begin, end, body))
                    placed = True
            continue
        out.append(line)
    if inside:  # an unterminated block: keep what was there rather than eat the rest of the file
        return text if body is None or placed else _append(text, _block(begin, end, body))
    result = "".join(out)
    if body is not None and not placed:
        result = _append(result, _block(begin, end, body))
    return result


def _block(begin: str, end: str, body: str) -> str:
    return f"{begin}\n{body.rstrip()}\n{end}\n"


def _append(text: str, block: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + block


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write bytes to path atomically: a temp file beside it (same filesystem), fsync, then rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _raise_write(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _raise_write(path, exc) from exc


def link_or_copy(source: Path, dest: Path) -> None:
    """Put source's bytes at dest: a hard link where both are on one filesystem, else a copy; either way made
    beside dest and renamed over it, so dest is never half there."""
    tmp = dest.parent / f".{dest.name}.renderdev-{os.getpid()}-{time.monotonic_ns()}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _raise_write(dest, exc) from exc


def remove_file(path: Path) -> bool:
    """Remove a file (or link) of ours; False when it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _raise_write(path, exc) from exc
    return True


def ensure_dir(path: Path) -> None:
    """Make a folder (and its parents) unless it is there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _raise_write(path, exc) from exc
