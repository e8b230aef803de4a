"""Open any supported image as an RGB array at the model's input size, fast, with clear errors.

One call, :func:`decode_for_model`, turns a file into the ``(size, size, 3)`` uint8 array the image
tower wants, matching open_clip's own eval preprocessing (resize the shorter side with antialiased
bicubic, centre crop) of the fully decoded, EXIF-oriented image to within a grey level or so, while
doing far less work:

* Files are identified by their first bytes, not their extension: a PNG named ``.jpg`` works, a text
  file named ``.jpg`` is skipped as ``not-an-image``.
* JPEG is decoded in draft mode: libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain, to the smallest
  scale that still leaves ``DRAFT_MARGIN`` (1.5) times the resized target, so the final bicubic pass
  stays close to a full-resolution resize. RAW files use their embedded preview JPEG (``raw``).
  HEIF uses an embedded thumbnail only when it is at least ``HEIF_THUMBNAIL_MARGIN`` (8) times the
  resized target, else the primary image: libheif's thumbnails are aliased, and only that much
  further reduction brings them back above the 40 dB this module holds to.
* TIFF: a first page that is a reduced-resolution copy (NewSubfileType) is passed over for the
  first full-resolution page. Whether the loader already applied the EXIF orientation (Pillow's
  TIFF loader does, deleting the tag since Pillow 10 and keeping it before) is read from what the
  loader did, never from a version number, so the orientation is applied exactly once.
* Only the pixels that survive the centre crop are resampled (``resize(box=...)``), and the EXIF
  orientation is applied to the small result, not the full image.
* The megapixel guard is checked from the header, before any pixel is decoded. Pillow's own global
  decompression-bomb limit is bypassed on open (we open through the plugin we sniffed) so that
  ``max_megapixels`` is the one knob; a ``DecompressionBombError`` raised anyway maps to ``too-large``.
* Pillow decodes with the GIL released; this module keeps no per-call global state (only two small
  lock-guarded caches), so :func:`decode_for_model` is safe to call from a thread pool.

Colour: ICC profiles are **respected**. An image whose embedded profile is not sRGB (Adobe RGB,
Display P3, ProPhoto, Apple Generic RGB, grey gamma, CMYK press profiles; "sRGB" is judged by what
the profile does to a probe of colours, not by its name, which linear-light profiles share) is
converted to sRGB with a perceptual-intent littleCMS transform, applied to the small, already-resized
image (cheap; transforms are cached per profile). Tools that save with a profile have converted the pixels into that space, so
ignoring it shifts colours: the orientation samples 2..8 carry Apple's Generic RGB profile and only
match sample 1 (untagged, sRGB) once it is honoured. ``respect_icc=False`` feeds the stored values as
they are, like open_clip's plain ``convert("RGB")``; CMYK is converted through its profile either
way (Pillow's naive CMYK formula is far from what any viewer shows), and without one by that formula.
Colour described without a profile (a HEIF/AVIF ``nclx`` box, PNG ``gAMA``/``cHRM`` without
``iCCP``/``sRGB``) is converted the same way, at the same point, by :mod:`rtagx.imaging.colour`;
a description that means sRGB costs a dict lookup.
Transparency (an alpha channel, a palette entry or a PNG tRNS colour key) is composited over a neutral
grey (``ALPHA_BACKGROUND``), not dropped (dropping it exposes whatever colour the transparent pixels
happen to hold). 16-bit and float images are scaled to 8 bits (a 16-bit "min is white" TIFF inverted
first, which Pillow leaves to the caller), palette and 1-bit images are expanded before resampling.

Errors are :class:`rtagx.errors.DecodeError` with one of these reasons: ``missing``,
``broken-symlink``, ``permission-denied``, ``not-a-file``, ``empty``, ``not-an-image``,
``unsupported-format``, ``needs-extra``, ``too-large``, ``truncated``, ``corrupt``, ``read-error``.
``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set, so a truncated file raises instead of being padded.
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageCms, ImageFile

from rtagx.errors import DecodeError
from rtagx.imaging import colour, heif, jxl, raw
from rtagx.imaging.formats import (
    HEIF_EXTENSIONS,
    RAW_EXTENSIONS,
    SNIFF_BYTES,
    SUPPORTED_EXTENSIONS,
    identify,
)
from rtagx.imaging.geometry import (
    ORIENT_TRANSPOSE,
    PreprocessSpec,
    box_to_source,
    check_megapixels,
    exif_orientation,
    plan,
    swaps_axes,
)
from rtagx.settings import DEFAULT_MAX_MEGAPIXELS  # larger images are skipped as too-large

if TYPE_CHECKING:  # torch is heavy: imported only where a batch is built
    import torch

__all__ = [
    "ALPHA_BACKGROUND",
    "DEFAULT_MAX_MEGAPIXELS",
    "HEIF_EXTENSIONS",
    "RAW_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "PreprocessSpec",
    "decode_for_model",
    "decode_for_models",
    "identify",
    "open_rgb",
    "to_model_batch",
]

#: Transparent pixels are composited over this neutral mid grey.
ALPHA_BACKGROUND: tuple[int, int, int] = (128, 128, 128)

#: JPEG draft headroom: decode at the smallest DCT scale (1/2, 1/4, 1/8) that
#: leaves at least this many times the resized target, so that the final bicubic pass still does a
#: real reduction. 1.0 would be ``draft("RGB", (size, size))`` as is: fastest, but a leftover ratio
#: near 1 (a 640x480 photo for a 224 model decoded at 1/2) turns the DCT's box filter into visible
#: aliasing (about 30 dB against the reference). 1.5 keeps every camera sample >= 38 dB and a
#: 12-MP photo for a 224 model at 1/8 (5-6x faster); 2.0 (Pillow's thumbnail default) gives >= 44 dB
#: but decodes such a photo at 1/4. See bench/decode.py.
DRAFT_MARGIN: float = 1.5

#: HEIF: an embedded thumbnail is used only when its shorter side is at least this many times the
#: resized target; otherwise the primary image is decoded. libheif writes thumbnails with a plain,
#: aliasing downscale: against the full decode, a 12-MP HEIC's thumbnails score 34-35 dB at 1.5-3x
#: the target, 41 dB at 3.4-6x, and 46-52 dB from 6.9x up (64 and 224 px; bench/decode.py's
#: fidelity suite). 8 keeps the 40 dB bound with room to spare and still spares a 12-MP decode for a
#: 64-px model when a 1024-px thumbnail is there. Camera HEICs carry 320-px thumbnails: never used.
HEIF_THUMBNAIL_MARGIN: float = 8.0

#: For formats without DCT scaling: Pillow's ``reducing_gap`` (box-reduce by an integer factor first,
#: then bicubic over at least this gap). None means an exact, slower, full-resolution resize.
REDUCING_GAP: float | None = 3.0

# --------------------------------------------------------------------------------------------------
# The preprocessing contract
# --------------------------------------------------------------------------------------------------


def to_model_batch(images: Sequence[np.ndarray], spec: PreprocessSpec) -> torch.Tensor:
    """Stack ``(size, size, 3)`` uint8 arrays into the normalized float32 NCHW tensor the tower takes.

    Same arithmetic as torchvision's ``ToTensor`` + ``Normalize``: x / 255, minus mean, over std.
    """
    import torch

    if len(images) == 0:
        return torch.empty((0, 3, spec.size, spec.size), dtype=torch.float32)
    for a in images:
        if a.shape != (spec.size, spec.size, 3) or a.dtype != np.uint8:
            raise ValueError(f"expected uint8 {(spec.size, spec.size, 3)}, got {a.dtype} {a.shape}")
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std).contiguous()


def _describe_non_image(head: bytes) -> str:
    """A helpful detail for a file that is not an image: markup, text, or unknown bytes."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith(b"<") and (b"html" in stripped or b"<?xml" in stripped or b"<svg" in stripped):
        return "the file is markup (HTML/XML/SVG), not a raster image"
    text = head[:-4] if len(head) == SNIFF_BYTES else head  # do not judge a cut multi-byte character
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        decoded = ""
    if decoded and all(c.isprintable() or c in "\t\r\n" for c in decoded):
        return "the file is text, not an image"
    return f"content is not a known image format (starts with {head[:8].hex(' ')})"


# --------------------------------------------------------------------------------------------------
# Opening files: every OS-level problem becomes a precise reason
# --------------------------------------------------------------------------------------------------


def _open_file(path: Path) -> IO[bytes]:
    """Open for reading, mapping OS errors to reasons. Directories, FIFOs and devices are refused.

    Opened non-blocking first, so that a FIFO named like a photo cannot hang a run waiting for a
    writer; blocking mode is restored once fstat says it is a regular file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DecodeError("broken-symlink", f"symlink points to a missing file ({os.readlink(path)})") from None
        raise DecodeError("missing", "the file vanished before it could be read") from None
    except PermissionError as e:
        raise DecodeError("permission-denied", f"cannot open for reading: {e.strerror}") from None
    except IsADirectoryError:
        raise DecodeError("not-a-file", "a directory, not an image file") from None
    except NotADirectoryError:
        raise DecodeError("missing", "a parent folder is no longer a folder") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DecodeError("broken-symlink", "symlink loop") from None
        raise DecodeError("read-error", f"cannot open: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise DecodeError("not-a-file", "a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError("not-a-file", "not a regular file (device, pipe or socket)")
        if st.st_size == 0:
            raise DecodeError("empty", "the file is zero bytes long")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_head(f: IO[bytes]) -> bytes:
    try:
        return f.read(SNIFF_BYTES)
    except OSError as e:
        raise DecodeError("read-error", f"cannot read: {e.strerror or e}") from None


_plugins_lock = threading.Lock()
_plugins_ready = False


def _pil_factory(fmt: str) -> Callable[..., ImageFile.ImageFile]:
    global _plugins_ready
    if not _plugins_ready:
        with _plugins_lock:
            Image.init()
            _plugins_ready = True
    try:
        return Image.OPEN[fmt][0]
    except KeyError:
        raise DecodeError("unsupported-format", f"this Pillow build cannot read {fmt}") from None


def _pil_open(f: IO[bytes], fmt: str) -> ImageFile.ImageFile:
    """Open with the plugin the magic bytes named (no guessing, no global bomb limit)."""
    factory = _pil_factory(fmt)
    f.seek(0)
    try:
        return factory(f, "")
    except Image.DecompressionBombError as e:
        raise DecodeError("too-large", str(e)) from None
    except (
        SyntaxError,
        IndexError,
        TypeError,
        ValueError,
        KeyError,
        struct_error,
        EOFError,
        OSError,
        MemoryError,
    ) as e:
        raise _truncated_or(_map_load_error(e, fmt, "header"), f, fmt) from None


def _truncated_or(error: DecodeError, f: IO[bytes], fmt: str) -> DecodeError:
    """A generic "corrupt" becomes "truncated" when the container shows the file was cut short."""
    if error.reason == "corrupt" and _container_truncated(f, fmt):
        return DecodeError("truncated", f"{fmt} file is shorter than its container says ({error.detail})")
    return error


def _map_load_error(e: BaseException, fmt: str, part: str = "data") -> DecodeError:
    """Pillow reports damage as OSError/ValueError text; turn it into truncated / corrupt / too-large."""
    if isinstance(e, DecodeError):
        return e
    if isinstance(e, Image.DecompressionBombError):
        return DecodeError("too-large", str(e))
    if isinstance(e, MemoryError):
        return DecodeError("too-large", f"not enough memory to decode this {fmt}")
    text = str(e) or type(e).__name__
    low = text.lower()
    if (
        isinstance(e, EOFError)
        or "truncated" in low
        or "premature end" in low
        or "not enough data" in low
        or "buffer is not large enough" in low
        or "end of file" in low
    ):
        return DecodeError("truncated", f"{fmt} {part} ends early: {text}")
    if "unknown pixel mode" in low:  # a well-formed TIFF whose sample layout Pillow has no mode for
        return DecodeError(
            "unsupported-format", f"{fmt} pixel layout this decoder cannot read, e.g. floating-point colour ({text})"
        )
    if "too large" in low or "exceeds limit" in low:  # e.g. a PNG text-chunk bomb
        return DecodeError("too-large", f"{fmt} {part}: {text}")
    if isinstance(e, OSError) and e.errno is not None:
        return DecodeError("read-error", f"I/O error while reading: {e.strerror or text}")
    return DecodeError("corrupt", f"{fmt} {part} is damaged: {text}")


# --------------------------------------------------------------------------------------------------
# Colour: modes to something resample() handles, ICC to sRGB, alpha over grey
# --------------------------------------------------------------------------------------------------


def _to_resample_mode(im: Image.Image) -> Image.Image:
    """Bring any decoded mode to one of L, LA, RGB, RGBA, CMYK (resampling palettes would be nearest)."""
    mode = im.mode
    key = im.info.get("transparency")
    if key is not None and mode in ("L", "RGB"):  # PNG tRNS colour key: that colour is transparent
        return im.convert(mode + "A")
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")
        return im.convert("RGBA" if has_alpha else "RGB")
    if mode in ("RGBa", "La"):
        return im.convert(mode[:-1] + "A")
    if mode in ("RGBX", "YCbCr", "HSV"):
        return im.convert("RGB")
    if mode == "LAB":
        return _lab_to_rgb(im)
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _high_depth_to_l(im)
        if isinstance(key, int) and mode != "F":  # 16-bit grey PNG with a tRNS grey level
            alpha = np.where(np.asarray(im) == key, 0, 255).astype(np.uint8)
            return Image.merge("LA", (grey, Image.fromarray(alpha)))
        return grey
    return im.convert("RGB")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit grey to 8 bits by scaling (Pillow's convert("L") would clip at 255)."""
    a = np.asarray(im)
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32))
        top = float(a.max()) if a.size else 1.0
        scale = 255.0 if top <= 1.0 else 255.0 / top
        out = np.clip(a * scale + 0.5, 0, 255).astype(np.uint8)
    else:
        a = a.astype(np.int64)
        top = int(a.max()) if a.size else 0
        if top <= 255 and im.mode == "I":  # 8-bit data stored in a 32-bit container
            out = np.clip(a, 0, 255).astype(np.uint8)
        elif top <= 65535:
            out = ((np.clip(a, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        else:
            out = (np.clip(a, 0, None) * 255 // max(top, 1)).astype(np.uint8)
    return Image.fromarray(out, "L")


def _lab_to_rgb(im: Image.Image) -> Image.Image:
    try:
        lab = ImageCms.createProfile("LAB")
        srgb = ImageCms.createProfile("sRGB")
        transform = ImageCms.buildTransform(lab, srgb, "LAB", "RGB")
        return ImageCms.applyTransform(im, transform)  # type: ignore[return-value]
    except Exception as e:
        raise DecodeError("unsupported-format", f"cannot convert a CIELAB image: {e}") from None


_SRGB_PROFILE = None
_icc_lock = threading.Lock()
_icc_cache: OrderedDict[tuple[bytes, str], Any] = OrderedDict()
_ICC_CACHE_SIZE = 32

#: An embedded RGB profile counts as sRGB (pixels used as stored) when a relative-colorimetric
#: transform through it to sRGB moves no probe colour by more than this many levels. Real sRGB
#: profiles (HP's IEC61966-2.1, littleCMS's built-in) move at most 1; a gamma-2.2 curve on sRGB
#: primaries moves 9, a linear-light one 73.
SRGB_TOLERANCE = 2


def _srgb_probe() -> Image.Image:
    """An RGB grid (18 levels per channel) plus the full grey ramp: what :func:`_renders_as_srgb` converts."""
    levels = np.linspace(0, 255, 18).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    return Image.fromarray(np.ascontiguousarray(np.concatenate([grid, ramp])[None]), "RGB")


def _renders_as_srgb(profile: ImageCms.ImageCmsProfile, srgb: ImageCms.ImageCmsProfile) -> bool:
    """Whether an RGB profile is sRGB, judged by what it does to colours, never by its name.

    A description says little: "sRGB linear", "sRGB-elle-V4-g10" or "Linear Rec709 (sRGB)" name
    linear-light profiles (16-bit and float exports from darktable, RawTherapee, Affinity) whose
    pixels shown as sRGB are far too dark. Costs one small transform per new profile (cached).
    """
    probe = _srgb_probe()
    transform = ImageCms.buildTransform(
        profile, srgb, "RGB", "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC
    )
    converted = np.asarray(ImageCms.applyTransform(probe, transform), dtype=np.int16)
    return int(np.abs(converted - np.asarray(probe, dtype=np.int16)).max()) <= SRGB_TOLERANCE


def _icc_transform(icc: bytes, mode: str) -> Any:
    """A cached littleCMS transform from the embedded profile to sRGB, or None when not needed."""
    global _SRGB_PROFILE
    key = (icc, mode)
    with _icc_lock:
        if key in _icc_cache:
            _icc_cache.move_to_end(key)
            return _icc_cache[key]
    transform = None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if _SRGB_PROFILE is None:
            _SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        if not (mode == "RGB" and _renders_as_srgb(profile, _SRGB_PROFILE)):
            transform = ImageCms.buildTransform(
                profile, _SRGB_PROFILE, mode, "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL
            )
    except Exception:  # a broken profile: fall back to treating the pixels as sRGB
        transform = None
    with _icc_lock:
        _icc_cache[key] = transform
        while len(_icc_cache) > _ICC_CACHE_SIZE:
            _icc_cache.popitem(last=False)
    return transform


def _finish_rgb(
    im: Image.Image, icc: bytes | None, respect_icc: bool = True, described: colour.Encoding | None = None
) -> Image.Image:
    """L/LA/RGB/RGBA/CMYK at the final size -> RGB, alpha composited over grey, ICC as documented.

    ``described``: a colour description that is not an ICC profile (HEIF/AVIF nclx, PNG gAMA/cHRM),
    converted to sRGB like a profile (only when there is no profile, and only with ``respect_icc``).
    """
    if im.mode in ("RGBA", "LA"):
        base_mode = im.mode[:-1]
        background = Image.new(base_mode, im.size, ALPHA_BACKGROUND if base_mode == "RGB" else ALPHA_BACKGROUND[0])
        background.paste(im.convert(base_mode), (0, 0), im.getchannel("A"))
        im = background
    if icc and (im.mode == "CMYK" or (respect_icc and im.mode in ("RGB", "L"))):
        transform = _icc_transform(icc, im.mode)
        if transform is not None:
            try:
                return ImageCms.applyTransform(im, transform)  # type: ignore[return-value]
            except Exception:
                pass
    elif described is not None and respect_icc and im.mode in ("RGB", "L"):
        im = colour.to_srgb(im, described)
    return im if im.mode == "RGB" else im.convert("RGB")


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """A decoded (possibly reduced) image plus what is needed to place it: full size and orientation."""

    image: Image.Image  # stored frame, not yet oriented; may be draft-reduced
    full_size: tuple[int, int]  # stored frame size before any reduction
    content: tuple[float, float]  # extent of the full image in ``image``'s pixels (draft: W/scale)
    orientation: int  # EXIF orientation still to apply
    icc: bytes | None
    reduced: bool = False  # already reduced by the decoder: no reducing_gap on top
    described: colour.Encoding | None = None  # a non-ICC colour description that is not sRGB


def decode_for_model(
    path: Path, spec: PreprocessSpec, *, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, respect_icc: bool = True
) -> np.ndarray:
    """Decode ``path`` to a ``(spec.size, spec.size, 3)`` uint8 RGB array, ready for :func:`to_model_batch`.

    EXIF orientation applied, resized and cropped like open_clip's preprocess, colours converted
    to sRGB from an embedded profile (``respect_icc=False``: only for CMYK). Raises
    DecodeError(reason, detail) for any file that cannot be used.
    """
    if spec.pad_first:  # trained taggers: full-resolution decode, the reference's pixels (no ICC)
        return _render_padded(_decode_source(Path(path), None, max_megapixels), spec, respect_icc=False)
    src = _decode_source(Path(path), spec, max_megapixels)
    return _render(src, spec, respect_icc)


def decode_for_models(
    path: Path,
    specs: Sequence[PreprocessSpec],
    *,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    respect_icc: bool = True,
) -> list[np.ndarray]:
    """One decode of ``path``, one array per spec (several models in one run read each file once).

    Each array is what :func:`decode_for_model` would give for its spec, from a source at least as
    large as that spec's own decode: a trained tagger's spec (``pad_first``) needs the full
    resolution, so with one among the specs every array comes from the full-resolution image (the
    tagger's array is then :func:`decode_for_model`'s exactly; a CLIP spec's is the resize of the
    full image, the reference itself, where its own decode would use a JPEG draft). CLIP specs
    alone share the draft of the largest. Raises DecodeError like :func:`decode_for_model`."""
    if not specs:
        return []
    if any(s.pad_first for s in specs):
        src = _decode_source(Path(path), None, max_megapixels)
    else:
        src = _decode_source(Path(path), max(specs, key=lambda s: s.size), max_megapixels)
    return [_render_padded(src, s, respect_icc=False) if s.pad_first else _render(src, s, respect_icc) for s in specs]


# --------------------------------------------------------------------------------------------------
# Decoder revisions: a decoding fix reaches the photos the cache already holds
# --------------------------------------------------------------------------------------------------

#: What :func:`decode_for_model` gives a file changes when a decoding defect is fixed. The cache
#: records the revision each vector was embedded with; ``rtagx tag`` embeds a file again when
#: :func:`decoded_differently` says the current revision gives it other pixels, and keeps (and marks
#: current) the others, so each cached file's header is read once after an upgrade.
#:
#: 1. rtagx up to 2026-12-01.
#: 2. linear-light ICC profiles named "sRGB" are converted (taken for sRGB before: far too dark);
#:    colour described without a profile is converted (HEIF/AVIF ``nclx``, PNG ``gAMA``/``cHRM``:
#:    washed out or too dark before); 16-bit "min is white" TIFFs are inverted (negatives before);
#:    JPEGs with stray bytes between header segments decode (they failed as corrupt: failures
#:    remembered by an older revision are tried again).
DECODER_REVISION = 2


def _named_srgb(icc: bytes) -> bool:
    """Revision 1's test of a profile: its description names sRGB (what revision 2 stopped trusting)."""
    try:
        description = (ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))) or "").lower()
    except Exception:
        return False
    return "srgb" in description or "iec61966-2" in description.replace(" ", "").replace(".", "")


def decoded_differently(path: Path, since: int) -> bool:
    """Whether the current decoder gives ``path`` other pixels than revision ``since`` did. Reads
    the header only (0.2-0.4 ms a file on the camera samples; RAW and JPEG XL files, untouched since
    revision 1, are not opened). A file that cannot be opened or parsed now counts as changed:
    embedding it again reports why."""
    if since >= DECODER_REVISION:
        return False
    try:
        with _open_file(path) as f:
            fmt = identify(_read_head(f), path.suffix.lower())
            if fmt is None or fmt in ("RAW", "JXL"):
                return fmt is None
            im = heif.open_heif(f) if fmt == "HEIF" else _pil_open(f, fmt)
            if fmt == "TIFF":
                _seek_full_resolution_page(im)
            icc = im.info.get("icc_profile") or None
            if icc:  # revision 2 converts a profile named sRGB that does not render as sRGB
                return _named_srgb(icc) and _icc_transform(icc, "RGB") is not None
            return _colour_description(im, fmt, f) is not None or (fmt == "TIFF" and _min_is_white_16(im))
    except Exception:  # DecodeError, or a header Pillow cannot parse: the decode will say what is wrong
        return True


def open_rgb(path: Path, *, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, respect_icc: bool = True) -> Image.Image:
    """The whole image at full resolution: upright, sRGB, alpha over grey. Slow; the reference path.

    For previews, tests and benchmarks; :func:`decode_for_model` is what a run uses.
    """
    src = _decode_source(Path(path), None, max_megapixels)
    im = _to_resample_mode(src.image)
    if src.orientation in ORIENT_TRANSPOSE:
        im = im.transpose(ORIENT_TRANSPOSE[src.orientation])
    return _finish_rgb(im, src.icc, respect_icc, src.described)


def _render(src: _Source, spec: PreprocessSpec, respect_icc: bool = True) -> np.ndarray:
    """Resize + crop exactly as planned in upright coordinates, working in the stored frame."""
    s = spec.size
    fw, fh = src.full_size
    upright_w, upright_h = (fh, fw) if swaps_axes(src.orientation) else (fw, fh)
    layout = plan(upright_w, upright_h, spec)
    # full-res upright box -> full-res stored box -> reduced stored box
    box = box_to_source(layout.box, src.orientation, fw, fh)
    kx, ky = src.content[0] / fw, src.content[1] / fh
    iw, ih = src.image.size
    box = (_clamp(box[0] * kx, iw), _clamp(box[1] * ky, ih), _clamp(box[2] * kx, iw), _clamp(box[3] * ky, ih))
    out = (layout.out[1], layout.out[0]) if swaps_axes(src.orientation) else layout.out

    im = _to_resample_mode(src.image)
    gap = None if src.reduced else REDUCING_GAP
    try:
        im = im.resize(out, spec.resample, box=box, reducing_gap=gap)
    except ValueError as e:  # a box outside the image would be our bug; say so clearly
        raise DecodeError("corrupt", f"cannot resample {im.size} with box {box}: {e}") from None
    if src.orientation in ORIENT_TRANSPOSE:
        im = im.transpose(ORIENT_TRANSPOSE[src.orientation])
    im = _finish_rgb(im, src.icc, respect_icc, src.described)
    if im.size != (s, s):
        canvas = Image.new("RGB", (s, s), (spec.fill_color,) * 3)
        canvas.paste(im, layout.offset)
        im = canvas
    return np.array(im, dtype=np.uint8)


def _render_padded(src: _Source, spec: PreprocessSpec, respect_icc: bool = True) -> np.ndarray:
    """The trained taggers' reference preprocessing: upright image, alpha over the fill colour, padded
    to a centred square (offsets ``(side - w) // 2`` in full-resolution pixels), one bicubic resize.

    From a full-resolution decode (what :func:`decode_for_model` does for these models: their own
    inference costs far more than a full JPEG decode) this is the reference exactly, ICC profiles
    ignored as the reference ignores them. From a reduced decode (a RAW preview) the square is placed
    with a fractional resample box, so the image lands where the full-resolution reference puts it."""
    s = spec.size
    fill = (spec.fill_color,) * 3
    im = _to_resample_mode(src.image)
    if im.mode in ("RGBA", "LA"):
        base = Image.new("RGB", im.size, fill)
        base.paste(im.convert("RGB"), (0, 0), im.getchannel("A"))
        im = base
    if src.orientation in ORIENT_TRANSPOSE:
        im = im.transpose(ORIENT_TRANSPOSE[src.orientation])
    im = _finish_rgb(im, src.icc, respect_icc, src.described)
    fw, fh = src.full_size
    cw, ch = src.content
    if swaps_axes(src.orientation):
        fw, fh, cw, ch = fh, fw, ch, cw
    side = max(fw, fh)
    pad_left, pad_top = (side - fw) // 2, (side - fh) // 2
    if im.size == (fw, fh):  # full resolution: the reference as written
        square = Image.new("RGB", (side, side), fill)
        square.paste(im, (pad_left, pad_top))
        if side != s:
            square = square.resize((s, s), Image.Resampling.BICUBIC)
        return np.array(square, dtype=np.uint8)
    kx, ky = cw / fw, ch / fh  # reduced pixels per full-resolution pixel
    side_x, side_y = side * kx, side * ky
    canvas_w, canvas_h = math.ceil(side_x) + 2, math.ceil(side_y) + 2
    ox, oy = 1 + round(pad_left * kx), 1 + round(pad_top * ky)
    canvas = Image.new("RGB", (canvas_w, canvas_h), fill)
    canvas.paste(im, (ox, oy))
    x0, y0 = ox - pad_left * kx, oy - pad_top * ky
    out = canvas.resize((s, s), Image.Resampling.BICUBIC, box=(x0, y0, x0 + side_x, y0 + side_y))
    return np.array(out, dtype=np.uint8)


def _clamp(value: float, limit: int) -> float:
    """Keep float noise (-1e-14) from pushing a resample box outside the image."""
    return min(max(value, 0.0), float(limit))


def _decode_source(path: Path, spec: PreprocessSpec | None, max_megapixels: float) -> _Source:
    """Open, identify, guard and decode (reduced when ``spec`` allows it)."""
    f = _open_file(path)
    try:
        head = _read_head(f)
        ext = path.suffix.lower()
        fmt = identify(head, ext)
        if fmt is None:
            if head[:1] == b"\xff" and len(head) < 4 and head == b"\xff\xd8\xff"[: len(head)]:
                raise DecodeError("truncated", f"JPEG cut after {len(head)} bytes (only the start marker is there)")
            raise DecodeError("not-an-image", _describe_non_image(head))
        if fmt == "RAW":
            return _from_raw(raw.decode_raw(path, spec, max_megapixels), spec, max_megapixels)
        if fmt == "HEIF":
            try:
                im = heif.open_heif(f)
            except DecodeError as e:
                raise _truncated_or(e, f, "HEIF") from None
        elif fmt == "JXL":
            data = _read_all(f)  # the plugin reads it all anyway; metadata boxes may come first
            f = io.BytesIO(data)
            size = jxl.header_size(data)
            if size is None:
                raise _truncated_or(DecodeError("corrupt", "JPEG XL without a readable size header"), f, "JXL")
            check_megapixels(size, max_megapixels, "JXL")
            try:
                im = jxl.open_jxl(f)
            except DecodeError as e:
                raise _truncated_or(e, f, "JXL") from None
            upright_already = not jxl.exif_orientation_applies(im)
            return _load(im, fmt, f, spec, max_megapixels, orientation=1 if upright_already else None)
        elif fmt == "AVIF" and not _pillow_reads("AVIF"):
            raise DecodeError("needs-extra", "AVIF needs a Pillow built with libavif: pip install -U 'pillow>=11.3'")
        elif fmt in ("JPEG", "PNG"):
            # read once: Pillow decodes from memory and the stream check reuses the bytes
            data = _read_all(f)
            f = io.BytesIO(data)
            try:
                im = _pil_open(f, fmt)
            except DecodeError as e:
                if fmt == "JPEG" and len(data) < 1024 and e.reason == "corrupt":
                    raise DecodeError("truncated", f"JPEG cut after {len(data)} bytes, inside its headers") from None
                raise
        else:
            im = _pil_open(f, fmt)
        return _load(im, fmt, f, spec, max_megapixels)
    finally:
        f.close()


def _from_raw(picture: raw.RawPicture, spec: PreprocessSpec | None, max_megapixels: float) -> _Source:
    """A RAW file's preview JPEG goes through the JPEG path (draft mode); pixels are used as they are."""
    if picture.jpeg is not None:
        bio = io.BytesIO(picture.jpeg)
        im = _pil_open(bio, "JPEG")
        return _load(im, "JPEG", bio, spec, max_megapixels, orientation=picture.orientation)
    pixels = picture.image
    assert pixels is not None
    return _Source(pixels, pixels.size, (float(pixels.width), float(pixels.height)), picture.orientation, None, False)


def _read_all(f: IO[bytes]) -> bytes:
    try:
        f.seek(0)
        return f.read()
    except OSError as e:
        raise DecodeError("read-error", f"cannot read: {e.strerror or e}") from None


def _pillow_reads(fmt: str) -> bool:
    try:
        _pil_factory(fmt)
    except DecodeError:
        return False
    return True


def _target_draft_size(im: Image.Image, spec: PreprocessSpec, orientation: int, margin: float) -> tuple[int, int]:
    """Smallest stored-frame size that still leaves DRAFT_MARGIN headroom over the resized target."""
    fw, fh = im.size
    upright = (fh, fw) if swaps_axes(orientation) else (fw, fh)
    rw, rh = plan(upright[0], upright[1], spec).resized
    if swaps_axes(orientation):
        rw, rh = rh, rw
    return max(1, int(rw * margin + 0.999)), max(1, int(rh * margin + 0.999))


def _load(
    im: ImageFile.ImageFile,
    fmt: str,
    f: IO[bytes],
    spec: PreprocessSpec | None,
    max_megapixels: float,
    *,
    orientation: int | None = None,
) -> _Source:
    """Guard, draft (JPEG, HEIF), decode the first full-resolution frame, and verify JPEG/PNG streams.

    ``orientation`` overrides the image's own EXIF (a RAW preview takes the RAW file's).
    """
    if fmt == "TIFF":
        _seek_full_resolution_page(im)
    full_size = im.size
    check_megapixels(full_size, max_megapixels, fmt)
    own_orientation = orientation is None
    if orientation is None:
        orientation = exif_orientation(im)
    icc = im.info.get("icc_profile") or None
    content: tuple[float, float] = (float(full_size[0]), float(full_size[1]))
    reduced = False
    if spec is not None and fmt in ("JPEG", "HEIF"):
        want = _target_draft_size(im, spec, orientation, DRAFT_MARGIN if fmt == "JPEG" else HEIF_THUMBNAIL_MARGIN)
        try:
            drafted = im.draft("RGB", want)
        except Exception:
            drafted = None
        if drafted is not None:
            _, dbox = drafted
            content = (float(dbox[2]), float(dbox[3]))
            reduced = im.size != full_size
    try:
        im.load()
    except DecodeError:
        raise
    except Exception as e:
        raise _truncated_or(_map_load_error(e, fmt), f, fmt) from None
    if fmt in ("JPEG", "PNG"):
        _check_stream(f, fmt)
    if not reduced:  # the frame as loaded, whatever size the header announced
        full_size = im.size
        content = (float(full_size[0]), float(full_size[1]))
    if own_orientation and orientation != 1 and _loader_applied_orientation(im, orientation, fmt):
        orientation = 1
    pixels = _undo_min_is_white(im) if fmt == "TIFF" else im
    described = None if icc else _colour_description(im, fmt, f)
    return _Source(pixels, full_size, content, orientation, icc, reduced, described)


def _colour_description(im: Image.Image, fmt: str, f: IO[bytes]) -> colour.Encoding | None:
    """What an image without an ICC profile says its colours are, when that is not sRGB (else None)."""
    if fmt == "HEIF":
        return colour.from_nclx(im.info.get("nclx_profile"))
    if fmt == "PNG":
        return colour.from_png(im.info)
    if fmt == "AVIF":
        try:
            return colour.from_nclx(colour.avif_nclx(f))
        except OSError:
            return None
    return None


def _min_is_white_16(im: Image.Image) -> bool:
    """A 16-bit grey TIFF stored "min is white" (PhotometricInterpretation 0); read from the header."""
    tags = getattr(im, "tag_v2", None)
    return tags is not None and tags.get(262) == 0 and im.mode.startswith("I;16")


def _undo_min_is_white(im: Image.Image) -> Image.Image:
    """A 16-bit grey TIFF stored "min is white" (PhotometricInterpretation 0), turned into "min is black".

    Pillow inverts 1- and 8-bit ones while unpacking (raw modes "1;I", "L;I") but hands 16-bit ones
    over as stored: a photographic negative of what every TIFF viewer shows (document and film
    scanners write them). Other images are returned as they are.
    """
    if not _min_is_white_16(im):
        return im
    tags = im.tag_v2  # type: ignore[attr-defined]
    bits = tags.get(258, (16,))
    top = (1 << min(int(bits[0] if isinstance(bits, tuple) else bits), 16)) - 1
    stored = np.asarray(im).astype(np.int32)
    return Image.fromarray((top - np.clip(stored, 0, top)).astype(np.uint16))  # mode I;16


def _loader_applied_orientation(im: Image.Image, orientation: int, fmt: str) -> bool:
    """Whether loading already turned the image upright, judged from what the loader did, not a version.

    Pillow's TIFF loader transposes while loading: since Pillow 10 it then deletes the orientation
    tag, Pillow 8-9 kept it. So: a tag that vanished during loading was applied; a quarter turn
    whose loaded size is the stored frame's (ImageWidth x ImageLength) turned around was applied;
    and for the half turn and mirrors, which keep the size, this Pillow's TIFF loader is asked once
    what it does (:func:`_tiff_loader_orients`).
    """
    try:
        if im.getexif().get(0x0112) is None:
            return True
    except Exception:
        return False
    if fmt != "TIFF":
        return False
    tags = getattr(im, "tag_v2", None)
    if tags is not None and swaps_axes(orientation):
        stored = (tags.get(256), tags.get(257))
        if stored[0] != stored[1]:
            return im.size == (stored[1], stored[0])
    return _tiff_loader_orients()


def shown_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as it is shown, its EXIF orientation applied, whether or
    not the loader applied it already (Pillow's TIFF loader does; JPEG, PNG and WebP do not)."""
    orientation = exif_orientation(im)
    if swaps_axes(orientation) and not _loader_applied_orientation(im, orientation, im.format or ""):
        return im.height, im.width
    return im.width, im.height


_tiff_orients: bool | None = None


def _tiff_loader_orients() -> bool:
    """Whether this Pillow's TIFF loader turns images upright itself while keeping the tag.

    Found by loading a 2x1 TIFF tagged "mirrored" (orientation 2) once per process: the right pixel
    ending up on the left means the loader mirrored it. Costs well under a millisecond, once.
    """
    global _tiff_orients
    if _tiff_orients is None:
        probe = Image.new("L", (2, 1))
        probe.putpixel((1, 0), 255)
        exif = Image.Exif()
        exif[0x0112] = 2
        buf = io.BytesIO()
        try:
            probe.save(buf, "TIFF", exif=exif)
            with Image.open(buf) as loaded:
                loaded.load()
                _tiff_orients = loaded.getpixel((0, 0)) == 255
        except Exception:  # a Pillow that cannot write the probe: trust the per-image checks
            _tiff_orients = False
    return _tiff_orients


def _seek_full_resolution_page(im: ImageFile.ImageFile) -> None:
    """A TIFF whose first page is a reduced-resolution copy (NewSubfileType bit 0) is read from its
    first full-resolution page instead (bits 0 and 2 clear: not a thumbnail, not a mask)."""
    if not _subfile_type(im) & 1:
        return
    try:
        for page in range(1, getattr(im, "n_frames", 1)):
            im.seek(page)
            if not _subfile_type(im) & 0b101:
                return
        im.seek(0)
    except (EOFError, OSError, ValueError, SyntaxError, struct_error):
        im.seek(0)  # damaged later pages: keep the first one


def _subfile_type(im: Image.Image) -> int:
    tags = getattr(im, "tag_v2", None)
    value = tags.get(254, 0) if tags is not None else 0
    return value if isinstance(value, int) else 0


# --------------------------------------------------------------------------------------------------
# Damage the decoders hide: JPEG restart markers, PNG checksums, container sizes
# --------------------------------------------------------------------------------------------------


def _png_stream_problem(data: bytes) -> tuple[str, str] | None:
    view = memoryview(data)
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > n:
            return ("truncated", f"PNG chunk {ctype!r} runs past the end of the file")
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return ("corrupt", f"PNG chunk {ctype.decode('latin-1')!r} at byte {pos} fails its checksum")
        if ctype == b"IEND":
            return None
        pos = end
    return ("truncated", "PNG ends without an IEND chunk")


def _container_truncated(f: IO[bytes], fmt: str) -> bool:
    """Whether a RIFF (WebP) or box-structured (AVIF, HEIF, JPEG 2000, JPEG XL) file ends before its boxes do.

    Their decoders report a cut-off file as a generic failure; the container sizes tell the truth.
    """
    try:
        size = os.fstat(f.fileno()).st_size if hasattr(f, "fileno") else len(f.getvalue())  # type: ignore[attr-defined]
    except (OSError, AttributeError, io.UnsupportedOperation):
        try:
            size = len(f.getvalue())  # type: ignore[attr-defined]
        except AttributeError:
            return False
    try:
        f.seek(0)
        if fmt == "WEBP":
            head = f.read(8)
            return len(head) == 8 and int.from_bytes(head[4:8], "little") + 8 > size
        if fmt not in ("AVIF", "HEIF", "JPEG2000", "JXL"):
            return False
        if fmt == "JXL" and f.read(8)[4:8] != b"JXL ":
            return False  # a bare codestream: no box sizes to judge by
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            box = f.read(16)
            length = int.from_bytes(box[:4], "big")
            if length == 1 and len(box) >= 16:
                length = int.from_bytes(box[8:16], "big")
            elif length == 0:
                return False  # box runs to the end of the file by definition
            if length < 8:
                return False  # a codestream or garbage: not a box structure we can judge
            if pos + length > size:
                return True
            pos += length
        return False
    except OSError:
        return False


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}


def _check_stream(f: IO[bytes], fmt: str) -> None:
    """After a successful decode, look for damage the decoder hid (JPEG restarts, PNG checksums).

    PNG: Pillow does not verify IDAT checksums, so flipped bytes in image data can decode into a
    picture with a smeared band; every chunk's CRC-32 is checked (zlib, about 1 ms per MB).
    JPEG: libjpeg resynchronises on restart markers and fills lost data with grey, printing a warning that
    Pillow swallows, so a file with a damaged or shifted scan "decodes". Camera JPEGs almost always
    use restart intervals, which makes damage visible cheaply: restart markers must come in cyclic
    order (RST0..RST7) and in exactly the number the image geometry implies. Costs one vectorised
    pass over the file (about 1 ms per MB), skipped for JPEGs without a restart interval.
    """
    data = f.getvalue() if isinstance(f, io.BytesIO) else _read_all(f)
    problem = _jpeg_stream_problem(data) if fmt == "JPEG" else _png_stream_problem(data)
    if problem is not None:
        raise DecodeError(*problem)


def _jpeg_stream_problem(data: bytes) -> tuple[str, str] | None:
    """Walk the markers; in each scan, check restart markers' order and count. None when sound."""
    markers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    n = len(data)
    pos = 2
    frame: dict[int, tuple[int, int]] = {}  # component id -> (h, v) sampling
    width = height = 0
    interval = 0
    scans = 0
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 1 >= n:
            return ("truncated", "JPEG ends before its end-of-image marker")
        if data[pos] != 0xFF:  # bytes between segments: libjpeg skips them with a warning, as here
            pos = _next_marker(data, pos)
            continue
        marker = data[pos + 1]
        if marker == 0xD9:
            return None if scans else ("corrupt", "JPEG has no image scan")
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > n:
            return ("truncated", "JPEG ends inside a marker segment")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        seg = data[pos + 4 : pos + 2 + length]
        if length < 2 or pos + 2 + length > n:
            return ("truncated", f"JPEG segment {marker:#04x} at byte {pos} runs past the end of the file")
        if marker in _SOF_MARKERS and len(seg) >= 6:
            height = int.from_bytes(seg[1:3], "big")
            width = int.from_bytes(seg[3:5], "big")
            for i in range(seg[5]):
                c = seg[6 + 3 * i : 9 + 3 * i]
                if len(c) == 3:
                    frame[c[0]] = (c[1] >> 4, c[1] & 15)
        elif marker == 0xDD and len(seg) >= 2:
            interval = int.from_bytes(seg[:2], "big")
        pos += 2 + length
        if marker != 0xDA:
            continue
        # an entropy-coded scan starts here and runs to the next real marker
        scans += 1
        if not interval:
            return None  # no restart markers to check (and Pillow reports truncation itself)
        if markers is None:
            markers = _marker_index(data)
        marker_pos, rst_pos, rst_code = markers
        k = int(np.searchsorted(marker_pos, pos))
        if k >= len(marker_pos):
            return ("truncated", "JPEG image data ends without an end-of-image marker")
        end = int(marker_pos[k])
        a, b = np.searchsorted(rst_pos, [pos, end])
        codes = rst_code[a:b]
        if len(codes) and (codes[0] != 0 or np.any(np.diff(codes) % 8 != 1)):
            bad = int(np.flatnonzero(np.diff(codes) % 8 != 1)[0]) + 1 if codes[0] == 0 else 0
            return (
                "corrupt",
                f"JPEG restart markers out of order at byte {int(rst_pos[a + bad])} (damaged or spliced image data)",
            )
        expected = _expected_restarts(seg, frame, width, height, interval)
        if expected is not None and len(codes) != expected:
            return (
                "corrupt",
                f"JPEG scan has {len(codes)} restart markers where its size implies "
                f"{expected} (lost or extra image data)",
            )
        pos = end


def _next_marker(data: bytes, pos: int) -> int:
    """Where the next marker starts after extraneous bytes, as libjpeg's ``next_marker`` finds it.

    libjpeg warns ("Corrupt JPEG data: N extraneous bytes before marker") and decodes the whole
    picture, so viewers show such a file; the marker walk skips the same bytes instead of calling
    the file corrupt. Returns ``len(data)`` when no marker follows (the walk then reports truncation).
    """
    n = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= n:
            return n
        if data[pos + 1] not in (0x00, 0xFF):
            return pos
        pos += 1 if data[pos + 1] == 0xFF else 2


def _marker_index(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of real markers, of restart markers, and the restart numbers (one numpy pass)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    ff = np.flatnonzero(arr[:-1] == 0xFF)
    nxt = arr[ff + 1]
    is_rst = (nxt >= 0xD0) & (nxt <= 0xD7)
    marker_pos = ff[(nxt != 0) & (nxt != 0xFF) & ~is_rst]
    return marker_pos, ff[is_rst], (nxt[is_rst] - 0xD0).astype(np.int64)


def _expected_restarts(
    sos: bytes, frame: dict[int, tuple[int, int]], width: int, height: int, interval: int
) -> int | None:
    """How many RST markers a scan of these components must hold, or None when it cannot be known."""
    if not interval or not frame or not width or not height or not sos:
        return None
    ids = [sos[1 + 2 * i] for i in range(sos[0]) if 1 + 2 * i < len(sos)]
    if not ids or any(c not in frame for c in ids):
        return None
    hmax = max(h for h, _ in frame.values())
    vmax = max(v for _, v in frame.values())
    if len(ids) == 1:  # non-interleaved: one block per MCU, over the component's own size
        h, v = frame[ids[0]]
        mcus = _ceil_div(_ceil_div(width * h, hmax), 8) * _ceil_div(_ceil_div(height * v, vmax), 8)
    else:
        mcus = _ceil_div(width, 8 * hmax) * _ceil_div(height, 8 * vmax)
    return max(0, -(-mcus // interval) - 1)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
