"""Content fingerprints: a hash of what the decoder sees, and of nothing a keyword edit touches.

A vector is reused for another path (a copy, a rename) or kept after another program edited a file
only when the fingerprints are equal, so the fingerprint must identify the picture, not a sample of
the bytes. For the containers rtagx writes keywords into, the hash covers the image data and the
few metadata that change the decoded pixels, and skips every other metadata block:

* JPEG: every marker segment except APPn/COM, the scans and everything after them; of the APPn
  segments the ICC profile (APP2), Adobe's colour transform (APP14) and the EXIF orientation value
  (rtagx decodes upright and in sRGB). XMP, extended XMP, IPTC (APP13), comments are skipped.
* PNG: the critical chunks (IHDR, PLTE, IDAT, IEND), transparency and colour chunks, the animation
  chunks, and the orientation of an eXIf chunk; text chunks (XMP lives in iTXt) are skipped.
* TIFF: every tag of every page except the metadata tags (XMP, IPTC, Photoshop, EXIF/GPS pointers,
  descriptions, XP* keywords); strip and tile data by content, not by offset, so a writer that moves
  the strips keeps the fingerprint.
* WebP: the image, alpha, animation and ICC chunks and the EXIF orientation; the XMP chunk and the
  VP8X header (a writer adds it to hold XMP; what it says otherwise, those chunks say) are skipped.

Any other format, and a file whose structure does not parse, is hashed whole. SHA-256 over the data,
kept to 128 bits: CPUs with SHA extensions (x86 since Ice Lake/Zen, ARMv8) hash ~1.4 GB/s, 3x
BLAKE2b's ~0.5 GB/s measured on the same core (bench/cache_scale.py). The prefix names the scheme,
so hashes of two schemes never compare equal.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import BinaryIO, Protocol

from rtagx.errors import DecodeError
from rtagx.imaging.formats import SNIFF_BYTES, identify

_CHUNK = 1 << 20
_HEX_DIGITS = 32  # 128 bits

# TIFF tags that carry metadata, not pixels: descriptions, dates, XMP, IPTC, Photoshop, EXIF/GPS/
# interoperability pointers, the Windows XP* fields, ratings, print settings.
_TIFF_METADATA_TAGS = frozenset(
    {270, 305, 306, 315, 316, 700, 18246, 18249, 33432, 33723, 34377, 34665, 34853, 40965, 50341}
    | set(range(0x9C9B, 0x9CA0))
)
# Tags whose values point at data: hash the data they point at (lengths from the paired tag).
_TIFF_DATA_TAGS = {273: 279, 324: 325, 513: 514}  # strips, tiles, old-style JPEG
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_PNG_KEEP = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"acTL", b"fcTL"}
    | {b"fdAT"}
)
_WEBP_KEEP = frozenset({b"VP8 ", b"VP8L", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


class _Malformed(Exception):
    """The container does not parse: fall back to hashing the whole file."""


def fingerprint_file(path: str | os.PathLike[str]) -> str:
    """The content fingerprint of one file (see module docstring)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
        try:
            kind = identify(head, ext)
        except DecodeError:
            kind = None
        hasher = {"JPEG": _jpeg, "PNG": _png, "TIFF": _tiff, "WEBP": _webp}.get(kind or "")
        if hasher is not None:
            h = hashlib.sha256()
            try:
                f.seek(0)
                hasher(f, h)
                return f"{str(kind).lower()}:{h.hexdigest()[:_HEX_DIGITS]}"
            except (_Malformed, struct.error, ValueError):
                pass
        f.seek(0)
        h = hashlib.sha256()
        _rest(f, h)
        return f"file:{h.hexdigest()[:_HEX_DIGITS]}"


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _Malformed("truncated")
    return data


def _rest(f: BinaryIO, h: _Hasher) -> None:
    while chunk := f.read(_CHUNK):
        h.update(chunk)


def _copy(f: BinaryIO, h: _Hasher, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, _CHUNK))
        if not chunk:
            raise _Malformed("truncated")
        h.update(chunk)
        n -= len(chunk)


def exif_orientation(tiff: bytes) -> int:
    """The Orientation (0x0112) of IFD0 of a TIFF-structured EXIF block, 0 when absent."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 0
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 0
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(tiff):
            return 0
        tag, typ = struct.unpack_from(order + "HH", tiff, at)
        if tag == 0x0112 and typ == 3:
            return int(struct.unpack_from(order + "H", tiff, at + 8)[0])
    return 0


def _turned(orientation: int) -> bytes:
    """What the orientation adds to the hash: nothing when the picture is shown as stored (no tag,
    or 1), so that a program adding an EXIF block for other fields changes nothing."""
    return b"" if orientation in (0, 1) else b"orientation%d" % orientation


def _jpeg(f: BinaryIO, h: _Hasher) -> None:
    if _read(f, 2) != b"\xff\xd8":
        raise _Malformed("no SOI")
    while True:
        byte = _read(f, 1)
        if byte != b"\xff":
            raise _Malformed("marker expected")
        marker = _read(f, 1)[0]
        while marker == 0xFF:  # fill bytes
            marker = _read(f, 1)[0]
        if marker == 0xD9:  # EOI before any scan
            raise _Malformed("no scan")
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            h.update(bytes((0xFF, marker)))
            continue
        length = struct.unpack(">H", _read(f, 2))[0]
        if length < 2:
            raise _Malformed("bad segment length")
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            if marker == 0xE1:
                body = _read(f, length - 2)
                if body.startswith(b"Exif\x00\x00"):
                    h.update(_turned(exif_orientation(body[6:])))
            elif marker in (0xE2, 0xEE):
                body = _read(f, length - 2)
                if marker == 0xEE or body.startswith(b"ICC_PROFILE\x00"):
                    h.update(bytes((0xFF, marker)) + body)
            else:
                f.seek(length - 2, os.SEEK_CUR)
            continue
        h.update(bytes((0xFF, marker)) + struct.pack(">H", length))
        _copy(f, h, length - 2)
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data, further scans, EOI
            _rest(f, h)
            return


def _png(f: BinaryIO, h: _Hasher) -> None:
    _read(f, 8)
    while True:
        header = f.read(8)
        if not header:
            raise _Malformed("no IEND")
        if len(header) != 8:
            raise _Malformed("truncated chunk")
        length, kind = struct.unpack(">I4s", header)
        if kind in _PNG_KEEP:
            h.update(kind)
            _copy(f, h, length)
        elif kind == b"eXIf":
            h.update(_turned(exif_orientation(_read(f, length))))
        else:
            f.seek(length, os.SEEK_CUR)
        _read(f, 4)  # CRC
        if kind == b"IEND":
            return


def _webp(f: BinaryIO, h: _Hasher) -> None:
    riff = _read(f, 12)
    end = 8 + struct.unpack_from("<I", riff, 4)[0]
    while f.tell() + 8 <= end:
        kind, length = struct.unpack("<4sI", _read(f, 8))
        padded = length + (length & 1)
        if kind in _WEBP_KEEP:
            h.update(kind + struct.pack("<I", length))
            _copy(f, h, padded)
        elif kind == b"EXIF":
            body = _read(f, padded)
            h.update(_turned(exif_orientation(body[6:] if body.startswith(b"Exif\x00\x00") else body)))
        else:
            f.seek(padded, os.SEEK_CUR)


def _tiff(f: BinaryIO, h: _Hasher) -> None:
    header = _read(f, 8)
    if header[:4] not in (b"II*\x00", b"MM\x00*"):
        raise _Malformed("not classic TIFF")  # BigTIFF: hashed whole
    order = "<" if header[:2] == b"II" else ">"
    size = os.fstat(f.fileno()).st_size
    h.update(header[:4])
    ifd = struct.unpack_from(order + "I", header, 4)[0]
    seen: set[int] = set()
    while ifd and ifd not in seen and len(seen) < 256:
        seen.add(ifd)
        f.seek(ifd)
        (count,) = struct.unpack(order + "H", _read(f, 2))
        raw = _read(f, 12 * count)
        (next_ifd,) = struct.unpack(order + "I", _read(f, 4))
        entries: dict[int, tuple[int, int, bytes]] = {}
        for i in range(count):
            tag, typ, n = struct.unpack_from(order + "HHI", raw, 12 * i)
            if tag in _TIFF_METADATA_TAGS:
                continue
            width = _TIFF_TYPE_SIZES.get(typ)
            if width is None:
                raise _Malformed("unknown TIFF type")
            nbytes = width * n
            if nbytes > size:
                raise _Malformed("a tag larger than the file")
            if nbytes <= 4:
                value = raw[12 * i + 8 : 12 * i + 8 + nbytes]
            else:
                (offset,) = struct.unpack_from(order + "I", raw, 12 * i + 8)
                pos = f.tell()
                f.seek(offset)
                value = _read(f, nbytes)
                f.seek(pos)
            if tag == 274 and typ == 3 and n == 1 and struct.unpack(order + "H", value[:2])[0] == 1:
                continue  # Orientation 1 is the same picture as no orientation
            entries[tag] = (typ, n, value)
        h.update(b"IFD")
        for tag in sorted(entries):
            typ, n, value = entries[tag]
            if tag in _TIFF_DATA_TAGS:
                _tiff_data(f, h, order, entries, tag)
            elif tag not in _TIFF_DATA_TAGS.values():
                h.update(struct.pack("<HHI", tag, typ, n) + value)
        ifd = next_ifd


def _tiff_values(order: str, typ: int, n: int, value: bytes) -> tuple[int, ...]:
    if typ == 3:
        return struct.unpack(f"{order}{n}H", value)
    if typ in (4, 13):
        return struct.unpack(f"{order}{n}I", value)
    raise _Malformed("offsets of an unexpected type")


def _tiff_data(f: BinaryIO, h: _Hasher, order: str, entries: dict[int, tuple[int, int, bytes]], tag: int) -> None:
    """Hash the strips (tiles, JPEG stream) a data tag points at, by content."""
    offsets = _tiff_values(order, *entries[tag])
    length_tag = _TIFF_DATA_TAGS[tag]
    if length_tag not in entries:
        raise _Malformed("data without lengths")
    lengths = _tiff_values(order, *entries[length_tag])
    if len(lengths) != len(offsets):
        raise _Malformed("offsets and lengths differ in count")
    h.update(struct.pack("<HI", tag, len(offsets)))
    for offset, length in zip(offsets, lengths):
        f.seek(offset)
        h.update(struct.pack("<I", length))
        _copy(f, h, length)
