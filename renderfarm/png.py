"""PNG bytes: an image's size from its header, and the same image without Blender's text and time chunks."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from renderfarm.errors import RenderfarmError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Text chunks Blender fills with render times: dropped so the same scene and seed give the same bytes.
VOLATILE_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"tIME"})


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; RenderfarmError if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != SIGNATURE or head[12:16] != b"IHDR":
        raise RenderfarmError(f"not a PNG image: {path}")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def strip_png_text(path: Path) -> None:
    """Rewrite the PNG at path without its text and time chunks (Blender stores render timings there)."""
    data = path.read_bytes()
    kept = [data[:8]]
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise RenderfarmError(f"truncated PNG chunk {kind!r} in {path}")
        if kind not in VOLATILE_CHUNKS:
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    with open(path, "wb") as f:
        f.write(b"".join(kept))
        f.flush()
        os.fsync(f.fileno())
