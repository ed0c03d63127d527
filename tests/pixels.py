"""Comparing renders. Cycles on this Blender (Debian's 3.4.1, CPU) is not bit-reproducible: the same
scene, seed and samples gave one of two images, 9 of 691,560 bytes apart by at most 16 levels, even
with PYTHONHASHSEED fixed, ASLR off and one thread. So "the same pixels" means: decoded image data of
the same size, at most 0.01 % of its bytes differing, none by more than 32 levels. A different seed or
scene changes far more than that (checked by `differ`)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

MAX_DIFFERING = 1e-4
MAX_LEVELS = 32


def image_data(path: Path) -> bytes:
    """The decompressed IDAT stream (filtered scanlines): pixels, without PNG metadata."""
    data, i, idat = path.read_bytes(), 8, b""
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        if data[i + 4 : i + 8] == b"IDAT":
            idat += data[i + 8 : i + 8 + n]
        i += 12 + n
    return zlib.decompress(idat)


def difference(a: Path, b: Path) -> tuple[float, int]:
    """(share of differing bytes, largest difference) between two PNGs' image data of the same size."""
    x, y = image_data(a), image_data(b)
    assert len(x) == len(y), f"{a.name} and {b.name} differ in size"
    diffs = [abs(p - q) for p, q in zip(x, y, strict=True) if p != q]
    return len(diffs) / len(x), max(diffs, default=0)


def assert_same_pixels(a: Path, b: Path) -> None:
    share, levels = difference(a, b)
    assert share <= MAX_DIFFERING and levels <= MAX_LEVELS, (
        f"{a.name} vs {b.name}: {share:.4%} of bytes differ, by up to {levels} levels"
    )


def differ(a: Path, b: Path) -> bool:
    share, _ = difference(a, b)
    return share > 100 * MAX_DIFFERING
