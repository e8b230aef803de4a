"""EXIF orientation for tests that author rotated files: the frame a camera stores for a given tag."""

from __future__ import annotations

from PIL import Image

# stored = INVERSE[o](upright), so that applying EXIF orientation o to ``stored`` gives ``upright``
INVERSE: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_frame(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a file tagged with ``orientation`` holds so that it shows ``upright``."""
    method = INVERSE[orientation]
    return upright if method is None else upright.transpose(method)
