"""The renders folder the API serves images from: an image stored in it atomically, and a tiled job's tiles stitched
into its one image (renderfarm.tiles).

The folder belongs to the API (its container mounts it); the stack's own host worker writes into it too, which is
why both go through `store_image`: a reader sees a whole file or none, readable by the API's user."""

from __future__ import annotations

import io
import logging
import os
import uuid
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from renderfarm.errors import RenderfarmError, StorageUnavailable

log = logging.getLogger("renderfarm.images")
# zlib level of a stitched PNG: Blender's own PNGs use 15 % (about level 2); 6 is zlib's default, a third smaller than
# level 2 on a render for about twice the time (tenths of a second at HD): the image is downloaded more than made.
STITCH_COMPRESSION = 6


def store_image(folder: Path, name: str, data: bytes) -> None:
    """Write the image as `folder/name` atomically: a reader sees the whole file or none (temp file, fsync, rename)."""
    tmp = folder / f".{name}.{uuid.uuid4().hex}.part"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / name)
    except OSError as exc:
        # The folder's path stays in the log: an answer names no path of the server's.
        log.error("cannot store image %s in %s: %s", name, folder, exc)
        raise StorageUnavailable(f"the API cannot store images now ({exc.strerror}); try again shortly") from exc
    finally:
        tmp.unlink(missing_ok=True)


def stitch(folder: Path, parts: list[str], name: str, size: tuple[int, int]) -> None:
    """The images `parts` (files in `folder`, bands of one image from top to bottom) as one PNG `folder/name` of
    `size` (width, height); RenderfarmError naming the part when one is missing, not a PNG, or does not fit."""
    width, height = size
    whole = Image.new("RGB", (width, height))
    top = 0
    for part in parts:
        try:
            with Image.open(folder / part) as tile:
                band = tile.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise RenderfarmError(f"tile image {part} cannot be read: {exc}") from exc
        if band.width != width or top + band.height > height:
            got = f"{band.width}x{band.height}"
            raise RenderfarmError(f"tile image {part} is {got}: it does not fit a {width}x{height} image")
        whole.paste(band, (0, top))
        top += band.height
    if top != height:
        raise RenderfarmError(f"the tiles make {top} rows of the {height} the image has")
    out = io.BytesIO()
    whole.save(out, format="PNG", compress_level=STITCH_COMPRESSION)
    store_image(folder, name, out.getvalue())
