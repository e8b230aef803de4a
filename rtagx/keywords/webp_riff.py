"""Take an XMP chunk out of a WebP file, which exiv2 cannot do.

exiv2 writes an XMP chunk even when the packet it is given holds nothing (and its ``clear_xmp``
leaves the old chunk in place), and it turns a simple (VP8/VP8L) file into the extended VP8X layout
to hold that chunk. When untag has left nothing to say, the file must read as it did before: the
chunk goes, the VP8X XMP flag is cleared, and a VP8X header that announces nothing any more is
dropped again (a simple still file's canvas is its bitstream's size). Every other chunk keeps its
bytes and order.
"""

from __future__ import annotations

_XMP_FLAG = 0x04
_XMP = b"XMP "


def _chunks(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """The (fourcc, payload) chunks of a RIFF WebP file, or None when it is not one we can rebuild."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    out, i = [], 12
    end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    while i + 8 <= end:
        size = int.from_bytes(data[i + 4 : i + 8], "little")
        if i + 8 + size > end:
            return None
        out.append((data[i : i + 4], data[i + 8 : i + 8 + size]))
        i += 8 + size + (size & 1)
    return out if i >= end and end == len(data) else None


def without_xmp(data: bytes) -> bytes | None:
    """``data`` without its XMP chunk (see the module docstring), or None when it has none or is
    not a well-formed WebP file (then it is left as it is)."""
    chunks = _chunks(data)
    if chunks is None or not any(c == _XMP for c, _ in chunks):
        return None
    kept = [(c, p) for c, p in chunks if c != _XMP]
    if kept and kept[0][0] == b"VP8X" and kept[0][1]:
        flags = kept[0][1][0] & ~_XMP_FLAG
        if flags == 0 and len(kept) == 2 and kept[1][0] in (b"VP8 ", b"VP8L"):
            kept = kept[1:]
        else:
            kept[0] = (b"VP8X", bytes((flags,)) + kept[0][1][1:])
    body = b"WEBP" + b"".join(c + len(p).to_bytes(4, "little") + p + b"\x00" * (len(p) & 1) for c, p in kept)
    return b"RIFF" + len(body).to_bytes(4, "little") + body
