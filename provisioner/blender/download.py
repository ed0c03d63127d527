"""Fetch a file (http(s) URL or local path) to a temporary file beside its destination, hashing as it goes.

The sha256 is checked before the file is renamed into place, so nothing unverified is ever extracted.

httpx and rich's progress bar are imported when a fetch starts, not with this module: a warm `invoke setup`
imports it (through provisioner.blender.sources) but downloads nothing, and those two imports were a tenth
of its time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from provisioner.errors import BlenderError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

CHUNK = 1024 * 1024


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def require_checksum(sha256: str | None, *, what: str, versions_file: Path, insecure: bool) -> None:
    """A version without a checksum installs only with insecure=True."""
    if sha256 is None and not insecure:
        raise BlenderError(
            f"{versions_file} has no sha256 for {what}: refusing to install an unverified download",
            hint=f"add the published sha256 to {versions_file}, or (not recommended) pass --insecure",
        )


def fetch(
    location: str,
    dest: Path,
    *,
    sha256: str | None,
    timeout: float,
    console: Console,
    insecure: bool = False,
) -> str:
    """Copy `location` (an http(s) URL or a local file) to dest; return the file's sha256.

    The bytes go to a temporary file beside dest and are hashed on the way; a missing or
    different checksum removes it and raises, unless insecure (then a loud warning is printed).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _copy(location, out, timeout=timeout, console=console, label=dest.name)
            out.flush()
            os.fsync(out.fileno())
        _check(location, digest, sha256, console=console, insecure=insecure)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return digest


def _check(location: str, digest: str, expected: str | None, *, console: Console, insecure: bool) -> None:
    if expected is not None and digest == expected:
        return
    if expected is None:
        problem = f"{location} has no published sha256 to check (got {digest})"
    else:
        problem = f"sha256 mismatch for {location}: expected {expected}, got {digest}"
    if not insecure:
        raise BlenderError(
            problem,
            hint="the file is corrupt or not the official one: check the mirror, or fetch from another source "
            "(--source official); do not work around it with --insecure",
        )
    console.print(f"[bold red]WARNING: --insecure: {problem}; installing it UNVERIFIED[/bold red]")


def _copy(location: str, out: BinaryIO, *, timeout: float, console: Console, label: str) -> str:
    h = hashlib.sha256()
    with _progress(console) as progress:
        if is_url(location):
            task = None
            for chunk, total in _http_chunks(location, timeout=timeout):
                if task is None:
                    task = progress.add_task(label, total=total)
                out.write(chunk)
                h.update(chunk)
                progress.advance(task, len(chunk))
        else:
            path = Path(location)
            try:
                size = path.stat().st_size
                task = progress.add_task(label, total=size)
                with path.open("rb") as src:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        progress.advance(task, len(chunk))
            except OSError as exc:
                raise BlenderError(f"cannot read {location}: {exc.strerror or exc}") from exc
    return h.hexdigest()


def _http_chunks(url: str, *, timeout: float) -> Iterator[tuple[bytes, int | None]]:
    import httpx

    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True) as client:
            with client.stream("GET", url, headers={"User-Agent": "renderdev"}) as resp:
                if resp.status_code != 200:
                    raise BlenderError(f"GET {url}: HTTP {resp.status_code} {resp.reason_phrase}")
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                got = False
                for chunk in resp.iter_bytes(CHUNK):
                    got = True
                    yield chunk, total
                if not got:
                    yield b"", total
    except httpx.TimeoutException as exc:
        raise BlenderError(f"GET {url}: no answer within {timeout:g} s ({exc.__class__.__name__})") from exc
    except httpx.HTTPError as exc:
        raise BlenderError(f"GET {url}: {exc.__class__.__name__}: {exc}") from exc


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        yield progress
