"""JPEG XL through the optional ``pillow-jxl-plugin`` extra, imported only when a JXL file shows up.

The plugin decodes the whole file when it opens it (there is no header-only open and no reduced
decode), so a JPEG XL file costs a full decode. libjxl applies the codestream's orientation, so the
pixels come out upright and an EXIF box's orientation is not applied again (the JPEG XL spec makes
the codestream's authoritative). A JPEG recompressed losslessly into JPEG XL is handed back as
that JPEG, whose own EXIF orientation still applies: ``exif_orientation_applies`` tells them apart.
"""

from __future__ import annotations

from typing import IO

from PIL import ImageFile

from rtagx.errors import DecodeError

EXTRA_HINT = "pip install 'rtagx[jxl]'"


def open_jxl(f: IO[bytes]) -> ImageFile.ImageFile:
    """Open (and, the plugin being what it is, decode) a JPEG XL file object."""
    try:
        from pillow_jxl import JpegXLImagePlugin
    except ImportError:
        raise DecodeError("needs-extra", f"JPEG XL support is an optional extra: {EXTRA_HINT}") from None
    f.seek(0)
    try:
        return JpegXLImagePlugin.JXLImageFile(f)
    except MemoryError:
        raise DecodeError("too-large", "not enough memory to decode this JPEG XL") from None
    except (SyntaxError, ValueError, RuntimeError, OSError, EOFError, TypeError) as e:
        text = " ".join((str(e) or type(e).__name__).split())
        raise DecodeError("corrupt", f"JPEG XL data cannot be decoded: {text[:200]}") from None


def exif_orientation_applies(im: ImageFile.ImageFile) -> bool:
    """True for a JPEG XL that holds a recompressed JPEG (its pixels are the JPEG's stored frame)."""
    return bool(getattr(im, "jpeg", False))
