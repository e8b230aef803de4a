"""IPTC-IIM datasets and Photoshop image resource blocks, read and written byte for byte.

Why by hand: exiv2 re-serializes EXIF whenever it writes a JPEG, which can damage maker notes. We
only touch the IPTC resource (0x0404) and its digest (0x0425) inside the Photoshop APP13 block and
keep every other resource and dataset exactly as it was.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

UTF8_MARKER = b"\x1b%G"  # 1:90 CodedCharacterSet value that declares UTF-8
IPTC_RESOURCE = 0x0404
IPTC_DIGEST_RESOURCE = 0x0425
KEYWORD_MAX_BYTES = 64
_IRB_SIGNATURES = (b"8BIM", b"PHUT", b"AgHg", b"DCSR", b"MeSa")
# Record 2 datasets that hold binary or numeric data: never transcoded.
_BINARY_DATASETS = {(2, 0), (2, 125), (2, 150), (2, 200), (2, 201), (2, 202)}


class IptcFormatError(ValueError):
    """The bytes are not a well-formed IIM stream or resource block."""


@dataclass
class Dataset:
    record: int
    number: int
    value: bytes


@dataclass
class Resource:
    signature: bytes
    rid: int
    name: bytes  # raw Pascal string incl. its length byte, without padding
    data: bytes


# ---------------------------------------------------------------- IIM datasets


def parse_iim(data: bytes) -> list[Dataset]:
    """Split an IIM stream into datasets; trailing zero padding is allowed and dropped."""
    out: list[Dataset] = []
    i, n = 0, len(data)
    while i < n:
        if data[i] != 0x1C:
            if not data[i:].strip(b"\x00"):
                break
            raise IptcFormatError(f"IIM tag marker missing at offset {i}")
        if i + 5 > n:
            raise IptcFormatError("IIM dataset header truncated")
        record, number = data[i + 1], data[i + 2]
        length = int.from_bytes(data[i + 3 : i + 5], "big")
        i += 5
        if length & 0x8000:
            size = length & 0x7FFF
            if size == 0 or size > 4 or i + size > n:
                raise IptcFormatError("bad extended IIM length")
            length = int.from_bytes(data[i : i + size], "big")
            i += size
        if i + length > n:
            raise IptcFormatError("IIM dataset value truncated")
        out.append(Dataset(record, number, bytes(data[i : i + length])))
        i += length
    return out


def build_iim(datasets: list[Dataset]) -> bytes:
    parts = []
    for d in datasets:
        length = len(d.value)
        if length < 0x8000:
            head = bytes((0x1C, d.record, d.number)) + length.to_bytes(2, "big")
        else:
            head = bytes((0x1C, d.record, d.number, 0x80, 0x04)) + length.to_bytes(4, "big")
        parts.append(head + d.value)
    return b"".join(parts)


def is_utf8(datasets: list[Dataset]) -> bool:
    return any(d.record == 1 and d.number == 90 and d.value == UTF8_MARKER for d in datasets)


def decode_text(value: bytes, utf8: bool) -> str:
    """Decode an IIM text value. Undeclared sets: UTF-8 when valid, else Windows Latin-1 (never fails)."""
    if utf8:
        return value.decode("utf-8", errors="replace")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return value.decode("cp1252")
        except UnicodeDecodeError:
            return value.decode("latin-1")


def keywords(datasets: list[Dataset]) -> list[str]:
    utf8 = is_utf8(datasets)
    return [decode_text(d.value, utf8).rstrip("\x00") for d in datasets if (d.record, d.number) == (2, 25)]


def truncate_utf8(text: str, limit: int = KEYWORD_MAX_BYTES) -> bytes:
    """UTF-8 bytes of ``text`` cut to ``limit`` bytes without splitting a character (as Adobe does)."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def iptc_keyword_values(keywords_: list[str]) -> list[str]:
    """What IPTC 2:25 ends up holding for these keywords (truncated, de-duplicated)."""
    out: list[str] = []
    for k in keywords_:
        v = truncate_utf8(k).decode("utf-8")
        if v not in out:
            out.append(v)
    return out


def set_keywords(datasets: list[Dataset], new_keywords: list[str]) -> list[Dataset]:
    """Datasets with 2:25 replaced and UTF-8 declared; other text converted to UTF-8 when needed."""
    utf8 = is_utf8(datasets)
    out: list[Dataset] = []
    for d in datasets:
        if (d.record, d.number) in ((2, 25), (1, 90)):
            continue
        value = d.value
        if not utf8 and d.record == 2 and (d.record, d.number) not in _BINARY_DATASETS:
            value = decode_text(value, False).encode("utf-8")
        out.append(Dataset(d.record, d.number, value))
    # 1:90 goes last in record 1 (records must be in ascending order).
    rec1 = [d for d in out if d.record < 2]
    rest = [d for d in out if d.record >= 2]
    rec1.append(Dataset(1, 90, UTF8_MARKER))
    rec1.sort(key=lambda d: (d.record, d.number))
    rec2 = [d for d in rest if d.record == 2]
    others = [d for d in rest if d.record != 2]
    if not any(d.number == 0 for d in rec2):
        rec2.insert(0, Dataset(2, 0, b"\x00\x04"))  # ApplicationRecordVersion 4
    kw = [Dataset(2, 25, v.encode("utf-8")) for v in iptc_keyword_values(new_keywords)]
    # Keep keywords where they were (after the datasets numbered below 25) for tidy output.
    idx = next((i for i, d in enumerate(rec2) if d.number > 25), len(rec2))
    rec2[idx:idx] = kw
    return rec1 + rec2 + others


# ------------------------------------------------------ Photoshop image resources


def parse_irb(data: bytes) -> tuple[list[Resource], bytes]:
    """Split a Photoshop image resource block; returns (resources, unparsed trailing bytes)."""
    out: list[Resource] = []
    i, n = 0, len(data)
    while i + 12 <= n and data[i : i + 4] in _IRB_SIGNATURES:
        sig = data[i : i + 4]
        rid = int.from_bytes(data[i + 4 : i + 6], "big")
        j = i + 6
        name_len = data[j]
        name = data[j : j + 1 + name_len]
        j += 1 + name_len
        if (1 + name_len) % 2:
            j += 1
        if j + 4 > n:
            break
        size = int.from_bytes(data[j : j + 4], "big")
        j += 4
        if j + size > n:
            break
        out.append(Resource(sig, rid, name, bytes(data[j : j + size])))
        i = j + size + (size % 2)
    return out, bytes(data[min(i, n) :])


def build_irb(resources: list[Resource], trailing: bytes = b"") -> bytes:
    parts = []
    for r in resources:
        name = r.name or b"\x00"
        if len(name) % 2:
            name += b"\x00"
        parts.append(r.signature + r.rid.to_bytes(2, "big") + name + len(r.data).to_bytes(4, "big") + r.data)
        if len(r.data) % 2:
            parts.append(b"\x00")
    return b"".join(parts) + trailing


def find(resources: list[Resource], rid: int) -> Resource | None:
    return next((r for r in resources if r.signature == b"8BIM" and r.rid == rid), None)


def digest(iim: bytes) -> bytes:
    return hashlib.md5(iim).digest()


def replace_iptc(resources: list[Resource], new_iim: bytes) -> list[Resource]:
    """Resources with the IPTC block replaced (or added), and an existing digest brought up to date."""
    out = [Resource(r.signature, r.rid, r.name, r.data) for r in resources]
    iptc = find(out, IPTC_RESOURCE)
    if iptc is None:
        out.append(Resource(b"8BIM", IPTC_RESOURCE, b"\x00", new_iim))
    else:
        iptc.data = new_iim
    dig = find(out, IPTC_DIGEST_RESOURCE)
    if dig is not None:
        dig.data = digest(new_iim)
    return out
