"""A host-wide lock so two `invoke setup` runs never interleave their writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from provisioner.errors import HostWriteError


@contextlib.contextmanager
def host_lock(path: Path, console: Console, *, what: str = "invoke setup") -> Iterator[None]:
    """Hold an exclusive flock on path; if another process holds it, say so and wait for it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise HostWriteError(f"cannot open lock file {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            console.print(f"Waiting for another {what} (pid {holder}) to finish: lock {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
