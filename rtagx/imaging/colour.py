"""Colour descriptions that are not ICC profiles: read them, and convert the pixels they describe to sRGB.

Some files say what their RGB values mean without an ICC profile, and every browser and photo
viewer honours the description:

* HEIC and AVIF carry an ``nclx`` colour box (ITU-T H.273 code points: primaries, transfer,
  matrix). Android phones write Display P3 (primaries 12) with the sRGB transfer (13) this
  way, and BT.2020 (9) with PQ (16) or HLG (18) for HDR. The decoders (libheif, libavif) apply
  the matrix and range to give RGB, but leave the primaries and transfer to the viewer: shown as
  sRGB, a P3 photo looks washed out. pillow-heif reports the box as ``info["nclx_profile"]``;
  Pillow's AVIF plugin reports nothing, so the ``colr`` box of the primary item is read here
  from the file (:func:`avif_nclx`: the ``meta`` box, within the first 64 KiB).
* PNG ``gAMA`` and ``cHRM`` chunks, when there is no ``iCCP`` or ``sRGB`` chunk (PNG 3rd edition
  precedence; Firefox (libpng, qcms) and Chrome (Skia) honour them). ``gAMA`` 0.45455 (1/2.2), alone or with the
  sRGB ``cHRM``, is the PNG spelling of sRGB for decoders that predate the ``sRGB`` chunk (libpng
  and most encoders write it): it is used as is, as Firefox and libpng do, not as Chrome's pure
  2.2 power curve (up to 9 levels darker in the shadows). Pillow does not parse ``cICP``.

What counts as sRGB costs nothing beyond a dict lookup: :func:`from_nclx` and :func:`from_png`
return None for it, and the pixels are used as stored. Anything else is converted at the size the
caller chooses; ``decode`` does it where it applies ICC profiles, on the small resized image
(measured below). The conversion: a 256-entry table to linear light from the transfer, a 3x3
matrix from the primaries to sRGB's (Bradford adaptation when the white point is not D65),
clipping to the sRGB gamut (relative colorimetric, as littleCMS does for matrix profiles), and
the sRGB curve. Transfers:

* sRGB (13), and BT.709-family curves (1, 6, 14, 15), whose display curve H.273 leaves to BT.1886
  and viewers disagree on (the inverse BT.709 camera curve puts mid grey 11 levels brighter, a
  BT.1886 gamma-2.4 display 8 darker): the sRGB curve, between the two; only primaries convert.
* linear (8), gamma 2.2 (4), 2.8 (5), 2.6 (17); PNG ``gAMA`` g as the power 1/g.
* HDR: PQ (16) and HLG (18, the BT.2100 OOTF for a 1000-nit display, per channel) to display light, HDR reference
  white (203 nits) as sRGB white, and everything brighter clipped. No tone mapping: highlights
  above diffuse white lose their detail, mid-tones are right. 10-bit files reach this module as
  8 bits (pillow-heif's default), so HDR shadows are coarsely quantised.

Measured on tests/test_colour_descriptions.py's 1200x800 pictures (mean |difference| of the model
input against the reference, in /255 units, 224 px; the reference converts the full-resolution
decode with published matrices, then applies open_clip's preprocessing; tiny-CLIP cosine at 64 px):

=====================  ====================  ===================  ==========================
file                   treated as sRGB       converted            tiny-CLIP cosine
=====================  ====================  ===================  ==========================
HEIC/AVIF Display P3   10.7 / 11.1           0.50 / 0.49          0.9970 -> 0.999993
HEIC/AVIF BT.2020      20.0 / 20.1           0.99 / 0.96          0.9897 -> 0.999977
HEIC linear P3         54.4                  0.44                 0.9252 -> 0.999983
PNG gAMA 1.0           58.2                  0.27                 0.8869 -> 0.999998
PNG cHRM Adobe RGB     10.3                  0.59                 0.9976 -> 0.999955
=====================  ====================  ===================  ==========================

What is left is the order: this module's maths applied at full resolution agree with the
reference to 0.016; converting after the resize (as ICC profiles are) gives the table's numbers, at
64 px 0.9 (P3) and 1.9 (BT.2020), that is 45.0 / 40.7 dB PSNR for P3 and 39.1 / 35.0 dB for
BT.2020 at 224 / 64 px, under the 40 dB ``decode`` holds to elsewhere: on these deliberately
saturated pictures many BT.2020 colours lie outside sRGB and are clipped after the averaging,
not before. Converting first would cost 1.6 s of one core per 12-MP image (a second decode's
worth); after the resize it costs 1.4 ms per 224-px input, whatever the photo's size (a 12-MP
HEIC decodes in about 1.6 s: under 0.1%). Recognising sRGB costs 0.2 us (nclx), 1 us (PNG
``gAMA``), 12 us (AVIF: the box walk).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from PIL import Image

#: H.273 colour primaries: (red x, y, green x, y, blue x, y, white x, y). 1 (BT.709) is sRGB's.
PRIMARIES: dict[int, tuple[float, ...]] = {
    1: (0.640, 0.330, 0.300, 0.600, 0.150, 0.060, 0.3127, 0.3290),
    4: (0.670, 0.330, 0.210, 0.710, 0.140, 0.080, 0.310, 0.316),
    5: (0.640, 0.330, 0.290, 0.600, 0.150, 0.060, 0.3127, 0.3290),
    6: (0.630, 0.340, 0.310, 0.595, 0.155, 0.070, 0.3127, 0.3290),
    7: (0.630, 0.340, 0.310, 0.595, 0.155, 0.070, 0.3127, 0.3290),
    8: (0.681, 0.319, 0.243, 0.692, 0.145, 0.049, 0.310, 0.316),
    9: (0.708, 0.292, 0.170, 0.797, 0.131, 0.046, 0.3127, 0.3290),
    11: (0.680, 0.320, 0.265, 0.690, 0.150, 0.060, 0.314, 0.351),
    12: (0.680, 0.320, 0.265, 0.690, 0.150, 0.060, 0.3127, 0.3290),
    22: (0.630, 0.340, 0.295, 0.605, 0.155, 0.077, 0.3127, 0.3290),
}
SRGB_PRIMARIES = PRIMARIES[1]

#: H.273 transfer characteristics that are not read as the sRGB curve (see the module docstring).
_TRANSFER: dict[int, tuple[str, float]] = {
    4: ("gamma", 2.2),
    5: ("gamma", 2.8),
    8: ("gamma", 1.0),
    16: ("pq", 0.0),
    17: ("gamma", 2.6),
    18: ("hlg", 0.0),
}

#: A PNG gAMA within this of 1/2.2, and cHRM values within this of sRGB's, count as sRGB.
PNG_SRGB_TOLERANCE = 0.01

#: HDR reference white (BT.2408): the display light that becomes sRGB white.
HDR_REFERENCE_WHITE_NITS = 203.0


@dataclass(frozen=True)
class Encoding:
    """What stored RGB values mean: primaries + white (8 chromaticities) and a transfer curve.

    ``transfer`` is "srgb", "gamma" (linear = value ** ``gamma``), "pq" or "hlg".
    """

    primaries: tuple[float, ...]
    transfer: str
    gamma: float = 1.0


def from_nclx(nclx: Any) -> Encoding | None:
    """An nclx description (pillow-heif's dict, or :func:`avif_nclx`'s) -> Encoding; None when sRGB.

    Unknown code points and unreadable values count as sRGB: the pixels are used as stored.
    """
    if not isinstance(nclx, dict):
        return None
    try:
        prim = int(nclx.get("color_primaries", 2))
        trc = int(nclx.get("transfer_characteristics", 2))
    except (TypeError, ValueError):
        return None
    primaries = PRIMARIES.get(prim, SRGB_PRIMARIES)
    kind, gamma = _TRANSFER.get(trc, ("srgb", 1.0))  # the rest: sRGB-like (module docstring)
    if primaries == SRGB_PRIMARIES and kind == "srgb":
        return None
    return Encoding(primaries, kind, gamma)


def from_png(info: Mapping[Any, Any]) -> Encoding | None:
    """A PNG's gAMA / cHRM (Pillow's ``info["gamma"]``, ``info["chromaticity"]``) -> Encoding; None when sRGB.

    The caller checks that there is no ICC profile; an ``sRGB`` chunk wins over both chunks.
    """
    if "srgb" in info:
        return None
    gamma = info.get("gamma")
    chrm = info.get("chromaticity")
    if gamma is None and chrm is None:
        return None
    try:
        g = float(gamma) if gamma is not None else 1 / 2.2
        if not 0.01 <= g <= 100:  # nonsense (libpng rejects such values too)
            return None
        primaries: tuple[float, ...] = SRGB_PRIMARIES
        if chrm is not None:
            values = tuple(float(v) for v in chrm)
            # Pillow's order: white x, y, red x, y, green x, y, blue x, y
            if len(values) == 8 and all(0 < v < 1 for v in values) and _matrix_ok(values[2:] + values[:2]):
                primaries = values[2:] + values[:2]
    except (TypeError, ValueError):
        return None
    srgb_primaries = max(abs(a - b) for a, b in zip(primaries, SRGB_PRIMARIES, strict=True)) <= PNG_SRGB_TOLERANCE
    if srgb_primaries and abs(g - 1 / 2.2) <= PNG_SRGB_TOLERANCE:
        return None
    return Encoding(SRGB_PRIMARIES if srgb_primaries else primaries, "gamma", 1 / g)


def avif_nclx(f: IO[bytes], limit: int = 1 << 16) -> dict[str, int] | None:
    """The nclx ``colr`` box of an AVIF's primary item, as H.273 codes; None when there is none.

    Pillow's AVIF plugin does not report it. Reads the ``meta`` box only (ISO/IEC 23008-12:
    ``pitm`` names the primary item, ``ipma`` ties it to properties in ``ipco``).
    """
    f.seek(0)
    data = f.read(limit)
    meta = _child(data, 0, len(data), b"meta")
    if meta is None:
        return None
    start, end = meta[0] + 4, meta[1]  # meta is a FullBox
    iprp = _child(data, start, end, b"iprp")
    if iprp is None:
        return None
    ipco = _child(data, iprp[0], iprp[1], b"ipco")
    if ipco is None:
        return None
    props = list(_boxes(data, ipco[0], ipco[1]))  # 1-based indices in ipma
    wanted: set[int] | None = None
    pitm, ipma = _child(data, start, end, b"pitm"), _child(data, iprp[0], iprp[1], b"ipma")
    if pitm is not None and ipma is not None:
        wanted = _primary_properties(data, pitm, ipma)
    for i, (kind, s, e) in enumerate(props, 1):
        if kind == b"colr" and data[s : s + 4] == b"nclx" and e - s >= 11 and (wanted is None or i in wanted):
            return {
                "color_primaries": int.from_bytes(data[s + 4 : s + 6], "big"),
                "transfer_characteristics": int.from_bytes(data[s + 6 : s + 8], "big"),
                "matrix_coefficients": int.from_bytes(data[s + 8 : s + 10], "big"),
                "full_range_flag": data[s + 10] >> 7,
            }
    return None


def _boxes(data: bytes, start: int, end: int) -> Any:
    """(type, payload start, payload end) of each box in data[start:end]; stops at anything malformed."""
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos : pos + 4], "big")
        head = 8
        if size == 1 and pos + 16 <= end:
            size, head = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            return
        yield data[pos + 4 : pos + 8], pos + head, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, s, e in _boxes(data, start, end):
        if k == kind:
            return s, e
    return None


def _primary_properties(data: bytes, pitm: tuple[int, int], ipma: tuple[int, int]) -> set[int] | None:
    """Indices (1-based, into ``ipco``) of the properties ``ipma`` gives the primary item."""
    try:
        s = pitm[0]
        primary = int.from_bytes(data[s + 4 : s + 8] if data[s] else data[s + 4 : s + 6], "big")
        s, e = ipma
        version, flags = data[s], int.from_bytes(data[s + 1 : s + 4], "big")
        pos = s + 4
        count = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        for _ in range(count):
            width = 4 if version else 2
            item = int.from_bytes(data[pos : pos + width], "big")
            pos += width
            n = data[pos]
            pos += 1
            found: set[int] = set()
            for _ in range(n):
                if flags & 1:
                    found.add(int.from_bytes(data[pos : pos + 2], "big") & 0x7FFF)
                    pos += 2
                else:
                    found.add(data[pos] & 0x7F)
                    pos += 1
            if pos > e:
                return None
            if item == primary:
                return found
    except IndexError:
        return None
    return None


# --------------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------------

_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _rgb_to_xyz(p: tuple[float, ...]) -> np.ndarray:
    """RGB (linear) -> XYZ for these primaries, white scaled to Y = 1."""
    m = np.stack([_xyz(p[0], p[1]), _xyz(p[2], p[3]), _xyz(p[4], p[5])], axis=1)
    scale = np.linalg.solve(m, _xyz(p[6], p[7]))
    return m * scale


def _matrix_ok(p: tuple[float, ...]) -> bool:
    try:
        return bool(np.isfinite(_rgb_to_xyz(p)).all())
    except np.linalg.LinAlgError:
        return False


def rgb_to_srgb_matrix(p: tuple[float, ...]) -> np.ndarray:
    """Linear RGB in primaries ``p`` -> linear sRGB, adapting the white to D65 with Bradford."""
    to_xyz = _rgb_to_xyz(p)
    src_w, dst_w = _BRADFORD @ _xyz(p[6], p[7]), _BRADFORD @ _xyz(SRGB_PRIMARIES[6], SRGB_PRIMARIES[7])
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(dst_w / src_w) @ _BRADFORD
    return np.linalg.inv(_rgb_to_xyz(SRGB_PRIMARIES)) @ adapt @ to_xyz


def _pq_to_nits(v: np.ndarray) -> np.ndarray:
    m1, m2, c1, c2, c3 = 0.1593017578125, 78.84375, 0.8359375, 18.8515625, 18.6875
    p = np.power(v, 1 / m2)
    return 10000.0 * np.power(np.maximum(p - c1, 0) / (c2 - c3 * p), 1 / m1)


def _hlg_to_scene(v: np.ndarray) -> np.ndarray:
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    return np.where(v <= 0.5, v * v / 3, (np.exp((v - c) / a) + b) / 12)


def to_linear_table(enc: Encoding) -> np.ndarray:
    """256 linear-light values (1.0 = white) for the stored 8-bit codes; HDR values may exceed 1."""
    v = np.arange(256, dtype=np.float64) / 255
    if enc.transfer == "gamma":
        return np.power(v, enc.gamma)
    if enc.transfer == "pq":
        return _pq_to_nits(v) / HDR_REFERENCE_WHITE_NITS
    if enc.transfer == "hlg":  # BT.2100 OOTF on each channel (system gamma 1.2 at 1000 nits)
        return 1000.0 * np.power(_hlg_to_scene(v), 1.2) / HDR_REFERENCE_WHITE_NITS
    return np.where(v <= 0.04045, v / 12.92, np.power((v + 0.055) / 1.055, 2.4))


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB codes 0..255 (uint8), with the sRGB piecewise curve."""
    x = np.clip(linear, 0.0, 1.0)
    out = np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def to_srgb(im: Image.Image, enc: Encoding) -> Image.Image:
    """An RGB or L image whose values mean ``enc`` -> the sRGB image a colour-managed viewer shows.

    L keeps its mode (grey stays grey: white is adapted to white) and only its curve is converted.
    """
    table = to_linear_table(enc).astype(np.float32)
    a = np.asarray(im)
    lin = table[a]
    if im.mode == "RGB":
        m = rgb_to_srgb_matrix(enc.primaries).astype(np.float32)
        lin = lin @ m.T
    return Image.fromarray(srgb_encode(lin), im.mode)
