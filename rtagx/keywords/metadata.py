"""Read and write keywords the way photo tools read them, safely, owning only what rtagx wrote.

Fields (Metadata Working Group guidance, exiftool as the reference):
- JPEG: IPTC-IIM 2:25 Keywords (UTF-8 declared with 1:90 = ESC % G; keywords over 64 bytes cut at a
  character boundary) in the Photoshop APP13 block, and XMP dc:subject (rdf:Bag), extended XMP
  included. TIFF: the same through exiv2, with the Photoshop block fixed by hand afterwards
  (:mod:`tiff_ifd`). PNG and WebP: XMP only.
- lr:hierarchicalSubject (rdf:Bag) when rtagx has hierarchy to write or the file already has it;
  created with the file's flat keywords carried in as top-level entries.
- Fields that already exist are kept in step: digiKam:TagsList, MicrosoftPhoto:LastKeywordXMP and
  LastKeywordIPTC, mediapro:CatalogSets, EXIF XPKeywords (JPEG: one IFD0 entry patched in place).
- rtagx records what it wrote in its own namespace (``rtagx:Keywords``, ``rtagx:HierarchicalKeywords``
  under ``http://ns.rtagx.dev/1.0/``), so replace-own and remove never touch a person's keyword.

Ownership rules: rtagx only ever removes keywords listed in its record; a keyword that was already
present and not rtagx's never becomes rtagx's (same text or not, compared case-insensitively). A
field rtagx created (lr:hierarchicalSubject, dc:subject, the IPTC keywords or block) is noted in
``rtagx:Created`` and taken away again once rtagx has nothing of its own in it, so untag gives the
file back as it was. ``.txt`` captions have no room for a record: they are treated as rtagx output
(replace-own replaces the list, merge adds, remove deletes the caption file).

Safety: JPEGs are edited segment by segment (:mod:`jpeg_segments`): EXIF, maker notes, ICC, MPF
images and the scan data keep their exact bytes. TIFF/PNG/WebP go through exiv2 on a temporary copy.
Every write goes through :func:`atomic.atomic_write`, which refuses to replace a file another
program changed since it was read: the edit is then redone on the new content (a few tries). When
nothing would change, nothing is written.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rtagx.errors import DecodeError, MetadataError, UsageError
from rtagx.imaging import heif
from rtagx.imaging.formats import (
    AVIF_EXTENSIONS,
    BIGTIFF_MAGIC,
    EMBED_EXTENSIONS,
    HEIF_EXTENSIONS,
    RAW_EXTENSIONS,
    TIFF_EXTENSIONS,
    identify,
)
from rtagx.keywords import iptc, sidecar, tiff_ifd, webp_riff, xmp
from rtagx.keywords import jpeg_segments as jpeg
from rtagx.keywords.atomic import ChangedDuringWrite, FileState, atomic_write, check_writable
from rtagx.keywords.atomic import clean_stale_temps as clean_stale_temps  # the scanner's entry point
from rtagx.keywords.xmp import NS_DC, NS_DIGIKAM, NS_LR, NS_MEDIAPRO, NS_MSPHOTO, NS_RTAGX, XmpDoc
from rtagx.settings import CHOICES

TARGETS = CHOICES["write"]
MODES = CHOICES["mode"]
SIDECAR_STYLES = CHOICES["sidecar_style"]

HIERARCHY_SEPARATOR = "|"
WARN_XPKEYWORDS = "exif-xpkeywords-not-updated"
WARN_IPTC_UNREADABLE = "iptc-unreadable-left-untouched"
# Keyword fields kept in step when they already exist: (namespace, name, hierarchy separator or None).
_SYNCED_FIELDS = (
    (NS_DIGIKAM, "TagsList", "/"),
    (NS_MSPHOTO, "LastKeywordXMP", "/"),
    (NS_MSPHOTO, "LastKeywordIPTC", None),
    (NS_MEDIAPRO, "CatalogSets", "|"),
)
_LR_FIELD = "lr:hierarchicalSubject"  # recorded in rtagx:Created when rtagx made the field
_SUBJECT_FIELD = "dc:subject"
_IPTC_BLOCK = "IPTC"
_IPTC_KEYWORDS = "IPTC:Keywords"
_EXIV2_LOCK = threading.Lock()  # pyexiv2 keeps its error buffer in a global


@dataclass
class FileKeywords:
    keywords: list[str]
    hierarchical: list[str]
    owned: list[str]
    owned_hierarchical: list[str]
    source: str  # "embedded", "sidecar", "txt" or "none"


@dataclass
class WriteResult:
    path: Path
    written_to: Path | None
    target: str
    added: list[str]
    removed: list[str]
    changed: bool
    keywords_after: list[str]
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ targets


def resolve_target(path: Path, target: str = "auto") -> str:
    """``auto`` -> ``embed`` for JPEG/TIFF/PNG/WebP, ``sidecar`` for everything else (RAW never
    embedded) and for a BigTIFF, which exiv2 cannot write into (its first bytes are read to tell)."""
    if target not in TARGETS:
        raise UsageError(f"unknown write target {target!r} (choose from {', '.join(TARGETS)})")
    ext = Path(path).suffix.lower()
    embeddable = ext in EMBED_EXTENSIONS and not (ext in TIFF_EXTENSIONS and _is_bigtiff(Path(path)))
    if target == "auto":
        return "embed" if embeddable else "sidecar"
    if target == "embed" and not embeddable:
        if ext in RAW_EXTENSIONS:
            why = "rtagx never writes into raw files"
        elif ext in EMBED_EXTENSIONS:
            why = "a BigTIFF, which exiv2 cannot write into"
        else:
            why = "keywords can only be embedded into JPEG, TIFF, PNG and WebP"
        raise MetadataError(
            "unsupported-format", f"cannot embed keywords into {ext or 'this'} file: {why}; use a sidecar"
        )
    return target


def _is_bigtiff(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) in BIGTIFF_MAGIC
    except OSError:
        return False  # the write that follows reports why the file cannot be read


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r} (choose from {', '.join(choices)})")


# ------------------------------------------------------------------ keywords


def clean_keyword(text: str) -> str:
    """A keyword as written: surrounding whitespace dropped. Raises MetadataError("bad-keyword")."""
    if not isinstance(text, str):
        raise MetadataError("bad-keyword", f"keyword {text!r} is not text")
    k = text.strip()
    if not k:
        raise MetadataError("bad-keyword", "empty keyword")
    for ch in k:
        cp = ord(ch)
        if unicodedata.category(ch) in ("Cc", "Cs") or (cp & 0xFFFE) == 0xFFFE or 0xFDD0 <= cp <= 0xFDEF:
            raise MetadataError("bad-keyword", f"keyword {k!r} holds the control or non-character U+{cp:04X}")
    if HIERARCHY_SEPARATOR in k:
        raise MetadataError(
            "bad-keyword", f"keyword {k!r} holds '|', the hierarchy separator; pass hierarchy as hierarchical entries"
        )
    return k


def _unique(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


def _hierarchy(flat: list[str], hierarchical: Sequence[str], root: str | None) -> list[str]:
    """lr:hierarchicalSubject entries: the given paths (under the root), plus flat keywords no path covers."""
    root_c = clean_keyword(root) if root else None
    out: list[str] = []
    for entry in hierarchical:
        parts = [clean_keyword(p) for p in str(entry).split(HIERARCHY_SEPARATOR)]
        if root_c and parts[0] != root_c:
            parts.insert(0, root_c)
        out.append(HIERARCHY_SEPARATOR.join(parts))
    covered = {p for e in out for p in e.split(HIERARCHY_SEPARATOR)}
    for k in flat:
        if k not in covered:
            out.append(f"{root_c}{HIERARCHY_SEPARATOR}{k}" if root_c else k)
    return _unique(out)


@dataclass
class _Diff:
    new: list[str]
    owned: list[str]
    added: list[str]
    removed: list[str]


def _apply(current: list[str], owned: list[str], chosen: list[str], mode: str) -> _Diff:
    """The ownership rule: only rtagx's keywords are removed (replace-own); a keyword that was
    already present and not rtagx's never becomes rtagx's. Keywords compare case-insensitively, as
    Lightroom does: a person's ``Dog`` stands for rtagx's ``dog``. rtagx writes one copy of a
    keyword, so replace-own takes one copy away: a second copy of the same text that another
    program appended since (``exiftool -keywords+=dog``) is a person's and stays."""
    owned_now = [k for k in _unique(owned) if k in current]
    chosen_folded = {k.casefold() for k in chosen}
    if mode == "merge":
        dropped: list[str] = []
    elif mode == "replace-own":
        dropped = [k for k in owned_now if k.casefold() not in chosen_folded]
    else:
        dropped = _unique([k for k in current if k.casefold() not in chosen_folded])
    kept = list(current)
    for k in dropped:
        if mode == "replace-own":
            kept.remove(k)
        else:
            kept = [x for x in kept if x != k]
    removed = [k for k in dropped if k not in kept]  # gone from the file, not just from rtagx's record
    kept_folded = {k.casefold() for k in kept}
    added = []
    for k in chosen:
        if k.casefold() not in kept_folded:
            added.append(k)
            kept_folded.add(k.casefold())
    new = kept + added
    new_owned = _unique([k for k in new if (k in owned_now and k not in dropped) or k in added])
    return _Diff(new, new_owned, added, removed)


def recover_truncated(from_iptc: list[str], from_xmp: list[str]) -> list[str]:
    """IPTC keywords with each one that is the 64-byte cut of the XMP keyword at the same place
    replaced by that full keyword (the MWG rule exiftool follows): a stale digest must not turn a
    person's long keyword into its truncation."""
    out = list(from_iptc)
    for i, (short, full) in enumerate(zip(from_iptc, from_xmp, strict=False)):
        if len(full.encode("utf-8")) > iptc.KEYWORD_MAX_BYTES and iptc.truncate_utf8(full) == short.encode("utf-8"):
            out[i] = full
    return out


# ------------------------------------------------------------------ containers


class _Container:
    """One place keywords live: an embedded packet (with IPTC where the format has it) or a sidecar."""

    kind = "embedded"
    has_iptc = False

    def __init__(self, path: Path, doc: XmpDoc, state: FileState | None) -> None:
        self.path = path
        self.doc = doc
        self.state = state  # the file as read: a write only replaces this very file
        self.warnings: list[str] = []
        self.xp_keywords: list[str] | None = None  # EXIF XPKeywords, where the file has them

    def current_keywords(self) -> list[str]:
        return self.doc.get_array(NS_DC, "subject") or []

    def iptc_in_sync(self, keywords_: list[str]) -> bool:
        return True

    def iptc_presence(self) -> str | None:
        """ "absent" (no IPTC block), "no-keywords", "keywords", or None where IPTC is not written."""
        return None

    def save(self, plan: _Plan, preserve_mtime: bool) -> None:
        raise NotImplementedError


def _mwg_keywords(from_xmp: list[str] | None, from_iptc: list[str] | None, digest_mismatch: bool) -> list[str]:
    """MWG: XMP wins unless a Photoshop digest exists and no longer matches the IPTC block (then
    IPTC, with its 64-byte cuts of XMP keywords recovered)."""
    if from_iptc is not None and (digest_mismatch or from_xmp is None):
        return recover_truncated(from_iptc, from_xmp or [])
    return from_xmp or []


def _iptc_in_sync(have: list[str] | None, utf8: bool, digest_mismatch: bool, keywords_: list[str]) -> bool:
    wanted = iptc.iptc_keyword_values(keywords_)
    if have is None:
        return not wanted
    if digest_mismatch or have != wanted:
        return False
    return not have or utf8


class _JpegContainer(_Container):
    has_iptc = True

    def __init__(self, path: Path, data: bytes, state: FileState) -> None:
        try:
            self.parts = jpeg.parse(data)
        except jpeg.JpegFormatError as e:
            raise MetadataError("corrupt", f"JPEG header cannot be parsed: {e}") from None
        packets = sum(seg.is_xmp() for seg in self.parts.segments)
        if packets > 1:
            raise MetadataError(
                "duplicate-xmp",
                f"the file holds {packets} standard XMP packets and readers disagree on which counts; left untouched",
            )
        packet = self.parts.xmp_packet()
        super().__init__(path, _parse_embedded_xmp(packet, path), state)
        guid = self.doc.extended_guid()
        extended = self.parts.xmp_extension(guid) if guid else None
        if extended is not None:  # one document from here on: written back split again if needed
            self.doc.merge(_parse_embedded_xmp(extended, path))
        if guid:
            self.doc.drop_extended_guid()
        self.resources: list[iptc.Resource] = []
        self.irb_tail = b""
        self.datasets: list[iptc.Dataset] | None = None
        self.digest_mismatch = False
        self.exif = next((s for s in self.parts.segments if s.is_exif()), None)
        if self.exif is not None:
            self.xp_keywords = tiff_ifd.exif_xp_keywords(self.exif.payload[len(jpeg.EXIF_HEADER) :])
        irb = self.parts.photoshop_irb()
        if irb is not None:
            self.resources, self.irb_tail = iptc.parse_irb(irb)
            res = iptc.find(self.resources, iptc.IPTC_RESOURCE)
            if res is not None:
                try:
                    self.datasets = iptc.parse_iim(res.data)
                except iptc.IptcFormatError:
                    # Unreadable IPTC: read XMP, and leave the block exactly as it is.
                    self.has_iptc = False
                    self.warnings.append(WARN_IPTC_UNREADABLE)
                    return
                dig = iptc.find(self.resources, iptc.IPTC_DIGEST_RESOURCE)
                self.digest_mismatch = dig is not None and dig.data != iptc.digest(res.data)

    def iptc_keywords(self) -> list[str] | None:
        return iptc.keywords(self.datasets) if self.datasets is not None else None

    def current_keywords(self) -> list[str]:
        return _mwg_keywords(self.doc.get_array(NS_DC, "subject"), self.iptc_keywords(), self.digest_mismatch)

    def iptc_presence(self) -> str | None:
        if not self.has_iptc:
            return None
        if self.datasets is None:
            return "absent"
        return "keywords" if self.iptc_keywords() else "no-keywords"

    def iptc_in_sync(self, keywords_: list[str]) -> bool:
        utf8 = self.datasets is not None and iptc.is_utf8(self.datasets)
        return _iptc_in_sync(self.iptc_keywords(), utf8, self.digest_mismatch, keywords_)

    def save(self, plan: _Plan, preserve_mtime: bool) -> None:
        packet, extension = _fit_packet(plan.doc) if plan.xmp_changed else (None, None)
        if plan.xmp_changed and plan.doc.is_empty():
            packet, extension = b"", None  # nothing left to say (rtagx's record was all it held)
        irb = None
        if plan.iptc_drop == "block":  # rtagx made the IPTC block: it goes with rtagx's last keyword
            resources = [r for r in self.resources if r is not iptc.find(self.resources, iptc.IPTC_RESOURCE)]
            irb = iptc.build_irb(resources, self.irb_tail) if resources or self.irb_tail else b""
        elif plan.iptc_changed:
            datasets = iptc.set_keywords(self.datasets or [], plan.keywords if not plan.iptc_drop else [])
            resources = iptc.replace_iptc(self.resources, iptc.build_iim(datasets))
            irb = iptc.build_irb(resources, self.irb_tail)
        exif = None
        if plan.xp_keywords is not None and self.exif is not None:
            tiff = tiff_ifd.exif_with_xp_keywords(self.exif.payload[len(jpeg.EXIF_HEADER) :], plan.xp_keywords)
            if tiff is not None and len(jpeg.EXIF_HEADER) + len(tiff) <= jpeg.MAX_PAYLOAD:
                exif = jpeg.EXIF_HEADER + tiff
            else:
                self.warnings.append(WARN_XPKEYWORDS)
        try:
            new = jpeg.splice(self.parts, xmp_packet=packet, xmp_extension=extension, irb=irb, exif=exif)
            data = jpeg.fix_mpf(self.parts, new, new.to_bytes())
        except jpeg.JpegFormatError as e:
            raise MetadataError("write-failed", str(e)) from None
        atomic_write(self.path, data, preserve_mtime=preserve_mtime, expect=self.state)


class _Exiv2Container(_Container):
    """TIFF (XMP + IPTC), PNG and WebP (XMP only) through exiv2, always on a temporary copy.

    For TIFF the IFD0 tags exiv2 gets wrong are read and patched by hand (:mod:`tiff_ifd`): the
    Photoshop block's IPTC digest is brought up to date, and the IPTC copy exiv2 puts into that
    block is taken out again unless the file had one there."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.fmt = fmt
        self.has_iptc = fmt == "tiff"
        state = FileState.at(path)
        raw_xmp, iptc_data = _exiv2_read(path, want_iptc=self.has_iptc)
        super().__init__(path, _parse_embedded_xmp(raw_xmp.encode("utf-8") if raw_xmp else None, path), state)
        self.iptc_kw: list[str] | None = None
        self.iptc_utf8 = False
        if iptc_data:
            self.iptc_utf8 = iptc_data.get("Iptc.Envelope.CharacterSet") == "\x1b%G"
            kws = iptc_data.get("Iptc.Application2.Keywords")
            if kws is not None:
                kws = [kws] if isinstance(kws, str) else list(kws)
                self.iptc_kw = [iptc.decode_text(k.encode("latin-1"), self.iptc_utf8) for k in kws]
        self.iptc_block = bool(iptc_data)
        self.tiff = _read_tiff_tags(path) if fmt == "tiff" else None
        self.digest_mismatch = self.tiff is not None and self.tiff.digest_mismatch
        if self.tiff is not None:
            self.xp_keywords = self.tiff.xp_keywords

    def current_keywords(self) -> list[str]:
        return _mwg_keywords(self.doc.get_array(NS_DC, "subject"), self.iptc_kw, self.digest_mismatch)

    def iptc_presence(self) -> str | None:
        if not self.has_iptc:
            return None
        if not self.iptc_block:
            return "absent"
        return "keywords" if self.iptc_kw else "no-keywords"

    def iptc_in_sync(self, keywords_: list[str]) -> bool:
        if not self.has_iptc:
            return True
        return _iptc_in_sync(self.iptc_kw, self.iptc_utf8, self.digest_mismatch, keywords_)

    def save(self, plan: _Plan, preserve_mtime: bool) -> None:
        packet = plan.doc.packet().decode("utf-8")
        source = self.path

        def fill(f, tmp: str) -> None:
            with open(source, "rb") as src:
                if FileState.of(os.fstat(src.fileno())) != self.state:
                    raise ChangedDuringWrite(source)
                shutil.copyfileobj(src, f)
            f.flush()
            with _EXIV2_LOCK:
                img = _exiv2_open(Path(tmp))
                try:
                    if plan.xmp_changed:
                        img.modify_raw_xmp(packet)
                    if plan.iptc_drop == "block":
                        img.clear_iptc()
                    elif plan.iptc_changed:
                        values = iptc.iptc_keyword_values(plan.keywords if not plan.iptc_drop else [])
                        img.modify_iptc(
                            {"Iptc.Envelope.CharacterSet": "\x1b%G", "Iptc.Application2.Keywords": values or None}
                        )
                    if plan.xp_keywords is not None:
                        img.modify_exif({"Exif.Image.XPKeywords": ";".join(plan.xp_keywords) or None})
                except Exception as e:  # pyexiv2 raises RuntimeError with exiv2's message
                    raise MetadataError("write-failed", f"exiv2 could not write: {e}") from None
                finally:
                    img.close()
            if self.tiff is not None and self.tiff.irb is not None:
                _fix_tiff_irb(Path(tmp), keep_iptc=self.tiff.irb_has_iptc)
            if self.fmt == "webp" and plan.xmp_changed and plan.doc.is_empty():
                stripped = webp_riff.without_xmp(Path(tmp).read_bytes())  # exiv2 keeps an empty chunk
                if stripped is not None:
                    Path(tmp).write_bytes(stripped)

        atomic_write(self.path, fill, preserve_mtime=preserve_mtime, expect=self.state)


@dataclass
class _TiffTags:
    irb: bytes | None  # the Photoshop image resource block (tag 34377)
    irb_has_iptc: bool
    digest_mismatch: bool
    xp_keywords: list[str] | None


def _file_reader(f) -> tiff_ifd.Reader:
    def read(pos: int, n: int) -> bytes:
        f.seek(pos)
        return f.read(n)

    return read


def _read_tiff_tags(path: Path) -> _TiffTags | None:
    try:
        with open(path, "rb") as f:
            read = _file_reader(f)
            found = tiff_ifd.read_ifd0(read)
            if found is None:
                return None
            entries = found[1]
            irb = tiff_ifd.value(read, entries[tiff_ifd.PHOTOSHOP_IRB]) if tiff_ifd.PHOTOSHOP_IRB in entries else None
            naa = tiff_ifd.value(read, entries[tiff_ifd.IPTC_NAA]) if tiff_ifd.IPTC_NAA in entries else None
            xp = tiff_ifd.value(read, entries[tiff_ifd.XP_KEYWORDS]) if tiff_ifd.XP_KEYWORDS in entries else None
    except OSError as e:
        raise MetadataError("corrupt", f"cannot read the TIFF header: {e}") from None
    resources = iptc.parse_irb(irb)[0] if irb is not None else []
    dig = iptc.find(resources, iptc.IPTC_DIGEST_RESOURCE)
    return _TiffTags(
        irb,
        iptc.find(resources, iptc.IPTC_RESOURCE) is not None,
        dig is not None and naa is not None and dig.data != iptc.digest(naa),
        tiff_ifd.decode_xp(xp) if xp is not None else None,
    )


def _fix_tiff_irb(path: Path, *, keep_iptc: bool) -> None:
    """After exiv2 wrote ``path``: the Photoshop IPTC digest made current (over the IPTC-NAA bytes,
    as exiftool computes it), and exiv2's copy of the IPTC in that block taken out unless the file
    had one there. The block only shrinks, so it is rewritten in place."""
    with open(path, "r+b") as f:
        read = _file_reader(f)
        found = tiff_ifd.read_ifd0(read)
        if found is None or tiff_ifd.PHOTOSHOP_IRB not in found[1]:
            return
        order, entries = found
        entry = entries[tiff_ifd.PHOTOSHOP_IRB]
        old = tiff_ifd.value(read, entry)
        resources, tail = iptc.parse_irb(old)
        if not keep_iptc and len(resources) > 1:
            resources = [r for r in resources if not (r.signature == b"8BIM" and r.rid == iptc.IPTC_RESOURCE)]
        dig = iptc.find(resources, iptc.IPTC_DIGEST_RESOURCE)
        if dig is not None:
            naa = tiff_ifd.value(read, entries[tiff_ifd.IPTC_NAA]) if tiff_ifd.IPTC_NAA in entries else b""
            dig.data = iptc.digest(naa)
        new = iptc.build_irb(resources, tail)
        if new == old or len(new) > entry.size or entry.size <= 4 or entry.type not in (1, 7):
            return
        f.seek(entry.value_pos)
        f.write(new.ljust(entry.size, b"\x00"))
        f.seek(entry.entry_pos)
        f.write(tiff_ifd.patched_entry(order, entry, len(new), entry.value_pos))


class _SidecarContainer(_Container):
    kind = "sidecar"

    def __init__(self, path: Path, photo: Path) -> None:
        state = FileState.at(path)
        self.exists = state is not None
        self.photo = photo
        doc = XmpDoc.new()
        if self.exists:
            try:
                data = path.read_bytes()
            except PermissionError as e:
                raise MetadataError("permission-denied", f"cannot read sidecar {path}: {e.strerror}") from None
            try:
                doc = XmpDoc.parse(data)
            except xmp.XmpError as e:
                raise MetadataError("bad-sidecar", f"sidecar {path} is not valid XMP ({e}); left untouched") from None
        super().__init__(path, doc, state)

    def save(self, plan: _Plan, preserve_mtime: bool) -> None:
        data = plan.doc.sidecar_bytes()
        atomic_write(
            self.path,
            data,
            preserve_mtime=preserve_mtime,
            mode_like=None if self.exists else self.photo,
            expect=self.state,
        )


def _parse_embedded_xmp(packet: bytes | None, path: Path) -> XmpDoc:
    if not packet or not packet.strip(b"\x00 \t\r\n"):
        return XmpDoc.new()
    try:
        return XmpDoc.parse(packet)
    except xmp.XmpError as e:
        raise MetadataError("bad-xmp", f"the file's XMP packet cannot be parsed ({e}); left untouched") from None


def _fit_packet(doc: XmpDoc) -> tuple[bytes, list[jpeg.Segment]]:
    """The main packet for one JPEG APP1 segment, and extended XMP segments for what does not fit."""
    try:
        packet, extended = doc.split_extended(jpeg.MAX_XMP_PACKET)
    except xmp.XmpError as e:
        raise MetadataError("write-failed", str(e)) from None
    if extended is None:
        return packet, []
    guid = XmpDoc.parse(packet).extended_guid() or ""
    return packet, jpeg.xmp_extension_segments(extended, guid)


def _sniff(data: bytes) -> str | None:
    """The container of a file whose keywords are embedded: "jpeg", "png", "webp", "tiff" or None."""
    try:
        fmt = identify(data)
    except DecodeError:
        return None
    return fmt.lower() if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else None


def _exiv2_open(path: Path):
    import pyexiv2  # ships no type information (see [tool.mypy] in pyproject.toml)

    try:
        return pyexiv2.Image(str(path))
    except Exception as e:
        raise MetadataError("unsupported-format", f"exiv2 cannot open the file: {e}") from None


def _exiv2_read(path: Path, *, want_iptc: bool) -> tuple[str, dict]:
    with _EXIV2_LOCK:
        img = _exiv2_open(path)
        try:
            raw = img.read_raw_xmp() or ""
            data = img.read_iptc(encoding="latin-1") if want_iptc else {}
        except Exception as e:
            raise MetadataError("corrupt", f"exiv2 cannot read the metadata: {e}") from None
        finally:
            img.close()
    return raw, data


def _open_embedded(path: Path) -> _Container:
    try:
        with open(path, "rb") as f:
            state = FileState.of(os.fstat(f.fileno()))
            head = f.read(16)
            fmt = _sniff(head)
            if fmt == "jpeg":
                return _JpegContainer(path, head + f.read(), state)
    except FileNotFoundError:
        raise MetadataError("missing", f"{path} does not exist") from None
    except IsADirectoryError:
        raise MetadataError("unsupported-format", f"{path} is a folder") from None
    except PermissionError as e:
        raise MetadataError("permission-denied", f"cannot read {path}: {e.strerror}") from None
    if fmt is None:
        raise MetadataError("unsupported-format", f"{path.name}: not a JPEG, TIFF, PNG or WebP file")
    return _Exiv2Container(path, fmt)


def _open_sidecar(path: Path, style: str) -> _SidecarContainer:
    found = sidecar.find_sidecar(path, style)
    box = _SidecarContainer(found or sidecar.sidecar_path(path, style), path)
    if not box.exists:
        _carry_embedded_keywords(box)
    return box


def _carry_embedded_keywords(box: _SidecarContainer) -> None:
    """A new sidecar starts with the photo's embedded keywords (a person's, never rtagx's to remove):
    tools that prefer the sidecar must not hide them. That holds for the photos rtagx never writes
    into too (a HEIC's or a raw file's own XMP), read where a reader is at hand."""
    if box.photo.suffix.lower() in EMBED_EXTENSIONS:
        try:
            embedded = _open_embedded(box.photo)
        except MetadataError:
            return
        doc, keywords_ = embedded.doc, embedded.current_keywords()
    else:
        found = _foreign_xmp(box.photo)
        if found is None:
            return
        doc, keywords_ = found, found.get_array(NS_DC, "subject") or []
    owned = set(doc.get_array(NS_RTAGX, "Keywords") or [])
    owned_h = set(doc.get_array(NS_RTAGX, "HierarchicalKeywords") or [])
    current = [k for k in keywords_ if k not in owned]
    hier = [k for k in doc.get_array(NS_LR, "hierarchicalSubject") or [] if k not in owned_h]
    if current:
        box.doc.set_array(NS_DC, "subject", current, "Bag")
    if hier:
        box.doc.set_array(NS_LR, "hierarchicalSubject", hier, "Bag")


def _foreign_xmp(photo: Path) -> XmpDoc | None:
    """The XMP packet inside a photo rtagx only gives a sidecar: HEIF/AVIF through pillow-heif (the
    ``heif`` extra), raw files through exiv2. None when there is none or it cannot be read: the
    sidecar then starts empty, as before."""
    ext = photo.suffix.lower()
    packet: bytes | None = None
    try:
        if ext in HEIF_EXTENSIONS | AVIF_EXTENSIONS:
            with open(photo, "rb") as f:
                packet = heif.open_heif(f).info.get("xmp")
        elif ext in RAW_EXTENSIONS:
            raw, _ = _exiv2_read(photo, want_iptc=False)
            packet = raw.encode("utf-8") if raw else None
    except (OSError, DecodeError, MetadataError):
        return None
    try:
        return _parse_embedded_xmp(packet, photo) if packet else None
    except MetadataError:
        return None


# ------------------------------------------------------------------ planning


@dataclass
class _Plan:
    doc: XmpDoc
    keywords: list[str]
    added: list[str]
    removed: list[str]
    xmp_changed: bool
    iptc_changed: bool
    xp_keywords: list[str] | None = None  # the new EXIF XPKeywords, when they change
    iptc_drop: str | None = None  # "block" or "keywords": rtagx created them and takes them away

    @property
    def changed(self) -> bool:
        return self.xmp_changed or self.iptc_changed or self.xp_keywords is not None


def _add_persons(diff: _Diff, person: Sequence[str]) -> _Diff:
    """``diff`` with ``person``'s keywords added (the ones the file lacks) and none of them owned."""
    folded = {k.casefold() for k in diff.new}
    extra: list[str] = []
    for k in person:
        if k.casefold() not in folded:
            extra.append(k)
            folded.add(k.casefold())
    theirs = {k.casefold() for k in person}
    owned = [k for k in diff.owned if k.casefold() not in theirs]
    return _Diff(diff.new + extra, owned, diff.added + extra, diff.removed)


def _in_synced_fields(box: _Container) -> tuple[set[str], set[str]]:
    """What the fields kept in step hold now, case-folded: flat keywords (XPKeywords, LastKeywordIPTC,
    and the last level of each hierarchical entry) and hierarchical entries spelled with ``|``."""
    flat = {k.casefold() for k in box.xp_keywords or []}
    hier: set[str] = set()
    for ns, name, sep in _SYNCED_FIELDS:
        for entry in box.doc.get_array(ns, name) or []:
            parts = entry.split(sep) if sep else [entry]
            flat.add(parts[-1].strip().casefold())
            if sep:
                hier.add(HIERARCHY_SEPARATOR.join(parts).casefold())
    return flat, hier


def _plan(
    box: _Container,
    chosen: list[str],
    chosen_hier: list[str],
    mode: str,
    person: Sequence[str] = (),
    person_hier: Sequence[str] = (),
) -> _Plan:
    doc = box.doc
    current = box.current_keywords()
    owned = doc.get_array(NS_RTAGX, "Keywords") or []
    owned_h = doc.get_array(NS_RTAGX, "HierarchicalKeywords") or []
    hier_field = doc.get_array(NS_LR, "hierarchicalSubject")
    if person:  # the person's keywords from now on: out of rtagx's record, whoever wrote them first
        theirs = {k.casefold() for k in person}
        owned = [k for k in owned if k.casefold() not in theirs]
        owned_h = [h for h in owned_h if h.rsplit(HIERARCHY_SEPARATOR, 1)[-1].casefold() not in theirs]

    flat = _add_persons(_apply(current, owned, chosen, mode), person)
    if hier_field is None:  # carry the flat keywords in as top-level entries (a flat "AC|DC" is no hierarchy)
        carried = [k for k in current if HIERARCHY_SEPARATOR not in k]
        cur_h, owned_h = carried, _unique(owned_h + [k for k in owned if k in carried])
    else:
        cur_h = hier_field
    hier = _add_persons(_apply(cur_h, owned_h, chosen_hier, mode), person_hier)
    # A keyword rtagx adds that a field kept in step already held (Windows' XPKeywords, digiKam's
    # TagsList, ...) was typed by a person there: it is theirs, so removing rtagx's own keywords
    # later (retag, untag) never takes it out of that field or of dc:subject.
    synced_flat, synced_hier = _in_synced_fields(box)
    flat.owned = [k for k in flat.owned if k not in flat.added or k.casefold() not in synced_flat]
    hier.owned = [
        h
        for h in hier.owned
        if h not in hier.added
        or not (h.casefold() in synced_hier or (HIERARCHY_SEPARATOR not in h and h.casefold() in synced_flat))
    ]
    has_hierarchy = any(HIERARCHY_SEPARATOR in h for h in hier.new)
    created = doc.get_array(NS_RTAGX, "Created") or []
    if hier_field is None and has_hierarchy and not person:  # a person's hierarchy: their field
        created = _unique([*created, _LR_FIELD])
    write_hier = hier_field is not None or has_hierarchy
    if hier_field is not None and _LR_FIELD in created and not has_hierarchy:
        hier.new, hier.owned = [], []  # rtagx created it and it holds no hierarchy any more: take it away
        created = [c for c in created if c != _LR_FIELD]
    if hier_field is None and not has_hierarchy:
        created = [c for c in created if c != _LR_FIELD]
    # dc:subject and IPTC keywords are created only to hold a keyword of rtagx's, recorded, and taken
    # away again with rtagx's last keyword: untag gives back the file as it was.
    subject = flat.new
    had_subject = doc.get_array(NS_DC, "subject") is not None
    presence = box.iptc_presence()
    iptc_drop = None
    if flat.owned:
        if not had_subject:
            created = _unique([*created, _SUBJECT_FIELD])
        if presence == "absent":
            created = _unique([*created, _IPTC_BLOCK])
        elif presence == "no-keywords":
            created = _unique([*created, _IPTC_KEYWORDS])
    else:
        # A file that had no keyword field before rtagx created them and holds a keyword now that is not
        # rtagx's: a person typed it since, and the fields are theirs now (they stay). Where a field was
        # there before, it holds the keywords left and the fields rtagx created go.
        had_field = (had_subject and _SUBJECT_FIELD not in created) or (
            presence == "keywords" and _IPTC_BLOCK not in created and _IPTC_KEYWORDS not in created
        )
        typed_since = (bool(flat.new) and not had_field) or bool(person)  # person: typed now
        if (not had_subject and not person) or (_SUBJECT_FIELD in created and not typed_since):
            subject = []
        for mark in (_IPTC_BLOCK, _IPTC_KEYWORDS):
            if mark in created and iptc_drop is None and presence != "absent" and not typed_since:
                iptc_drop = mark
        created = [c for c in created if c not in (_SUBJECT_FIELD, _IPTC_BLOCK, _IPTC_KEYWORDS)]

    wanted: dict[tuple[str, str], tuple[list[str], str]] = {
        (NS_DC, "subject"): (subject, "Bag"),
        (NS_RTAGX, "Keywords"): (flat.owned, "Bag"),
        (NS_RTAGX, "HierarchicalKeywords"): (hier.owned if write_hier else [], "Bag"),
        (NS_RTAGX, "Created"): (created, "Bag"),
    }
    if write_hier:
        wanted[(NS_LR, "hierarchicalSubject")] = (hier.new, "Bag")
    for ns, name, sep in _SYNCED_FIELDS:
        have = doc.get_array(ns, name)
        if have is None:
            continue
        source = (hier.removed, hier.added) if sep else (flat.removed, flat.added)
        removed = {x.replace(HIERARCHY_SEPARATOR, sep) if sep else x for x in source[0]}
        added = [x.replace(HIERARCHY_SEPARATOR, sep) if sep else x for x in source[1]]
        kept = [x for x in have if x not in removed]
        wanted[(ns, name)] = (kept + [a for a in added if a not in kept], doc.array_kind(ns, name) or "Bag")

    xmp_changed = False
    for (ns, name), (values, kind) in wanted.items():
        have = doc.get_array(ns, name)
        same = (have or []) == values and (not values or doc.array_kind(ns, name) == kind)
        if not same:
            xmp_changed = True
            doc.set_array(ns, name, values, kind)
    if xmp_changed:
        doc.drop_unused_namespace(NS_RTAGX)
    if iptc_drop == _IPTC_BLOCK:
        iptc_changed = True
    elif iptc_drop == _IPTC_KEYWORDS:
        iptc_changed = presence == "keywords"
    elif presence in ("absent", "no-keywords") and not flat.owned and not person:
        iptc_changed = False  # no keyword of rtagx's to put there: the file keeps no IPTC keywords
    else:
        iptc_changed = box.has_iptc and not box.iptc_in_sync(flat.new)
    xp = None
    if box.xp_keywords is not None:  # kept in step like the XMP fields: same removals and additions
        kept_xp = [k for k in box.xp_keywords if k not in flat.removed]
        folded = {k.casefold() for k in kept_xp}
        new_xp = kept_xp + [k for k in flat.added if k.casefold() not in folded]
        xp = new_xp if new_xp != box.xp_keywords else None
    drop = {_IPTC_BLOCK: "block", _IPTC_KEYWORDS: "keywords"}.get(iptc_drop or "")
    return _Plan(doc, flat.new, flat.added, flat.removed, xmp_changed, iptc_changed, xp, drop)


def _open(path: Path, target: str, sidecar_style: str) -> _Container:
    if target == "embed":
        return _open_embedded(path)
    return _open_sidecar(path, sidecar_style)


# ------------------------------------------------------------------ public API


def read_keywords(
    path: Path, *, sidecar_style: str = "ext", target: str = "auto", caption_ext: str = ".txt"
) -> FileKeywords:
    """Keywords a photo tool shows now (MWG rule), plus which of them rtagx wrote."""
    path = Path(path)
    _check_choice(sidecar_style, SIDECAR_STYLES, "sidecar style")
    where = resolve_target(path, target)
    if where == "none":
        where = resolve_target(path, "auto")
    if where == "txt":
        cap = sidecar.caption_path(path, caption_ext)
        if not cap.is_file():
            return FileKeywords([], [], [], [], "none")
        tags = sidecar.read_caption(cap)
        return FileKeywords(tags, [], [], [], "txt")
    if where == "sidecar" and sidecar.find_sidecar(path, sidecar_style) is None:
        return FileKeywords([], [], [], [], "none")
    box = _open(path, where, sidecar_style)
    doc = box.doc
    current = box.current_keywords()
    hier = doc.get_array(NS_LR, "hierarchicalSubject") or []
    owned = [k for k in _unique(doc.get_array(NS_RTAGX, "Keywords") or []) if k in current]
    owned_h = [k for k in _unique(doc.get_array(NS_RTAGX, "HierarchicalKeywords") or []) if k in hier]
    source = box.kind if (current or hier or box.kind == "sidecar") else "none"
    return FileKeywords(current, hier, owned, owned_h, source)


def write_keywords(
    path: Path,
    keywords: Sequence[str],
    *,
    hierarchical: Sequence[str] = (),
    mode: str = "replace-own",
    target: str = "auto",
    sidecar_style: str = "ext",
    caption_ext: str = ".txt",
    keyword_root: str | None = None,
    preserve_mtime: bool = False,
    dry_run: bool = False,
) -> WriteResult:
    """Write ``keywords`` (and hierarchy) by ``mode``; nothing is written when nothing would change."""
    path = Path(path)
    _check_choice(mode, MODES, "mode")
    _check_choice(sidecar_style, SIDECAR_STYLES, "sidecar style")
    where = resolve_target(path, target)
    flat = _unique([clean_keyword(k) for k in keywords])
    if where == "none":
        return WriteResult(path, None, "none", [], [], False, [])
    if where == "txt":
        return _write_caption(path, flat, mode, caption_ext, preserve_mtime, dry_run)
    hier = _hierarchy(flat, hierarchical, keyword_root)
    return _write(path, where, sidecar_style, flat, hier, mode, preserve_mtime, dry_run)


def add_person_keywords(
    path: Path,
    keywords: Sequence[str],
    *,
    hierarchical: Sequence[str] = (),
    target: str = "auto",
    sidecar_style: str = "ext",
    caption_ext: str = ".txt",
    preserve_mtime: bool = False,
    dry_run: bool = False,
) -> WriteResult:
    """Add ``keywords`` as a person's (typed by hand, say in ``rtagx review``): written like rtagx's
    (IPTC + XMP, or the sidecar) but never recorded as rtagx's, so no later run removes them. A keyword
    rtagx had written is handed over: it stays in the file and leaves rtagx's record. Nothing else
    changes. Caption files hold no ownership record: there the keywords are merged in."""
    path = Path(path)
    _check_choice(sidecar_style, SIDECAR_STYLES, "sidecar style")
    where = resolve_target(path, target)
    flat = _unique([clean_keyword(k) for k in keywords])
    if where == "none" or not flat:
        return WriteResult(path, None, where, [], [], False, [])
    if where == "txt":
        return _write_caption(path, flat, "merge", caption_ext, preserve_mtime, dry_run)
    hier = _hierarchy(flat, hierarchical, None)
    return _write(path, where, sidecar_style, [], [], "merge", preserve_mtime, dry_run, person=(flat, hier))


def remove_own_keywords(
    path: Path,
    *,
    target: str = "auto",
    sidecar_style: str = "ext",
    preserve_mtime: bool = False,
    dry_run: bool = False,
    caption_ext: str = ".txt",
) -> WriteResult:
    """Remove exactly the keywords rtagx wrote, and its private record. A person's keywords stay."""
    path = Path(path)
    _check_choice(sidecar_style, SIDECAR_STYLES, "sidecar style")
    where = resolve_target(path, target)
    if where == "none":
        return WriteResult(path, None, "none", [], [], False, [])
    if where == "txt":
        return _remove_caption(path, caption_ext, dry_run)
    if where == "sidecar" and sidecar.find_sidecar(path, sidecar_style) is None:
        return WriteResult(path, None, "sidecar", [], [], False, [])
    return _write(path, where, sidecar_style, [], [], "replace-own", preserve_mtime, dry_run, only_own=True)


WRITE_TRIES = 5  # re-reads after another program changed the file under us, before giving up


def _retrying(attempt: Callable[[], WriteResult]) -> WriteResult:
    """Run a read-edit-write ``attempt`` again from a fresh read when the file changed while it ran,
    so another program's edit is never overwritten; skip as ``changed-during-write`` after a few tries."""
    for tries_left in range(WRITE_TRIES - 1, -1, -1):
        try:
            return attempt()
        except ChangedDuringWrite:
            if not tries_left:
                raise
            time.sleep(0.01 * (WRITE_TRIES - tries_left))
    raise AssertionError("unreachable")


def _write(
    path: Path,
    where: str,
    style: str,
    flat: list[str],
    hier: list[str],
    mode: str,
    preserve_mtime: bool,
    dry_run: bool,
    *,
    only_own: bool = False,
    person: tuple[list[str], list[str]] = ([], []),
) -> WriteResult:
    def attempt() -> WriteResult:
        box = _open(path, where, style)
        if only_own and not any(
            box.doc.get_array(NS_RTAGX, n) for n in ("Keywords", "HierarchicalKeywords", "Created")
        ):
            # Nothing of rtagx's here: removing it changes nothing (no reconciling a person's fields).
            return WriteResult(path, None, where, [], [], False, box.current_keywords(), list(box.warnings))
        plan = _plan(box, flat, hier, mode, *person)
        if plan.changed:
            if dry_run:
                check_writable(box.path)  # a dry run reports what the real run would skip
            else:
                box.save(plan, preserve_mtime)
        return WriteResult(
            path,
            box.path if plan.changed else None,
            where,
            plan.added,
            plan.removed,
            plan.changed,
            plan.keywords,
            list(box.warnings),
        )

    return _retrying(attempt)


# ------------------------------------------------------------------ txt captions


def _write_caption(
    path: Path, flat: list[str], mode: str, caption_ext: str, preserve_mtime: bool, dry_run: bool
) -> WriteResult:
    """Caption files hold no ownership record: they are rtagx output, so replace-own replaces them."""
    for k in flat:
        if "," in k:
            raise MetadataError("bad-keyword", f"keyword {k!r} holds ',', the caption file separator")
    cap = sidecar.caption_path(path, caption_ext)

    def attempt() -> WriteResult:
        state = FileState.at(cap)
        existing = sidecar.read_caption(cap) if state is not None else None
        before = existing or []
        new = _unique(before + flat) if mode == "merge" else flat
        changed = new != before or (existing is None and bool(new))
        added = [k for k in new if k not in before]
        removed = [k for k in before if k not in new]
        if changed and dry_run:
            check_writable(cap)
        elif changed:
            atomic_write(
                cap,
                sidecar.format_caption(new).encode("utf-8"),
                preserve_mtime=preserve_mtime,
                mode_like=None if existing is not None else path,
                expect=state,
            )
        return WriteResult(path, cap if changed else None, "txt", added, removed, changed, new)

    return _retrying(attempt)


def _remove_caption(path: Path, caption_ext: str, dry_run: bool) -> WriteResult:
    cap = sidecar.caption_path(path, caption_ext)
    if not cap.is_file():
        return WriteResult(path, None, "txt", [], [], False, [])
    removed = sidecar.read_caption(cap)
    if not dry_run:
        try:
            cap.unlink()
        except OSError as e:
            raise MetadataError(
                "read-only" if isinstance(e, PermissionError) else "write-failed", f"cannot remove {cap}: {e.strerror}"
            ) from None
    return WriteResult(path, cap, "txt", [], removed, True, [])
