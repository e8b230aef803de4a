"""The one table of image formats: which extensions the scanner picks up, which of them are camera
RAW, HEIF or AVIF, which containers take embedded keywords, and how a file's first bytes identify
its format whatever its name says. Decoding, scanning and keyword writing all read this module."""

from __future__ import annotations

from PIL import features

from rtagx.errors import DecodeError

#: Camera RAW files (LibRaw reads them; keywords go to XMP sidecars, as exiftool and Lightroom do).
RAW_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".3fr",
        ".ari",
        ".arw",
        ".bay",
        ".cr2",
        ".cr3",
        ".crw",
        ".dcr",
        ".dng",
        ".erf",
        ".fff",
        ".iiq",
        ".k25",
        ".kdc",
        ".mef",
        ".mos",
        ".mrw",
        ".nef",
        ".nrw",
        ".orf",
        ".pef",
        ".raf",
        ".raw",
        ".rw2",
        ".rwl",
        ".sr2",
        ".srf",
        ".srw",
        ".x3f",
    }
)
HEIF_EXTENSIONS: frozenset[str] = frozenset({".heic", ".heif", ".hif", ".heics", ".heifs"})
AVIF_EXTENSIONS: frozenset[str] = frozenset({".avif", ".avifs"})
JPEG_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
TIFF_EXTENSIONS: frozenset[str] = frozenset({".tif", ".tiff"})
PILLOW_EXTENSIONS: frozenset[str] = (
    JPEG_EXTENSIONS | TIFF_EXTENSIONS | {".png", ".apng", ".webp", ".bmp", ".dib", ".gif"}
)
JP2_EXTENSIONS: frozenset[str] = frozenset({".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx"})
JXL_EXTENSIONS: frozenset[str] = frozenset({".jxl"})

#: Every extension the scanner should pick up. HEIF, AVIF, JPEG XL and RAW are listed even when their
#: extra is missing, so that such files are reported as ``needs-extra`` instead of silently ignored.
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    PILLOW_EXTENSIONS
    | (JP2_EXTENSIONS if features.check("jpg_2000") else set())
    | HEIF_EXTENSIONS
    | AVIF_EXTENSIONS
    | JXL_EXTENSIONS
    | RAW_EXTENSIONS
)

#: Containers rtagx writes keywords into (``--write auto`` embeds here, elsewhere writes a sidecar).
EMBED_EXTENSIONS: frozenset[str] = JPEG_EXTENSIONS | TIFF_EXTENSIONS | {".png", ".webp"}

SNIFF_BYTES = 64
#: BigTIFF (64-bit offsets: scans and GIS exports over 4 GB): readable, but exiv2 cannot write into it.
BIGTIFF_MAGIC = (b"II+\x00", b"MM\x00+")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", *BIGTIFF_MAGIC)
_HEIF_BRANDS = {
    b"heic",
    b"heix",
    b"hevc",
    b"hevx",
    b"heim",
    b"heis",
    b"hevm",
    b"hevs",
    b"mif1",
    b"msf1",
    b"mif2",
    b"miaf",
}
_AVIF_BRANDS = {b"avif", b"avis"}
_BMP_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)
_VIDEO_BRANDS = {b"isom", b"iso2", b"mp41", b"mp42", b"qt  ", b"M4V ", b"3gp4", b"3gp5", b"dash", b"avc1"}


def identify(head: bytes, ext: str = "") -> str | None:
    """The container format from a file's first bytes: "JPEG", "PNG", ..., "HEIF", "AVIF", "JXL", "RAW".

    Returns None for content that is no image at all. ``ext`` (lower case, with dot) only decides
    between a plain TIFF and a TIFF-based RAW (DNG, NEF, CR2, ARW, PEF share TIFF's magic).
    Raises DecodeError("unsupported-format") for images we recognise but cannot decode.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00") or head.startswith(b"FUJIFILMCCD-RAW"):
        return "RAW"  # ORF, RW2, RAF: TIFF-like but not TIFF
    if head[:2] == b"II" and head[6:14] == b"HEAPCCDR":
        return "RAW"  # CRW
    if head[:4] in _TIFF_MAGIC:
        return "RAW" if ext in RAW_EXTENSIONS else "TIFF"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        if not features.check("jpg_2000"):
            raise DecodeError("unsupported-format", "JPEG 2000, but this Pillow was built without OpenJPEG")
        return "JPEG2000"
    if head[4:8] == b"ftyp":
        return _identify_bmff(head)
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "JXL"
    if head.startswith(b"8BPS"):
        raise DecodeError("unsupported-format", "a Photoshop document (PSD): export it as JPEG or TIFF")
    if head.startswith(b"%PDF"):
        raise DecodeError("unsupported-format", "a PDF document, not an image")
    return None


def _identify_bmff(head: bytes) -> str:
    """ISO base media files: HEIF, AVIF, Canon CR3, or a video."""
    size = int.from_bytes(head[:4], "big")
    major = head[8:12]
    brands = {major} | {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    if major == b"crx ":
        return "RAW"
    if major in _AVIF_BRANDS or (b"avif" in brands and not brands & {b"heic", b"heix", b"hevc"}):
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    if brands & _VIDEO_BRANDS:
        raise DecodeError("unsupported-format", f"a video or other media file (brand {major.decode('latin-1')!r})")
    raise DecodeError("unsupported-format", f"an ISO media file of unknown brand {major.decode('latin-1')!r}")
