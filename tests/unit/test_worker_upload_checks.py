"""What the API checks of a worker's upload (renderfarm.png.png_problem), and how a worker file is read
(renderfarm.settings.WorkerAccess.from_file). The worker's Redis user: tests/unit/test_redis_acl.py."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from renderfarm.errors import RenderConfigError
from renderfarm.png import png_problem
from renderfarm.settings import WORKER_FILE_FORMAT, WorkerAccess


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int) -> bytes:
    rows = b"".join(b"\x00" + b"\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_a_whole_png_of_the_jobs_size_passes() -> None:
    assert png_problem(png(64, 36), (64, 36)) is None


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"GIF89a....", "not a PNG"),
        (png(36, 64), "36x64 pixels, the job renders 64x36"),
        (png(64, 36)[:-30], "truncated"),
        (png(64, 36) + b"x", "1 bytes after its end"),
        (png(64, 36)[:8] + chunk(b"IDAT", b"xx") + png(64, 36)[8:], "first chunk is not IHDR"),
        (png(64, 36)[:-12] + struct.pack(">I", 0) + b"IEND" + b"\0\0\0\0", "bad CRC"),
        (png(64, 36)[:-12], "no IEND"),
    ],
)
def test_anything_else_is_refused_naming_why(data: bytes, says: str) -> None:
    problem = png_problem(data, (64, 36))
    assert problem is not None and says in problem


def write(path: Path, mode: int = 0o600, **changes: object) -> Path:
    body = {
        "format": WORKER_FILE_FORMAT,
        "name": "gpu-box",
        "api_url": "https://stack.example:8443/",
        "token": "t",
        "redis_host": "stack.example",
        "redis_port": 6380,
        "redis_user": "worker-gpu-box",
        "redis_password": "p",
        **changes,
    }
    path.write_text(json.dumps(body))
    path.chmod(mode)
    return path


def test_a_worker_file_is_read_as_written(tmp_path: Path) -> None:
    access = WorkerAccess.from_file(write(tmp_path / "w.json"))
    assert access.api_url == "https://stack.example:8443" and access.redis_port == 6380
    assert WorkerAccess.from_file(write(tmp_path / "again.json", **json.loads(access.to_json()))) == access


@pytest.mark.parametrize(
    ("mode", "changes", "says"),
    [
        (0o644, {}, "readable by others (mode 644): chmod 600"),
        (0o600, {"format": "other/9"}, "has format 'other/9'"),
        (0o600, {"redis_port": "not a port"}, "lacks or mangles"),
    ],
)
def test_a_bad_worker_file_is_refused_naming_the_file(
    tmp_path: Path, mode: int, changes: dict[str, object], says: str
) -> None:
    path = write(tmp_path / "w.json", mode, **changes)
    with pytest.raises(RenderConfigError, match="worker file") as err:
        WorkerAccess.from_file(path)
    assert says in str(err.value) and str(path) in str(err.value)


def test_a_missing_worker_file_names_the_command_that_makes_one(tmp_path: Path) -> None:
    with pytest.raises(RenderConfigError, match="invoke worker-config"):
        WorkerAccess.from_file(tmp_path / "none.json")
