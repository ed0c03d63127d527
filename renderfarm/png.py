"""PNG bytes: an image's size from its header, whether bytes are one whole PNG of a given size (what the API checks
of a worker's upload), and the same image without Blender's text and time chunks."""

from __future__ import annotations

import os
import struct
import zlib
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


def png_problem(data: bytes, size: tuple[int, int]) -> str | None:
    """What is wrong with `data` as one whole PNG image of `size` (width, height), or None: the signature, an IHDR of
    that size first, every chunk complete with a right CRC, one IEND last and nothing after it. Decoding the pixels
    is left to the reader (zlib's own checks); this refuses truncated or padded uploads and images of another job."""
    if data[:8] != SIGNATURE:
        return "not a PNG (no PNG signature)"
    view = memoryview(data)  # chunks are checked in place: an image of megabytes is never copied
    pos, first = 8, True
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return f"truncated in its {kind.decode('latin-1')!r} chunk"
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            return f"bad CRC in its {kind.decode('latin-1')!r} chunk"
        if first:
            if kind != b"IHDR" or length != 13:
                return "its first chunk is not IHDR"
            width, height = struct.unpack(">II", data[pos + 8 : pos + 16])
            if (width, height) != size:
                return f"{width}x{height} pixels, the job renders {size[0]}x{size[1]}"
            first = False
        pos = end
        if kind == b"IEND":
            return None if pos == len(data) else f"{len(data) - pos} bytes after its end"
    return "truncated (no IEND chunk)"


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
