"""Where sidecars live: XMP sidecars (``IMG_1.CR2.xmp`` or ``IMG_1.xmp``) and ``.txt`` captions."""

from __future__ import annotations

from pathlib import Path

from rtagx.imaging.formats import RAW_EXTENSIONS


def _has_raw_sibling(path: Path) -> bool:
    """A raw file with the same name stem sits beside this non-raw photo (a camera's RAW+HEIF or
    RAW+JPEG pair): the stem-named sidecar ``IMG_1.xmp`` is that raw file's (Lightroom, Capture
    One), so this photo must neither write into it nor read it as its own."""
    if path.suffix.lower() in RAW_EXTENSIONS:
        return False
    return any(path.with_suffix(e).is_file() for ext in RAW_EXTENSIONS for e in (ext, ext.upper()))


def sidecar_path(path: Path, style: str = "ext") -> Path:
    """The sidecar name a new sidecar gets: ``ext`` keeps the photo's extension (darktable, digiKam);
    ``stem`` drops it (Lightroom, Capture One), except beside a raw file of the same stem."""
    if style == "stem" and not _has_raw_sibling(path):
        return path.with_suffix(".xmp")
    return path.with_name(path.name + ".xmp")


def find_sidecar(path: Path, style: str = "ext") -> Path | None:
    """An existing sidecar of either style (the preferred style first), or None. A stem-named one
    counts only when no raw file of the same stem owns it."""
    first, second = ("stem", "ext") if style == "stem" else ("ext", "stem")
    for s in (first, second):
        base = path.with_suffix(".xmp") if s == "stem" else path.with_name(path.name + ".xmp")
        for cand in (base, base.with_suffix(".XMP")):
            if cand != path and cand.is_file() and (s == "ext" or not _has_raw_sibling(path)):
                return cand
    return None


def caption_path(path: Path, caption_ext: str = ".txt") -> Path:
    ext = caption_ext if caption_ext.startswith(".") else "." + caption_ext
    return path.with_suffix(ext)


def read_caption(path: Path) -> list[str]:
    """Comma-separated tags of a caption file (dataset style), empty items dropped."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    return [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]


def format_caption(tags: list[str]) -> str:
    return ", ".join(tags) + "\n" if tags else ""
