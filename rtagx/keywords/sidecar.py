"""Where sidecars live: XMP sidecars (``IMG_1.CR2.xmp`` or ``IMG_1.xmp``) and ``.txt`` captions."""

from __future__ import annotations

from pathlib import Path


def sidecar_path(path: Path, style: str = "ext") -> Path:
    """The sidecar name a new sidecar gets: ``ext`` keeps the photo's extension (darktable, digiKam)."""
    if style == "stem":
        return path.with_suffix(".xmp")
    return path.with_name(path.name + ".xmp")


def find_sidecar(path: Path, style: str = "ext") -> Path | None:
    """An existing sidecar of either style (the preferred style first), or None."""
    first, second = ("stem", "ext") if style == "stem" else ("ext", "stem")
    for s in (first, second):
        base = sidecar_path(path, s)
        for cand in (base, base.with_suffix(".XMP")):
            if cand != path and cand.is_file():
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
