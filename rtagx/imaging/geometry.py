"""Where the model's pixels come from: open_clip's resize + crop as one source box, EXIF orientation.

Shared by every decoder in this package (``decode``, ``raw``), so that none of them reaches into
another's internals. Plain values in, plain values out; no file access.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from rtagx.errors import DecodeError

__all__ = [
    "ORIENT_TRANSPOSE",
    "Plan",
    "PreprocessSpec",
    "box_to_source",
    "check_megapixels",
    "exif_orientation",
    "plan",
    "swaps_axes",
]


@dataclass(frozen=True)
class PreprocessSpec:
    """What the image tower expects: open_clip's ``preprocess_cfg`` in a hashable value."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0  # padding colour of resize_mode "longest" (open_clip's fill_color)
    # Trained taggers' order (WD14, JoyTag reference code): alpha over the fill colour, pad the upright
    # image to a centred square of the fill colour, then one bicubic resize of the whole square.
    pad_first: bool = False

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.interpolation not in ("bicubic", "bilinear", "random"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}")

    @classmethod
    def from_model(cls, model: Any) -> PreprocessSpec:
        """Read ``model.visual.preprocess_cfg`` (open_clip), with OpenAI defaults for missing keys."""
        visual = getattr(model, "visual", model)
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        if not cfg.get("mean") or not cfg.get("std"):  # importing open_clip takes seconds: only if needed
            from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

            cfg["mean"] = cfg.get("mean") or OPENAI_DATASET_MEAN
            cfg["std"] = cfg.get("std") or OPENAI_DATASET_STD
        size = cfg.get("size", getattr(visual, "image_size", 224))
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise ValueError(f"non-square model input {tuple(size)} is not supported")
            size = size[0]
        fill = cfg.get("fill_color", 0)
        return cls(
            size=int(size),
            mean=_triple(cfg["mean"]),
            std=_triple(cfg["std"]),
            interpolation=cfg.get("interpolation") or "bicubic",
            resize_mode=cfg.get("resize_mode") or "shortest",
            fill_color=int(fill[0] if isinstance(fill, (tuple, list)) else fill),
            pad_first=bool(cfg.get("pad_first", False)),
        )

    @property
    def resample(self) -> Image.Resampling:
        # open_clip maps everything but "bilinear" (including "random" at eval) to bicubic.
        return Image.Resampling.BILINEAR if self.interpolation == "bilinear" else Image.Resampling.BICUBIC


def _triple(value: Any) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    a, b, c = (float(v) for v in value)
    return (a, b, c)


def check_megapixels(size: tuple[int, int], max_megapixels: float, what: str = "image") -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise DecodeError("corrupt", f"{what} header gives an empty size {w}x{h}")
    mp = w * h / 1e6
    if max_megapixels and mp > max_megapixels:
        raise DecodeError(
            "too-large", f"{w}x{h} = {mp_text(mp)} MP exceeds the {max_megapixels:g} MP limit (--max-megapixels)"
        )


# --------------------------------------------------------------------------------------------------
# Geometry: the exact resize + crop open_clip would do, expressed as one source box
# --------------------------------------------------------------------------------------------------

# EXIF orientation -> Pillow transpose that makes the image upright (as ImageOps.exif_transpose).
ORIENT_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Plan:
    """Resample ``box`` (upright full-resolution coordinates) to ``out`` pixels, paste at ``offset``."""

    out: tuple[int, int]  # (w, h) of the resampled region, upright
    box: tuple[float, float, float, float]  # source region, upright full-res coordinates
    offset: tuple[int, int]  # where it lands on the size x size canvas
    resized: tuple[int, int]  # (w, h) open_clip resizes the whole image to


def plan(width: int, height: int, spec: PreprocessSpec) -> Plan:
    """Mirror open_clip's eval transform for an upright image of ``width`` x ``height``."""
    s = spec.size
    if spec.resize_mode == "squash":
        return Plan((s, s), (0.0, 0.0, float(width), float(height)), (0, 0), (s, s))
    if spec.resize_mode == "longest":  # ResizeKeepRatio(longest=1) + CenterCropOrPad
        ratio = max(height / s, width / s)
        rw, rh = round(width / ratio), round(height / ratio)
        if rw > s or rh > s:  # rounding can overshoot by one: crop like CenterCropOrPad does
            return _crop_plan(width, height, rw, rh, s, spec)
        return Plan((rw, rh), (0.0, 0.0, float(width), float(height)), ((s - rw) // 2, (s - rh) // 2), (rw, rh))
    # "shortest": torchvision Resize(int) keeps the aspect ratio, truncating the long side.
    if width <= height:
        rw, rh = s, int(s * height / width)
    else:
        rw, rh = int(s * width / height), s
    return _crop_plan(width, height, rw, rh, s, spec)


def _crop_plan(width: int, height: int, rw: int, rh: int, s: int, spec: PreprocessSpec) -> Plan:
    cw, ch = min(s, rw), min(s, rh)
    left = round((rw - cw) / 2.0)  # torchvision's CenterCrop rounding (banker's round)
    top = round((rh - ch) / 2.0)
    sx, sy = width / rw, height / rh
    box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
    return Plan((cw, ch), box, ((s - cw) // 2, (s - ch) // 2), (rw, rh))


def box_to_source(
    box: tuple[float, float, float, float], orientation: int, sw: float, sh: float
) -> tuple[float, float, float, float]:
    """Map a box in upright coordinates back to the stored (un-rotated) frame of size sw x sh."""
    x0, y0, x1, y1 = box

    def point(u: float, v: float) -> tuple[float, float]:
        if orientation == 2:
            return sw - u, v
        if orientation == 3:
            return sw - u, sh - v
        if orientation == 4:
            return u, sh - v
        if orientation == 5:
            return v, u
        if orientation == 6:
            return v, sh - u
        if orientation == 7:
            return sw - v, sh - u
        if orientation == 8:
            return sw - v, u
        return u, v

    (a, b), (c, d) = point(x0, y0), point(x1, y1)
    return min(a, c), min(b, d), max(a, c), max(b, d)


def exif_orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
        value = int(value)
    except Exception:  # a damaged EXIF block must not lose the picture
        return 1
    return value if 1 <= value <= 8 else 1


def swaps_axes(orientation: int) -> bool:
    return orientation in (5, 6, 7, 8)


def mp_text(mp: float) -> str:
    """3600 -> '3600', 1.5 -> '1.5': exact enough to see why a file exceeds the limit."""
    return f"{mp:.1f}".rstrip("0").rstrip(".")
