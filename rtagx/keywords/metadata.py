"""Read and write keywords the way photo tools read them, safely, owning only what rtagx wrote.

Fields (Metadata Working Group guidance):
- JPEG: IPTC-IIM 2:25 Keywords (UTF-8 declared with 1:90 = ESC % G; keywords over 64 bytes cut at a
  character boundary) in the Photoshop APP13 block, and XMP dc:subject (rdf:Bag). TIFF: the same
  through exiv2. PNG and WebP: XMP only.
- lr:hierarchicalSubject (rdf:Bag) when rtagx has hierarchy to write or the file already has it;
  created with the file's flat keywords carried in as top-level entries.
- Fields that already exist are kept in step: digiKam:TagsList, MicrosoftPhoto:LastKeywordXMP and
  LastKeywordIPTC, mediapro:CatalogSets. EXIF XPKeywords is left alone (changing it needs an EXIF
  rewrite); it is reported in ``WriteResult.warnings``.
- rtagx records what it wrote in its own namespace (``rtagx:Keywords``, ``rtagx:HierarchicalKeywords``
  under ``http://ns.rtagx.dev/1.0/``), so replace-own and remove never touch a person's keyword.

Ownership rules: rtagx only ever removes keywords listed in its record; a keyword that was already
present and not rtagx's never becomes rtagx's (same text or not). A lr:hierarchicalSubject that
rtagx created is noted in ``rtagx:Created`` and taken away again once it holds no hierarchy.
``.txt`` captions have no room for a record: they are treated as rtagx output (replace-own replaces
the list, merge adds, remove deletes the caption file).

Safety: JPEGs are edited segment by segment (:mod:`rtagx.jpeg_segments`): EXIF, maker notes, ICC and
the scan data keep their exact bytes. TIFF/PNG/WebP go through exiv2 on a temporary copy. Every
write goes to a temporary file in the same folder, is fsynced and ``os.replace``d over the original
with its permissions kept. When nothing would change, nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rtagx.errors import DecodeError, MetadataError, UsageError
from rtagx.imaging.formats import EMBED_EXTENSIONS, RAW_EXTENSIONS, identify
from rtagx.keywords import iptc, sidecar, xmp
from rtagx.keywords import jpeg_segments as jpeg
from rtagx.keywords.xmp import NS_DC, NS_DIGIKAM, NS_LR, NS_MEDIAPRO, NS_MSPHOTO, NS_RTAGX, XmpDoc
from rtagx.settings import CHOICES

TARGETS = CHOICES["write"]
MODES = CHOICES["mode"]
SIDECAR_STYLES = CHOICES["sidecar_style"]

HIERARCHY_SEPARATOR = "|"
WARN_XPKEYWORDS = "exif-xpkeywords-not-updated"
WARN_IPTC_UNREADABLE = "iptc-unreadable-left-untouched"
_EXIF_XPKEYWORDS = 0x9C9E
# Keyword fields kept in step when they already exist: (namespace, name, hierarchy separator or None).
_SYNCED_FIELDS = (
    (NS_DIGIKAM, "TagsList", "/"),
    (NS_MSPHOTO, "LastKeywordXMP", "/"),
    (NS_MSPHOTO, "LastKeywordIPTC", None),
    (NS_MEDIAPRO, "CatalogSets", "|"),
)
_LR_FIELD = "lr:hierarchicalSubject"  # recorded in rtagx:Created when rtagx made the field
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
    """``auto`` -> ``embed`` for JPEG/TIFF/PNG/WebP, ``sidecar`` for everything else (RAW never embedded)."""
    if target not in TARGETS:
        raise UsageError(f"unknown write target {target!r} (choose from {', '.join(TARGETS)})")
    ext = Path(path).suffix.lower()
    if target == "auto":
        return "embed" if ext in EMBED_EXTENSIONS else "sidecar"
    if target == "embed" and ext not in EMBED_EXTENSIONS:
        why = (
            "rtagx never writes into raw files"
            if ext in RAW_EXTENSIONS
            else "keywords can only be embedded into JPEG, TIFF, PNG and WebP"
        )
        raise MetadataError(
            "unsupported-format", f"cannot embed keywords into {ext or 'this'} file: {why}; use a sidecar"
        )
    return target


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
    already present and not rtagx's never becomes rtagx's."""
    owned_now = [k for k in _unique(owned) if k in current]
    if mode == "merge":
        removed: list[str] = []
    elif mode == "replace-own":
        removed = [k for k in owned_now if k not in chosen]
    else:
        removed = _unique([k for k in current if k not in chosen])
    kept = [k for k in current if k not in removed]
    added = [k for k in chosen if k not in kept]
    new = kept + added
    new_owned = _unique([k for k in new if k in owned_now or k in added])
    return _Diff(new, new_owned, added, removed)


# ------------------------------------------------------------------ containers


class _Container:
    """One place keywords live: an embedded packet (with IPTC where the format has it) or a sidecar."""

    kind = "embedded"
    has_iptc = False

    def __init__(self, path: Path, doc: XmpDoc) -> None:
        self.path = path
        self.doc = doc
        self.warnings: list[str] = []

    def current_keywords(self) -> list[str]:
        return self.doc.get_array(NS_DC, "subject") or []

    def iptc_in_sync(self, keywords_: list[str]) -> bool:
        return True

    def save(self, doc: XmpDoc, keywords_: list[str], iptc_changed: bool, preserve_mtime: bool) -> None:
        raise NotImplementedError


class _JpegContainer(_Container):
    has_iptc = True

    def __init__(self, path: Path, data: bytes) -> None:
        try:
            self.parts = jpeg.parse(data)
        except jpeg.JpegFormatError as e:
            raise MetadataError("corrupt", f"JPEG header cannot be parsed: {e}") from None
        packet = self.parts.xmp_packet()
        super().__init__(path, _parse_embedded_xmp(packet, path))
        self.resources: list[iptc.Resource] = []
        self.irb_tail = b""
        self.datasets: list[iptc.Dataset] | None = None
        self.digest_mismatch = False
        if any(jpeg.exif_has_tag(p, _EXIF_XPKEYWORDS) for p in self.parts.exif_payloads()):
            self.warnings.append(WARN_XPKEYWORDS)
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
        """MWG: XMP wins unless a Photoshop digest exists and no longer matches the IPTC block."""
        from_xmp = self.doc.get_array(NS_DC, "subject")
        from_iptc = self.iptc_keywords()
        if from_iptc is not None and (self.digest_mismatch or from_xmp is None):
            return from_iptc
        return from_xmp or []

    def iptc_in_sync(self, keywords_: list[str]) -> bool:
        wanted = iptc.iptc_keyword_values(keywords_)
        if self.datasets is None:
            return not wanted
        if self.digest_mismatch:
            return False
        have = self.iptc_keywords() or []
        if have != wanted:
            return False
        return not have or iptc.is_utf8(self.datasets)

    def save(self, doc: XmpDoc, keywords_: list[str], iptc_changed: bool, preserve_mtime: bool) -> None:
        packet = _fit_packet(doc)
        irb = None
        if iptc_changed:
            datasets = iptc.set_keywords(self.datasets or [], keywords_)
            resources = iptc.replace_iptc(self.resources, iptc.build_iim(datasets))
            irb = iptc.build_irb(resources, self.irb_tail)
        try:
            data = jpeg.splice(self.parts, xmp_packet=packet, irb=irb).to_bytes()
        except jpeg.JpegFormatError as e:
            raise MetadataError("write-failed", str(e)) from None
        _atomic_write(self.path, lambda f, _tmp: f.write(data), preserve_mtime=preserve_mtime)


class _Exiv2Container(_Container):
    """TIFF (XMP + IPTC), PNG and WebP (XMP only) through exiv2, always on a temporary copy."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.fmt = fmt
        self.has_iptc = fmt == "tiff"
        raw_xmp, iptc_data = _exiv2_read(path, want_iptc=self.has_iptc)
        super().__init__(path, _parse_embedded_xmp(raw_xmp.encode("utf-8") if raw_xmp else None, path))
        self.iptc_kw: list[str] | None = None
        self.iptc_utf8 = False
        if iptc_data:
            self.iptc_utf8 = iptc_data.get("Iptc.Envelope.CharacterSet") == "\x1b%G"
            kws = iptc_data.get("Iptc.Application2.Keywords")
            if kws is not None:
                kws = [kws] if isinstance(kws, str) else list(kws)
                self.iptc_kw = [iptc.decode_text(k.encode("latin-1"), self.iptc_utf8) for k in kws]

    def current_keywords(self) -> list[str]:
        from_xmp = self.doc.get_array(NS_DC, "subject")
        if from_xmp is None and self.iptc_kw is not None:
            return self.iptc_kw
        return from_xmp or []

    def iptc_in_sync(self, keywords_: list[str]) -> bool:
        if not self.has_iptc:
            return True
        wanted = iptc.iptc_keyword_values(keywords_)
        have = self.iptc_kw or []
        return have == wanted and (not have or self.iptc_utf8)

    def save(self, doc: XmpDoc, keywords_: list[str], iptc_changed: bool, preserve_mtime: bool) -> None:
        packet = doc.packet().decode("utf-8")
        source = self.path

        def fill(f, tmp: str) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, f)
            f.flush()
            with _EXIV2_LOCK:
                img = _exiv2_open(Path(tmp))
                try:
                    img.modify_raw_xmp(packet)
                    if iptc_changed:
                        values = iptc.iptc_keyword_values(keywords_)
                        img.modify_iptc(
                            {"Iptc.Envelope.CharacterSet": "\x1b%G", "Iptc.Application2.Keywords": values or None}
                        )
                except Exception as e:  # pyexiv2 raises RuntimeError with exiv2's message
                    raise MetadataError("write-failed", f"exiv2 could not write: {e}") from None
                finally:
                    img.close()

        _atomic_write(self.path, fill, preserve_mtime=preserve_mtime)


class _SidecarContainer(_Container):
    kind = "sidecar"

    def __init__(self, path: Path, photo: Path) -> None:
        self.exists = path.is_file()
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
        super().__init__(path, doc)

    def save(self, doc: XmpDoc, keywords_: list[str], iptc_changed: bool, preserve_mtime: bool) -> None:
        data = doc.sidecar_bytes()
        _atomic_write(
            self.path,
            lambda f, _tmp: f.write(data),
            preserve_mtime=preserve_mtime,
            mode_like=None if self.exists else self.photo,
        )


def _parse_embedded_xmp(packet: bytes | None, path: Path) -> XmpDoc:
    if not packet or not packet.strip(b"\x00 \t\r\n"):
        return XmpDoc.new()
    try:
        return XmpDoc.parse(packet)
    except xmp.XmpError as e:
        raise MetadataError("bad-xmp", f"the file's XMP packet cannot be parsed ({e}); left untouched") from None


def _fit_packet(doc: XmpDoc) -> bytes:
    """A packet that fits one JPEG APP1 segment: shrink the padding before giving up."""
    for pad in (xmp.DEFAULT_PADDING, 512, 0):
        packet = doc.packet(padding=pad)
        if len(packet) <= jpeg.MAX_XMP_PACKET:
            return packet
    raise MetadataError("write-failed", "the XMP packet would exceed the 64 KB JPEG segment limit")


def _sniff(data: bytes) -> str | None:
    """The container of a file whose keywords are embedded: "jpeg", "png", "webp", "tiff" or None."""
    try:
        fmt = identify(data)
    except DecodeError:
        return None
    return fmt.lower() if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else None


def _exiv2_open(path: Path):
    import pyexiv2

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
            head = f.read(16)
            fmt = _sniff(head)
            if fmt == "jpeg":
                return _JpegContainer(path, head + f.read())
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
    return _SidecarContainer(found or sidecar.sidecar_path(path, style), path)


# ------------------------------------------------------------------ atomic write


TEMP_SUFFIX = ".rtagx-tmp"
_cleaned_folders: set[str] = set()


def _short_name(name: str, limit: int = 100) -> str:
    """The photo's name cut to ``limit`` bytes on a character boundary: a 255-byte name plus the
    temporary suffix would exceed the file system's name limit."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    return os.fsdecode(raw[:limit].decode("utf-8", "ignore").encode("utf-8")) or "photo"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder: Path) -> int:
    """Remove dead writers' temporary files in ``folder`` now (the scanner calls this for folders
    where it saw one); unlike the check before each write, not limited to once per process."""
    _cleaned_folders.discard(os.fspath(folder))
    return _clean_stale_temps(folder)


def _clean_stale_temps(folder: Path) -> int:
    """Remove temporary files a killed rtagx left in ``folder`` (``.NAME.PID.XXXX.rtagx-tmp`` whose
    process is gone), once per folder per process. The originals were never touched by them."""
    key = os.fspath(folder)
    if key in _cleaned_folders:
        return 0
    _cleaned_folders.add(key)
    removed = 0
    try:
        entries = os.listdir(folder)
    except OSError:
        return 0
    for entry in entries:
        if not (entry.startswith(".") and entry.endswith(TEMP_SUFFIX)):
            continue
        parts = entry[: -len(TEMP_SUFFIX)].split(".")
        pid = next((int(p) for p in reversed(parts[:-1]) if p.isdigit()), None)
        if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
            continue
        if pid is None:  # an older rtagx's name without a pid: remove only when clearly stale
            try:
                if time.time() - os.stat(os.path.join(folder, entry)).st_mtime < 3600:
                    continue
            except OSError:
                continue
        try:
            os.unlink(os.path.join(folder, entry))
            removed += 1
        except OSError:
            pass
    return removed


def _atomic_write(dest: Path, fill: Callable, *, preserve_mtime: bool = False, mode_like: Path | None = None) -> None:
    """Write through a temporary file in the same folder, fsync, then replace ``dest`` in one step.

    Permissions and ownership of the file being replaced are kept (a new file takes the photo's,
    without execute bits). ``fill(file, tmp_path)`` writes the content.
    """
    dest = Path(os.path.realpath(dest))
    folder = dest.parent
    old = _check_writable(dest)
    try:
        _clean_stale_temps(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{_short_name(dest.name)}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=folder)
    except PermissionError as e:
        raise MetadataError("read-only", f"cannot create a file in {folder}: {e.strerror}") from None
    except OSError as e:
        raise MetadataError("write-failed", f"cannot create a temporary file in {folder}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f, tmp)
            f.flush()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if old is not None:
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
            if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(OSError):
                    os.chown(tmp, old.st_uid, old.st_gid)
            if preserve_mtime:
                os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))
        else:
            like = stat.S_IMODE(os.stat(mode_like).st_mode) & 0o666 if mode_like is not None else 0o644
            os.chmod(tmp, like | 0o600)
        os.replace(tmp, dest)
        _fsync_dir(folder)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, MetadataError):
            raise
        if isinstance(e, PermissionError):
            raise MetadataError("read-only", f"cannot write {dest}: {e.strerror}") from None
        if isinstance(e, OSError):
            raise MetadataError("write-failed", f"cannot write {dest}: {e.strerror or e}") from None
        raise


def _check_writable(dest: Path) -> os.stat_result | None:
    """Refuse read-only files and folders up front (mode bits too: root passes os.access checks).

    Returns the stat of the existing file, or None for a new one.
    """
    dest = Path(os.path.realpath(dest))
    folder = dest.parent
    old = None
    try:
        old = os.stat(dest)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise MetadataError("write-failed", f"cannot stat {dest}: {e.strerror}") from None
    if old is not None and (not old.st_mode & 0o222 or not os.access(dest, os.W_OK)):
        raise MetadataError("read-only", f"{dest} is read-only")
    try:
        folder_mode = os.stat(folder).st_mode
    except OSError as e:
        raise MetadataError("write-failed", f"cannot stat folder {folder}: {e.strerror}") from None
    if not folder_mode & 0o222 or not os.access(folder, os.W_OK | os.X_OK):
        raise MetadataError(
            "read-only", f"folder {folder} is not writable (rtagx writes a temporary file beside the photo)"
        )
    return old


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------ planning


@dataclass
class _Plan:
    doc: XmpDoc
    keywords: list[str]
    added: list[str]
    removed: list[str]
    xmp_changed: bool
    iptc_changed: bool

    @property
    def changed(self) -> bool:
        return self.xmp_changed or self.iptc_changed


def _plan(box: _Container, chosen: list[str], chosen_hier: list[str], mode: str) -> _Plan:
    doc = box.doc
    current = box.current_keywords()
    owned = doc.get_array(NS_RTAGX, "Keywords") or []
    owned_h = doc.get_array(NS_RTAGX, "HierarchicalKeywords") or []
    hier_field = doc.get_array(NS_LR, "hierarchicalSubject")

    flat = _apply(current, owned, chosen, mode)
    if hier_field is None:  # carry the flat keywords in as top-level entries
        cur_h, owned_h = list(current), _unique(owned_h + [k for k in owned if k in current])
    else:
        cur_h = hier_field
    hier = _apply(cur_h, owned_h, chosen_hier, mode)
    has_hierarchy = any(HIERARCHY_SEPARATOR in h for h in hier.new)
    created = doc.get_array(NS_RTAGX, "Created") or []
    if hier_field is None and has_hierarchy:
        created = _unique([*created, _LR_FIELD])
    write_hier = hier_field is not None or has_hierarchy
    if hier_field is not None and _LR_FIELD in created and not has_hierarchy:
        hier.new, hier.owned = [], []  # rtagx created it and it holds no hierarchy any more: take it away
        created = [c for c in created if c != _LR_FIELD]
    if hier_field is None and not has_hierarchy:
        created = [c for c in created if c != _LR_FIELD]

    wanted: dict[tuple[str, str], tuple[list[str], str]] = {
        (NS_DC, "subject"): (flat.new, "Bag"),
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
        conv = (lambda s, sep=sep: s.replace(HIERARCHY_SEPARATOR, sep)) if sep else (lambda s: s)
        removed = {conv(x) for x in (hier.removed if sep else flat.removed)}
        added = [conv(x) for x in (hier.added if sep else flat.added)]
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
    iptc_changed = box.has_iptc and not box.iptc_in_sync(flat.new)
    return _Plan(doc, flat.new, flat.added, flat.removed, xmp_changed, iptc_changed)


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
    return _write(path, where, sidecar_style, [], [], "replace-own", preserve_mtime, dry_run)


def _write(
    path: Path, where: str, style: str, flat: list[str], hier: list[str], mode: str, preserve_mtime: bool, dry_run: bool
) -> WriteResult:
    box = _open(path, where, style)
    plan = _plan(box, flat, hier, mode)
    result = WriteResult(
        path,
        box.path if plan.changed else None,
        where,
        plan.added,
        plan.removed,
        plan.changed,
        plan.keywords,
        list(box.warnings),
    )
    if plan.changed:
        if dry_run:
            _check_writable(box.path)  # a dry run reports what the real run would skip
        else:
            box.save(plan.doc, plan.keywords, plan.iptc_changed, preserve_mtime)
    return result


# ------------------------------------------------------------------ txt captions


def _write_caption(
    path: Path, flat: list[str], mode: str, caption_ext: str, preserve_mtime: bool, dry_run: bool
) -> WriteResult:
    """Caption files hold no ownership record: they are rtagx output, so replace-own replaces them."""
    for k in flat:
        if "," in k:
            raise MetadataError("bad-keyword", f"keyword {k!r} holds ',', the caption file separator")
    cap = sidecar.caption_path(path, caption_ext)
    existing = sidecar.read_caption(cap) if cap.is_file() else None
    before = existing or []
    new = _unique(before + flat) if mode == "merge" else flat
    changed = new != before or (existing is None and bool(new))
    added = [k for k in new if k not in before]
    removed = [k for k in before if k not in new]
    if changed and dry_run:
        _check_writable(cap)
    elif changed:
        text = sidecar.format_caption(new).encode("utf-8")
        _atomic_write(
            cap,
            lambda f, _tmp: f.write(text),
            preserve_mtime=preserve_mtime,
            mode_like=None if existing is not None else path,
        )
    return WriteResult(path, cap if changed else None, "txt", added, removed, changed, new)


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
