"""Read and patch single tags of a TIFF structure's first IFD (a TIFF file, or a JPEG's EXIF block).

Why by hand: exiv2 cannot keep a TIFF's Photoshop IPTC digest current and copies IPTC into the
Photoshop block, and rewriting a JPEG's EXIF through exiv2 can damage maker notes. These helpers
change one tag's value and leave every other byte where it was: a value that fits is written in
place, a longer one is appended (only in an EXIF block, whose end is ours to extend).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

XP_KEYWORDS = 0x9C9E
IPTC_NAA = 0x83BB
PHOTOSHOP_IRB = 0x8649
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}

Reader = Callable[[int, int], bytes]
ByteOrder = Literal["little", "big"]


@dataclass(frozen=True)
class Entry:
    tag: int
    type: int
    count: int
    entry_pos: int  # where the 12-byte directory entry starts
    value_pos: int  # where the value's bytes start (inside the entry when they fit in 4 bytes)

    @property
    def size(self) -> int:
        return self.count * _TYPE_SIZES.get(self.type, 1)


def read_ifd0(read: Reader) -> tuple[ByteOrder, dict[int, Entry]] | None:
    """Byte order and IFD0's entries by tag, or None for something that is not a classic TIFF."""
    head = read(0, 8)
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        return None
    order: ByteOrder = "little" if head[:2] == b"II" else "big"
    if int.from_bytes(head[2:4], order) != 42:
        return None
    ifd = int.from_bytes(head[4:8], order)
    raw_count = read(ifd, 2)
    if len(raw_count) < 2:
        return None
    count = int.from_bytes(raw_count, order)
    table = read(ifd + 2, 12 * count)
    entries: dict[int, Entry] = {}
    for k in range(len(table) // 12):
        e = table[12 * k : 12 * k + 12]
        tag, typ = int.from_bytes(e[0:2], order), int.from_bytes(e[2:4], order)
        n = int.from_bytes(e[4:8], order)
        pos = ifd + 2 + 12 * k
        size = n * _TYPE_SIZES.get(typ, 1)
        value_pos = pos + 8 if size <= 4 else int.from_bytes(e[8:12], order)
        entries.setdefault(tag, Entry(tag, typ, n, pos, value_pos))
    return order, entries


def value(read: Reader, entry: Entry) -> bytes:
    return read(entry.value_pos, entry.size)


def patched_entry(order: ByteOrder, entry: Entry, count: int, value_pos: int | None, inline: bytes = b"") -> bytes:
    """The 12 bytes of ``entry`` with a new count and either a value offset or an inline value."""
    field = inline.ljust(4, b"\x00") if value_pos is None else value_pos.to_bytes(4, order)
    return entry.tag.to_bytes(2, order) + entry.type.to_bytes(2, order) + count.to_bytes(4, order) + field


# ------------------------------------------------------------------ XPKeywords


def decode_xp(raw: bytes) -> list[str]:
    """Windows XPKeywords: UCS-2 little-endian text, ';'-separated, NUL-terminated."""
    text = raw.decode("utf-16-le", errors="replace").split("\x00", 1)[0]
    return [k.strip() for k in text.split(";") if k.strip()]


def encode_xp(keywords: list[str]) -> bytes:
    return ";".join(keywords).encode("utf-16-le") + b"\x00\x00"


def exif_xp_keywords(tiff: bytes) -> list[str] | None:
    """XPKeywords of an EXIF block's IFD0, or None when it has none."""
    found = read_ifd0(lambda pos, n: tiff[pos : pos + n])
    if found is None or XP_KEYWORDS not in found[1]:
        return None
    entry = found[1][XP_KEYWORDS]
    return decode_xp(tiff[entry.value_pos : entry.value_pos + entry.size])


def exif_with_xp_keywords(tiff: bytes, keywords: list[str]) -> bytes | None:
    """The EXIF block with IFD0's XPKeywords set to ``keywords``: written over the old value when it
    fits, else appended at the end of the block; every other byte stays put. None: no XPKeywords."""
    found = read_ifd0(lambda pos, n: tiff[pos : pos + n])
    if found is None or XP_KEYWORDS not in found[1]:
        return None
    order, entries = found
    entry = entries[XP_KEYWORDS]
    new = encode_xp(keywords)
    out = bytearray(tiff)
    if entry.type not in (1, 7):  # not the BYTE layout every writer uses: leave it
        return None
    if len(new) <= 4:
        out[entry.entry_pos : entry.entry_pos + 12] = patched_entry(order, entry, len(new), None, new)
    elif entry.size > 4 and len(new) <= entry.size:
        out[entry.value_pos : entry.value_pos + entry.size] = new.ljust(entry.size, b"\x00")
        out[entry.entry_pos : entry.entry_pos + 12] = patched_entry(order, entry, len(new), entry.value_pos)
    else:
        if len(out) % 2:
            out.append(0)
        pos = len(out)
        out += new
        out[entry.entry_pos : entry.entry_pos + 12] = patched_entry(order, entry, len(new), pos)
    return bytes(out)
