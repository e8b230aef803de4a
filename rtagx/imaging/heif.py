"""HEIC/HEIF through the optional ``pillow-heif`` extra, imported only when a HEIF file shows up.

The plugin class is used directly instead of ``register_heif_opener()``, so installing the extra
changes nothing globally in Pillow. libheif applies the container's rotation and mirror boxes and
pillow-heif resets the EXIF orientation to 1 to match, so the caller's EXIF step is a no-op for HEIF.
Its ``draft()`` picks an embedded thumbnail that is a scaled copy of the image; ``decode`` asks for
one only when it is far larger than the model input (``HEIF_THUMBNAIL_MARGIN``), because libheif's
thumbnails are aliased.
"""

from __future__ import annotations

from typing import IO

from PIL import ImageFile

from rtagx.errors import DecodeError

EXTRA_HINT = "pip install 'rtagx[heif]'"


def open_heif(f: IO[bytes]) -> ImageFile.ImageFile:
    """Open (header only) a HEIF file object; raises DecodeError needs-extra / corrupt / truncated."""
    try:
        import pillow_heif
    except ImportError:
        raise DecodeError("needs-extra", f"HEIC/HEIF support is an optional extra: {EXTRA_HINT}") from None
    f.seek(0)
    try:
        return pillow_heif.HeifImageFile(f)
    except (SyntaxError, ValueError, RuntimeError, OSError, EOFError) as e:
        text = str(e) or type(e).__name__
        low = text.lower()
        if "end of data" in low or "truncated" in low or "not enough" in low or "unexpected end" in low:
            raise DecodeError("truncated", f"HEIF data ends early: {text}") from None
        if "unsupported" in low and "codec" in low:
            raise DecodeError("unsupported-format", f"HEIF with a codec libheif cannot decode here: {text}") from None
        raise DecodeError("corrupt", f"HEIF container is damaged: {text}") from None
