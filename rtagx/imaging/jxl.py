"""JPEG XL through the optional ``pillow-jxl-plugin`` extra, imported only when a JXL file shows up.

The plugin decodes the whole file when it opens it (there is no header-only open and no reduced
decode), so a JPEG XL file costs a full decode, and the megapixel guard reads the size from the
codestream's own header first (``header_size``). libjxl applies the codestream's orientation, so the
pixels come out upright and an EXIF box's orientation is not applied again (the JPEG XL spec makes
the codestream's authoritative). A JPEG recompressed losslessly into JPEG XL is handed back as
that JPEG, whose own EXIF orientation still applies: ``exif_orientation_applies`` tells them apart.
"""

from __future__ import annotations

from typing import IO

from PIL import ImageFile

from rtagx.errors import DecodeError

EXTRA_HINT = "pip install 'rtagx[jxl]'"


#: SizeHeader width = height * ratio for ``ratio`` 1-7 (JPEG XL, ISO/IEC 18181-1, table D.2).
_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the codestream's SizeHeader, bare or in a container; None if not found.

    Read before anything is decoded, because the plugin decodes the whole image as soon as it
    opens it: the megapixel guard must come first.
    """
    code = _codestream(data)
    if code is None or code[:2] != b"\xff\x0a":
        return None
    bits = _Bits(code[2:34])
    try:
        div8 = bits.read(1)
        height = (1 + bits.read(5)) * 8 if div8 else 1 + bits.u32()
        ratio = bits.read(3)
        if ratio:
            num, den = _RATIOS[ratio]
            return height * num // den, height
        return ((1 + bits.read(5)) * 8 if div8 else 1 + bits.u32()), height
    except IndexError:
        return None


def _codestream(data: bytes) -> bytes | None:
    """The codestream's first bytes: the data itself, or the payload of the jxlc box or of the
    jxlp boxes (a codestream in parts; the first part can be just a few bytes) joined in order."""
    if data[:2] == b"\xff\x0a":
        return data[:64]
    pos, parts = 0, b""
    while pos + 8 <= len(data) and len(parts) < 64:
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        head = 8
        if size == 1:
            size, head = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        end = len(data) if size == 0 else pos + size  # 0: the box runs to the end of the file
        if kind == b"jxlc":
            return data[pos + head : min(end, pos + head + 64)]
        if kind == b"jxlp":
            parts += data[pos + head + 4 : end]  # after the part's 4-byte index
        if size == 0 or size < head:
            break
        pos = end
    return parts[:64] or None


class _Bits:
    """LSB-first bit reader, as JPEG XL headers are written."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "little")
        self.left = len(data) * 8

    def read(self, n: int) -> int:
        if n > self.left:
            raise IndexError("header ends early")
        out = self.value & ((1 << n) - 1)
        self.value >>= n
        self.left -= n
        return out

    def u32(self) -> int:
        """SizeHeader's U32(Bits(9), Bits(13), Bits(18), Bits(30)): a 2-bit selector, then the value."""
        return self.read((9, 13, 18, 30)[self.read(2)])


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
    except BaseException as e:  # the Rust decoder's panics are BaseExceptions (pyo3's PanicException)
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit
        text = " ".join((str(e) or type(e).__name__).split())
        raise DecodeError("corrupt", f"JPEG XL data cannot be decoded: {text[:200]}") from None


def exif_orientation_applies(im: ImageFile.ImageFile) -> bool:
    """True for a JPEG XL that holds a recompressed JPEG (its pixels are the JPEG's stored frame)."""
    return bool(getattr(im, "jpeg", False))
