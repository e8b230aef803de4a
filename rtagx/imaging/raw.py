"""Camera RAW through the optional ``rawpy`` (LibRaw) extra, imported only when a RAW file shows up.

Fast path: the preview JPEG every camera embeds, decoded with JPEG draft mode like any other JPEG,
when its shorter side is large enough for the model (it is the camera's own rendering of the shot,
so colours match what the photographer saw). Otherwise: a half-size demosaic with the camera's white
balance (no interpolation, four times fewer pixels than a full one). LibRaw's ``flip`` gives the
orientation for the preview; the demosaiced image comes out already upright.

This module only gets pixels (or the preview's JPEG bytes) out of LibRaw; ``decode`` turns them
into model input like any other image, so the preview JPEG goes through the same draft-mode path.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from rtagx.errors import DecodeError
from rtagx.imaging.geometry import PreprocessSpec, check_megapixels, plan, swaps_axes

EXTRA_HINT = "pip install 'rtagx[raw]'"

#: LibRaw's ``sizes.flip`` -> EXIF orientation. ``flip`` is dcraw's bit field (4: swap axes, then
#: 2: reverse rows, 1: reverse columns), set from EXIF by ``flip = "50132467"[orientation & 7]``;
#: this is that table inverted, all eight entries (the mirrored ones included).
FLIP_TO_ORIENTATION: dict[int, int] = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


@dataclass(frozen=True)
class RawPicture:
    """What a RAW file yields: the preview's JPEG bytes or decoded pixels, and the orientation still to apply."""

    jpeg: bytes | None
    image: Image.Image | None
    orientation: int


#: Without a model size (the full-resolution reference), a preview is used when it is at least
#: this fraction of the sensor's width.
FULL_PREVIEW_FRACTION = 0.5


def decode_raw(path: Path, spec: PreprocessSpec | None, max_megapixels: float) -> RawPicture:
    """Decode a RAW file: embedded preview when big enough, else half-size demosaic (already upright)."""
    try:
        import rawpy
    except ImportError:
        raise DecodeError("needs-extra", f"camera RAW support is an optional extra: {EXTRA_HINT}") from None

    try:
        raw = rawpy.imread(os.fspath(path))
    except Exception as e:
        raise _map_rawpy_error(e, rawpy) from None
    with raw:
        try:
            sizes = raw.sizes
            check_megapixels((sizes.raw_width, sizes.raw_height), max_megapixels, "RAW")
            orientation = FLIP_TO_ORIENTATION.get(int(sizes.flip), 1)
            preview = _preview(raw, rawpy)
            if preview is not None and _preview_is_enough(preview, sizes, spec, orientation):
                if isinstance(preview, bytes):
                    return RawPicture(preview, None, orientation)
                return RawPicture(None, preview, orientation)
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        except DecodeError:
            raise
        except Exception as e:
            raise _map_rawpy_error(e, rawpy) from None
    return RawPicture(None, Image.fromarray(rgb, "RGB"), 1)


def _preview(raw, rawpy) -> bytes | Image.Image | None:
    """The embedded preview as JPEG bytes or an RGB image; None when there is none LibRaw can give."""
    try:
        thumb = raw.extract_thumb()
    except Exception:
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        return bytes(thumb.data)
    if thumb.format == rawpy.ThumbFormat.BITMAP and getattr(thumb.data, "ndim", 0) == 3:
        return Image.fromarray(thumb.data, "RGB")
    return None


def _preview_size(preview: bytes | Image.Image) -> tuple[int, int] | None:
    if isinstance(preview, Image.Image):
        return preview.size
    try:
        with Image.open(io.BytesIO(preview), formats=["JPEG"]) as im:
            return im.size
    except Exception:
        return None


def _preview_is_enough(preview: bytes | Image.Image, sizes, spec: PreprocessSpec | None, orientation: int) -> bool:
    size = _preview_size(preview)
    if size is None:
        return False
    if spec is None:
        return max(size) >= FULL_PREVIEW_FRACTION * max(sizes.width, sizes.height, 1)
    w, h = size
    upright = (h, w) if swaps_axes(orientation) else (w, h)
    rw, rh = plan(upright[0], upright[1], spec).resized
    return upright[0] >= rw and upright[1] >= rh


def _map_rawpy_error(e: BaseException, rawpy) -> DecodeError:
    name = type(e).__name__
    text = f"{name}: {e}" if str(e) else name
    if isinstance(e, DecodeError):
        return e
    if isinstance(e, PermissionError):
        return DecodeError("permission-denied", f"cannot open for reading: {e.strerror}")
    if isinstance(e, FileNotFoundError):
        return DecodeError("missing", "the file vanished before it could be read")
    if isinstance(e, getattr(rawpy, "LibRawFileUnsupportedError", ())):
        return DecodeError("unsupported-format", f"LibRaw does not recognise this RAW file ({text})")
    if isinstance(e, (getattr(rawpy, "LibRawTooBigError", ()), MemoryError)):
        return DecodeError("too-large", f"RAW too large to decode ({text})")
    if isinstance(e, getattr(rawpy, "LibRawIOError", ())) or "eof" in text.lower():
        return DecodeError("truncated", f"RAW data ends early or cannot be read ({text})")
    return DecodeError("corrupt", f"RAW data is damaged ({text})")
