"""Colour described without an ICC profile: HEIC/AVIF nclx boxes and PNG gAMA/cHRM chunks.

Real files from real encoders (pillow-heif's x265 HEIC writer with its nclx options; Pillow's AVIF
writer, whose nclx box is then given other code points in place; Pillow's PNG writer with the
chunks added). The reference is the full-resolution decode converted with published matrices
(ITU-R BT.2087 for BT.2020, SMPTE EG 432-1's P3 numbers, Adobe RGB's specification) and the sRGB
curve written out here, then open_clip's preprocessing: nothing from rtagx's colour module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from test_decode import OPENAI_MEAN, OPENAI_STD, camera_like, reference

from rtagx.imaging import colour
from rtagx.imaging.decode import PreprocessSpec, decode_for_model, to_model_batch

SPEC = PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD)

# linear RGB -> linear sRGB (BT.709 primaries, D65), as published
P3_TO_SRGB = np.array([[1.2249, -0.2247, 0.0], [-0.0420, 1.0419, 0.0], [-0.0197, -0.0786, 1.0979]])
BT2020_TO_SRGB = np.array([[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]])
ADOBE_TO_SRGB = np.array([[1.39828, -0.39828, 0.0], [0.0, 1.0, 0.0], [0.0, -0.04294, 1.04294]])
# PNG cHRM of Adobe RGB (1998): white x, y, red x, y, green x, y, blue x, y
ADOBE_CHRM = (0.3127, 0.3290, 0.64, 0.33, 0.21, 0.71, 0.15, 0.06)


def srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_encode(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def converted(im: Image.Image, to_linear, matrix: np.ndarray | None) -> Image.Image:
    """The full-resolution picture as a viewer shows it: linearize, change primaries, clip, sRGB curve."""
    lin = to_linear(np.asarray(im.convert("RGB"), dtype=np.float64) / 255)
    if matrix is not None:
        lin = lin @ matrix.T
    return Image.fromarray(np.round(srgb_encode(lin) * 255).astype(np.uint8), "RGB")


def model_input(path: Path, **kw):
    return to_model_batch([decode_for_model(path, SPEC, **kw)], SPEC)[0]


def mean_abs_255(ours, ref) -> float:
    import torch

    std = torch.tensor(SPEC.std).view(3, 1, 1)
    return float(((ours - ref) * std).abs().mean()) * 255


def colourful(seed: int) -> Image.Image:
    """A camera-like picture with saturated patches, where primaries matter most."""
    a = np.asarray(camera_like(1200, 800, seed=seed)).astype(np.float64)
    a[300:500, 100:400] = (230, 40, 30)
    a[300:500, 500:800] = (40, 200, 60)
    a[300:500, 850:1150] = (30, 60, 220)
    return Image.fromarray(a.astype(np.uint8))


def write_heic(path: Path, im: Image.Image, primaries: int, transfer: int) -> Path:
    pillow_heif = pytest.importorskip("pillow_heif")
    # pillow-heif 1.8's docstring says ``transfer_characteristic``; its code reads the plural
    pillow_heif.from_pillow(im).save(
        path, quality=95, chroma=444, color_primaries=primaries, transfer_characteristics=transfer
    )
    nclx = pillow_heif.open_heif(path).info["nclx_profile"]
    assert (nclx["color_primaries"], nclx["transfer_characteristics"]) == (primaries, transfer)
    return path


def write_avif(path: Path, im: Image.Image, primaries: int, transfer: int) -> Path:
    """Pillow writes an nclx box of 1/13/6 (BT.709, sRGB, BT.601); its code points are changed in place."""
    im.save(path, "AVIF", quality=95, subsampling="4:4:4")
    data = bytearray(path.read_bytes())
    at = data.find(b"colrnclx")
    assert at > 0 and data[at + 8 : at + 12] == b"\x00\x01\x00\x0d"
    data[at + 8 : at + 12] = primaries.to_bytes(2, "big") + transfer.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def stored_heic(path: Path) -> Image.Image:
    import pillow_heif

    return pillow_heif.open_heif(path).to_pillow()


CASES = {
    # name: (writer, primaries, transfer, reference linearization, matrix)
    "heic-p3": (write_heic, 12, 13, srgb_decode, P3_TO_SRGB),
    "heic-bt2020": (write_heic, 9, 13, srgb_decode, BT2020_TO_SRGB),
    "heic-linear-p3": (write_heic, 12, 8, lambda v: v, P3_TO_SRGB),
    "avif-p3": (write_avif, 12, 13, srgb_decode, P3_TO_SRGB),
    "avif-bt2020": (write_avif, 9, 13, srgb_decode, BT2020_TO_SRGB),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_nclx_wide_gamut_is_converted_to_srgb(tmp_path, name):
    writer, prim, trc, to_linear, matrix = CASES[name]
    suffix = ".heic" if writer is write_heic else ".avif"
    path = writer(tmp_path / f"{name}{suffix}", colourful(seed=prim + trc), prim, trc)
    stored = stored_heic(path) if suffix == ".heic" else Image.open(path)
    expected = reference(converted(stored, to_linear, matrix), SPEC)
    after = mean_abs_255(model_input(path), expected)
    before = mean_abs_255(model_input(path, respect_icc=False), expected)
    assert after < 1.5, (after, before)
    assert before > 4 * after


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_nclx_srgb_is_used_as_stored(tmp_path, suffix):
    writer = write_heic if suffix == ".heic" else write_avif
    path = writer(tmp_path / f"srgb{suffix}", colourful(seed=3), 1, 13)
    assert np.array_equal(decode_for_model(path, SPEC), decode_for_model(path, SPEC, respect_icc=False))


@pytest.mark.parametrize("transfer", [16, 18])
def test_hdr_transfers_decode_without_tone_mapping(tmp_path, transfer):
    """PQ and HLG: reference white (203 nits) becomes sRGB white, brighter clips; nothing crashes."""
    path = write_heic(tmp_path / f"hdr{transfer}.heic", colourful(seed=5), 9, transfer)
    out = decode_for_model(path, SPEC)
    assert out.shape == (224, 224, 3)
    # PQ code 0.58 is 203 nits: the reference white
    grey = Image.new("RGB", (64, 64), (148, 148, 148))
    pq = write_heic(tmp_path / "pq-white.heic", grey, 1, 16)
    assert abs(int(decode_for_model(pq, SPEC).mean()) - 255) <= 3


def write_png(path: Path, im: Image.Image, *chunks: tuple[bytes, bytes]) -> Path:
    info = PngImagePlugin.PngInfo()
    for kind, body in chunks:
        info.add(kind, body)
    im.save(path, pnginfo=info)
    return path


def gama(g: float) -> tuple[bytes, bytes]:
    return b"gAMA", round(g * 100000).to_bytes(4, "big")


def chrm(values: tuple[float, ...]) -> tuple[bytes, bytes]:
    return b"cHRM", b"".join(round(v * 100000).to_bytes(4, "big") for v in values)


def test_png_linear_gamma_is_encoded_to_srgb(tmp_path):
    im = colourful(seed=11)
    path = write_png(tmp_path / "linear.png", im, gama(1.0))
    expected = reference(converted(im, lambda v: v, None), SPEC)
    after = mean_abs_255(model_input(path), expected)
    before = mean_abs_255(model_input(path, respect_icc=False), expected)
    assert after < 1.5, (after, before)
    assert before > 20


def test_png_chrm_wide_primaries_are_converted(tmp_path):
    im = colourful(seed=12)
    path = write_png(tmp_path / "adobe.png", im, gama(1 / 2.2), chrm(ADOBE_CHRM))
    expected = reference(converted(im, lambda v: v**2.2, ADOBE_TO_SRGB), SPEC)
    after = mean_abs_255(model_input(path), expected)
    before = mean_abs_255(model_input(path, respect_icc=False), expected)
    assert after < 1.5, (after, before)
    assert before > 3 * after


@pytest.mark.parametrize(
    "chunks",
    [
        [gama(0.45455)],
        [gama(0.45)],
        [gama(0.45455), chrm((0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06))],
        [(b"sRGB", b"\x00"), gama(1.0)],  # an sRGB chunk wins over gAMA
    ],
    ids=["gama-1/2.2", "gama-0.45", "gama-chrm-srgb", "srgb-chunk-wins"],
)
def test_png_srgb_spellings_are_used_as_stored(tmp_path, chunks):
    im = colourful(seed=13)
    path = write_png(tmp_path / "srgb.png", im, *chunks)
    assert colour.from_png(Image.open(path).info) is None
    assert np.array_equal(decode_for_model(path, SPEC), decode_for_model(path, SPEC, respect_icc=False))


def test_png_linear_grey_is_encoded(tmp_path):
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1)), "L")
    path = write_png(tmp_path / "grey.png", ramp, gama(1.0))
    out = decode_for_model(path, PreprocessSpec(256, OPENAI_MEAN, OPENAI_STD))
    expected = np.round(srgb_encode(np.arange(256) / 255) * 255)
    assert np.abs(out[128, 2:-2, 0].astype(float) - expected[2:-2]).max() <= 3


def test_avif_nclx_box_of_the_primary_item_is_read(tmp_path):
    path = write_avif(tmp_path / "p3.avif", colourful(seed=1), 12, 13)
    with open(path, "rb") as f:
        nclx = colour.avif_nclx(f)
    assert nclx is not None and (nclx["color_primaries"], nclx["transfer_characteristics"]) == (12, 13)
    assert nclx["matrix_coefficients"] == 6 and nclx["full_range_flag"] == 1
