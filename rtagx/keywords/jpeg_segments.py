"""Split a JPEG into its header segments and the untouched rest, and splice new XMP/IPTC in.

Every segment we do not own (EXIF with its maker notes, ICC, JFIF, quantization and Huffman tables,
...) is kept as the exact bytes it was, and everything from the start-of-scan marker on (the scan
data, later tables, trailers) is copied untouched. Only the main XMP APP1 and the Photoshop APP13
are rebuilt.

A multi-picture file (MPF APP2: camera MPO previews, phone gain maps) stores where its later images
start relative to the MPF header, so a header that grows or shrinks after that segment moves them:
:func:`fix_mpf` shifts those offsets by the change (as exiftool does) and puts back any that an
earlier writer left pointing away from a JPEG start.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtagx.keywords.tiff_ifd import ByteOrder

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXT_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
EXIF_HEADER = b"Exif\x00\x00"
PS_HEADER = b"Photoshop 3.0\x00"
MPF_HEADER = b"MPF\x00"
_MP_ENTRY_TAG = 0xB002
MAX_PAYLOAD = 65533  # segment length field counts itself: 65535 - 2
MAX_XMP_PACKET = MAX_PAYLOAD - len(XMP_HEADER)
_EXT_CHUNK = MAX_PAYLOAD - len(XMP_EXT_HEADER) - 32 - 8  # GUID, full length, offset
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


class JpegFormatError(ValueError):
    """Not a JPEG, or its header segments are cut short."""


@dataclass
class Segment:
    marker: int
    raw: bytes  # exact bytes: fill bytes, marker, length and payload

    @property
    def payload(self) -> bytes:
        start = self.raw.index(bytes((0xFF, self.marker)), 0) + 2
        return self.raw[start + 2 :] if self.marker not in _STANDALONE else b""

    def is_xmp(self) -> bool:
        return self.marker == 0xE1 and self.payload.startswith(XMP_HEADER)

    def is_xmp_extension(self) -> bool:
        return self.marker == 0xE1 and self.payload.startswith(XMP_EXT_HEADER)

    def is_exif(self) -> bool:
        return self.marker == 0xE1 and self.payload.startswith(EXIF_HEADER)

    def is_photoshop(self) -> bool:
        return self.marker == 0xED and self.payload.startswith(PS_HEADER)

    def is_mpf(self) -> bool:
        return self.marker == 0xE2 and self.payload.startswith(MPF_HEADER)


@dataclass
class JpegParts:
    segments: list[Segment]
    tail: bytes  # from the SOS marker to the end of the file, never touched

    def to_bytes(self) -> bytes:
        return b"\xff\xd8" + b"".join(s.raw for s in self.segments) + self.tail

    def xmp_packet(self) -> bytes | None:
        seg = next((s for s in self.segments if s.is_xmp()), None)
        return seg.payload[len(XMP_HEADER) :] if seg else None

    def xmp_extension(self, guid: str) -> bytes | None:
        """The extended XMP packet with this GUID, joined from its chunks; None when absent or
        incomplete (readers then ignore it, and so do we)."""
        chunks: dict[int, bytes] = {}
        total = None
        for seg in self.segments:
            if not seg.is_xmp_extension():
                continue
            body = seg.payload[len(XMP_EXT_HEADER) :]
            if len(body) < 40 or body[:32].decode("ascii", "replace") != guid:
                continue
            total = int.from_bytes(body[32:36], "big")
            chunks[int.from_bytes(body[36:40], "big")] = body[40:]
        data = b"".join(chunks[k] for k in sorted(chunks))
        return data if total is not None and len(data) == total else None

    def photoshop_irb(self) -> bytes | None:
        """The Photoshop resource block, joined across APP13 segments (large blocks are split)."""
        segs = [s for s in self.segments if s.is_photoshop()]
        if not segs:
            return None
        return b"".join(s.payload[len(PS_HEADER) :] for s in segs)

    def exif_payloads(self) -> list[bytes]:
        return [s.payload for s in self.segments if s.is_exif()]


def parse(data: bytes) -> JpegParts:
    if not data.startswith(b"\xff\xd8"):
        raise JpegFormatError("no JPEG start-of-image marker")
    segments: list[Segment] = []
    i, n = 2, len(data)
    while True:
        start = i
        if i >= n:
            raise JpegFormatError("file ends before the image data")
        if data[i] != 0xFF:
            raise JpegFormatError(f"marker expected at offset {i}")
        while i < n and data[i] == 0xFF:
            i += 1
        if i >= n:
            raise JpegFormatError("file ends inside a marker")
        marker = data[i]
        i += 1
        if marker == 0xDA:
            return JpegParts(segments, data[start:])
        if marker == 0xD9:
            raise JpegFormatError("end-of-image before any image data")
        if marker in _STANDALONE:
            segments.append(Segment(marker, data[start:i]))
            continue
        if i + 2 > n:
            raise JpegFormatError("segment length cut short")
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2 or i + length > n:
            raise JpegFormatError(f"segment 0x{marker:02X} at offset {start} runs past the end of the file")
        i += length
        segments.append(Segment(marker, data[start:i]))


def make_segment(marker: int, payload: bytes) -> Segment:
    if len(payload) > MAX_PAYLOAD:
        raise JpegFormatError(f"segment payload of {len(payload)} bytes is too large")
    return Segment(marker, bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload)


def photoshop_segments(irb: bytes) -> list[Segment]:
    room = MAX_PAYLOAD - len(PS_HEADER)
    chunks = [irb[i : i + room] for i in range(0, len(irb), room)] or [b""]
    return [make_segment(0xED, PS_HEADER + c) for c in chunks]


def xmp_extension_segments(extended: bytes, guid: str) -> list[Segment]:
    """Extended XMP as APP1 segments: each holds the GUID, the full length and its chunk's offset."""
    head = XMP_EXT_HEADER + guid.encode("ascii") + len(extended).to_bytes(4, "big")
    return [
        make_segment(0xE1, head + k.to_bytes(4, "big") + extended[k : k + _EXT_CHUNK])
        for k in range(0, len(extended), _EXT_CHUNK)
    ]


def splice(
    parts: JpegParts,
    *,
    xmp_packet: bytes | None = None,
    xmp_extension: list[Segment] | None = None,
    irb: bytes | None = None,
    exif: bytes | None = None,
) -> JpegParts:
    """A copy with the main XMP and/or the Photoshop block replaced (or inserted), and/or the EXIF
    payload replaced (never inserted); None keeps it, ``b""`` removes the XMP or Photoshop block. A new main XMP packet replaces every extended
    XMP segment with ``xmp_extension`` (placed right after it)."""
    segs = list(parts.segments)
    if xmp_packet == b"":  # the packet goes, with any extension
        segs = [s for s in segs if not (s.is_xmp() or s.is_xmp_extension())]
    elif xmp_packet is not None:
        segs = [s for s in segs if not s.is_xmp_extension()]
    if exif is not None:
        idx = next((k for k, s in enumerate(segs) if s.is_exif()), None)
        if idx is not None:
            segs[idx] = make_segment(0xE1, exif)
    if xmp_packet:
        new = make_segment(0xE1, XMP_HEADER + xmp_packet)
        idx = next((k for k, s in enumerate(segs) if s.is_xmp()), None)
        if idx is not None:
            segs[idx] = new
        else:
            idx = _after_leading(segs, {0xE0, 0xE1})
            segs.insert(idx, new)
        segs[idx + 1 : idx + 1] = xmp_extension or []
    if irb is not None:
        new_segs = photoshop_segments(irb) if irb else []  # b"": the block goes
        idxs = [k for k, s in enumerate(segs) if s.is_photoshop()]
        if idxs:
            first = idxs[0]
            segs = [s for k, s in enumerate(segs) if k not in idxs[1:]]
            segs[first : first + 1] = new_segs
        else:
            pos = _after_leading(segs, set(range(0xE0, 0xF0)))
            segs[pos:pos] = new_segs
    return JpegParts(segs, parts.tail)


def _after_leading(segs: list[Segment], markers: set[int]) -> int:
    """Index just after the leading run of segments with these markers (where writers put APPn)."""
    k = 0
    while k < len(segs) and segs[k].marker in markers:
        k += 1
    return k


# ------------------------------------------------------------------ multi-picture (MPF)


def _mpf_base(parts: JpegParts) -> tuple[int, Segment] | None:
    """File offset of the MPF header (the byte order mark its offsets count from), and its segment."""
    pos = 2
    for seg in parts.segments:
        if seg.is_mpf():
            return pos + len(seg.raw) - len(seg.payload) + len(MPF_HEADER), seg
        pos += len(seg.raw)
    return None


def _mp_entry_offsets(tiff: bytes) -> tuple[ByteOrder, list[int]]:
    """Byte order and the positions (within ``tiff``) of each MP entry's image-offset field."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return "little", []
    order: ByteOrder = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return order, []
    for k in range(int.from_bytes(tiff[ifd : ifd + 2], order)):
        e = ifd + 2 + 12 * k
        if e + 12 > len(tiff):
            break
        if int.from_bytes(tiff[e : e + 2], order) == _MP_ENTRY_TAG:
            count = int.from_bytes(tiff[e + 4 : e + 8], order)
            start = int.from_bytes(tiff[e + 8 : e + 12], order)
            return order, [start + 16 * i + 8 for i in range(count // 16) if start + 16 * i + 12 <= len(tiff)]
    return order, []


def fix_mpf(old: JpegParts, new: JpegParts, data: bytes) -> bytes:
    """``data`` (the bytes of ``new``) with the MPF image offsets moved by what changed between the
    MPF header and the scan data, and any offset that does not land on a JPEG start pointed at the
    nearest one after the primary image's scan begins."""
    before, after = _mpf_base(old), _mpf_base(new)
    if before is None or after is None:
        return data
    old_base, _ = before
    new_base, seg = after
    shift = (_header_size(new) - new_base) - (_header_size(old) - old_base)
    tiff_start = new_base
    tiff = bytearray(data[tiff_start : tiff_start + len(seg.payload) - len(MPF_HEADER)])
    order, fields = _mp_entry_offsets(bytes(tiff))
    tail_start = len(data) - len(new.tail)
    starts: list[int] | None = None  # JPEG starts after the primary image's header, found when needed
    changed = False
    for f in fields:
        offset = int.from_bytes(tiff[f : f + 4], order)
        if offset == 0:
            continue  # the primary image
        moved = offset + shift
        if not data.startswith(b"\xff\xd8", new_base + moved):
            starts = _find_all(data, b"\xff\xd8\xff", tail_start) if starts is None else starts
            if starts:
                expected = new_base + moved
                moved = min(starts, key=lambda p: abs(p - expected)) - new_base
        if moved != offset and 0 < moved < 1 << 32:
            tiff[f : f + 4] = moved.to_bytes(4, order)
            changed = True
    if not changed:
        return data
    return data[:tiff_start] + bytes(tiff) + data[tiff_start + len(tiff) :]


def _header_size(parts: JpegParts) -> int:
    return 2 + sum(len(s.raw) for s in parts.segments)


def _find_all(data: bytes, needle: bytes, start: int) -> list[int]:
    out, i = [], data.find(needle, start)
    while i >= 0:
        out.append(i)
        i = data.find(needle, i + 1)
    return out
