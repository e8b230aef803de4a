"""Camera RAW through the optional ``rawpy`` (LibRaw) extra, imported only when a RAW file shows up.

Fast path: the preview JPEG every camera embeds, decoded with JPEG draft mode like any other JPEG,
when its shorter side is large enough for the model (it is the camera's own rendering of the shot,
so colours match what the photographer saw). Otherwise: a half-size demosaic with the camera's white
balance (no interpolation, four times fewer pixels than a full one). LibRaw's ``flip`` gives the
orientation for the preview; the demosaiced image comes out already upright.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING

from PIL import Image

from rtagx.errors import DecodeError

if TYPE_CHECKING:
    from rtagx.imaging.decode import PreprocessSpec, _Source

EXTRA_HINT = "pip install 'rtagx[raw]'"

# LibRaw's sizes.flip -> EXIF orientation
_FLIP_TO_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}

#: Without a model size (the full-resolution reference), a preview is used when it is at least
#: this fraction of the sensor's width.
FULL_PREVIEW_FRACTION = 0.5


def decode_raw(path: Path, f: IO[bytes], spec: PreprocessSpec | None, max_megapixels: float) -> _Source:
    """Decode a RAW file: embedded preview when big enough, else half-size demosaic."""
    try:
        import rawpy
    except ImportError:
        raise DecodeError("needs-extra", f"camera RAW support is an optional extra: {EXTRA_HINT}") from None
    from rtagx.imaging import decode as d

    try:
        raw = rawpy.imread(os.fspath(path))
    except Exception as e:
        raise _map_rawpy_error(e, rawpy) from None
    with raw:
        try:
            sizes = raw.sizes
            d._check_megapixels((sizes.raw_width, sizes.raw_height), max_megapixels, "RAW")
            orientation = _FLIP_TO_ORIENTATION.get(int(sizes.flip), 1)
            preview = _preview(raw, rawpy)
            if preview is not None and _preview_is_enough(preview, sizes, spec, orientation):
                if isinstance(preview, bytes):
                    bio = io.BytesIO(preview)
                    im = d._pil_open(bio, "JPEG")
                    return d._load(im, "JPEG", bio, spec, max_megapixels, orientation=orientation)
                return d._Source(
                    preview, preview.size, (float(preview.width), float(preview.height)), orientation, None, False
                )
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        except DecodeError:
            raise
        except Exception as e:
            raise _map_rawpy_error(e, rawpy) from None
    im = Image.fromarray(rgb, "RGB")
    return d._Source(im, im.size, (float(im.width), float(im.height)), 1, None, False)


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
    from rtagx.imaging.decode import _plan

    w, h = size
    upright = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    rw, rh = _plan(upright[0], upright[1], spec).resized
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
