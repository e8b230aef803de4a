"""decode: every format and pixel mode photographers keep, identified by content, to RGB correctly."""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, features
from test_decode import reference as open_clip_reference

from rtagx.imaging import decode
from rtagx.imaging.decode import DecodeError, PreprocessSpec, decode_for_model, to_model_batch

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SPEC = PreprocessSpec(64, MEAN, STD)
SQUASH = PreprocessSpec(32, MEAN, STD, resize_mode="squash")
GREY = decode.ALPHA_BACKGROUND


def scene(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """Smooth colour ramps plus a red top-left marker: survives lossy codecs, shows mirroring."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([40 + 160 * x / width, 40 + 160 * y / height, 120 + 60 * np.sin(x / 17 + y / 23)], -1)
    img += rng.normal(0, 2, img.shape)
    img[: height // 6, : width // 6] = (230, 20, 20)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def reference(im: Image.Image, spec: PreprocessSpec = SPEC):
    """open_clip's own eval transform (tests/test_decode.py) of ``im`` as RGB."""
    return open_clip_reference(im.convert("RGB"), spec)


def psnr_vs(path: Path, expected: Image.Image, spec: PreprocessSpec = SPEC) -> float:
    import torch

    ours = to_model_batch([decode_for_model(path, spec)], spec)[0]
    std = torch.tensor(spec.std).view(3, 1, 1)
    mse = float((((ours - reference(expected, spec)) * std) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(1 / mse)


def mean_rgb(path: Path, **kw) -> np.ndarray:
    return decode_for_model(path, SQUASH, **kw).reshape(-1, 3).mean(0)


# ---------------------------------------------------------------------------------------------------
# containers
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,ext,kw,min_db",
    [
        ("PNG", ".png", {}, 60),
        ("JPEG", ".jpg", {"quality": 95}, 40),
        ("JPEG", ".jpg", {"quality": 90, "progressive": True}, 40),
        ("WEBP", ".webp", {"lossless": True}, 60),
        ("WEBP", ".webp", {"quality": 90}, 35),
        ("TIFF", ".tif", {"compression": "tiff_lzw"}, 60),
        ("TIFF", ".tiff", {"compression": "tiff_adobe_deflate"}, 60),
        ("BMP", ".bmp", {}, 60),
        ("GIF", ".gif", {}, 25),  # 256-colour quantisation
    ],
)
def test_pillow_formats_decode_like_the_original(tmp_path, fmt, ext, kw, min_db):
    original = scene()
    path = tmp_path / f"img{ext}"
    original.save(path, fmt, **kw)
    assert psnr_vs(path, original) >= min_db


@pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow without OpenJPEG")
def test_jpeg2000(tmp_path):
    original = scene()
    for ext in (".jp2", ".j2k"):
        original.save(tmp_path / f"a{ext}", quality_mode="dB", quality_layers=[45])
        assert psnr_vs(tmp_path / f"a{ext}", original) >= 35
    assert ".jp2" in decode.SUPPORTED_EXTENSIONS


@pytest.mark.skipif(not features.check("avif"), reason="Pillow without libavif")
def test_avif(tmp_path):
    original = scene()
    original.save(tmp_path / "a.avif", quality=90)
    assert psnr_vs(tmp_path / "a.avif", Image.open(tmp_path / "a.avif")) >= 45
    assert psnr_vs(tmp_path / "a.avif", original) >= 30


def test_heif_sample(samples_dir):
    pillow_heif = pytest.importorskip("pillow_heif")
    path = samples_dir / "heic" / "samplefilehub.heif"
    full = pillow_heif.open_heif(path).to_pillow()
    assert psnr_vs(path, full, PreprocessSpec(224, MEAN, STD)) >= 45


def test_heif_without_the_extra_is_needs_extra(samples_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import now raises ImportError
    with pytest.raises(DecodeError) as info:
        decode_for_model(samples_dir / "heic" / "samplefilehub.heif", SPEC)
    assert info.value.reason == "needs-extra"
    assert "pip install 'rtagx[heif]'" in info.value.detail


def test_first_page_of_multipage_tiff(tmp_path):
    pages = [Image.new("RGB", (64, 48), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    pages[0].save(tmp_path / "multi.tif", save_all=True, append_images=pages[1:])
    assert Image.open(tmp_path / "multi.tif").n_frames == 3
    assert np.allclose(mean_rgb(tmp_path / "multi.tif"), (200, 30, 30), atol=1)


@pytest.mark.parametrize("fmt,ext", [("GIF", ".gif"), ("WEBP", ".webp"), ("PNG", ".png")])
def test_first_frame_of_animations(tmp_path, fmt, ext):
    frames = [Image.new("RGB", (64, 48), c) for c in ((200, 30, 30), (30, 30, 200), (30, 200, 30))]
    path = tmp_path / f"anim{ext}"
    frames[0].save(
        path,
        fmt,
        save_all=True,
        append_images=frames[1:],
        duration=100,
        loop=0,
        **({"lossless": True} if fmt == "WEBP" else {}),
    )
    assert getattr(Image.open(path), "n_frames", 1) == 3
    assert np.allclose(mean_rgb(path), (200, 30, 30), atol=3)


# ---------------------------------------------------------------------------------------------------
# identified by content, not by extension
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,wrong_ext", [("PNG", ".jpg"), ("JPEG", ".png"), ("WEBP", ".tif"), ("TIFF", ".heic"), ("GIF", ".cr2")]
)
def test_wrong_extension_still_decodes(tmp_path, fmt, wrong_ext):
    original = scene()
    path = tmp_path / f"misnamed{wrong_ext}"
    original.save(path, fmt)
    assert psnr_vs(path, Image.open(path)) >= 45


def test_identify_by_magic():
    assert decode.identify(b"\xff\xd8\xff\xe0....") == "JPEG"
    assert decode.identify(b"\x89PNG\r\n\x1a\n....") == "PNG"
    assert decode.identify(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert decode.identify(b"II*\x00\x08\x00\x00\x00", ".tif") == "TIFF"
    assert decode.identify(b"II*\x00\x08\x00\x00\x00", ".nef") == "RAW"
    assert decode.identify(b"IIRO\x08\x00\x00\x00", ".jpg") == "RAW"  # ORF content wins
    assert decode.identify(b"FUJIFILMCCD-RAW 0201") == "RAW"
    assert decode.identify(b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom") == "RAW"
    assert decode.identify(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic") == "HEIF"
    assert decode.identify(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf") == "AVIF"
    assert decode.identify(b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf") == "AVIF"
    assert decode.identify(b"\xff\x0a\xfa") == "JXL"  # bare codestream
    assert decode.identify(b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00\x00\x14ftypjxl ") == "JXL"  # container
    assert decode.identify(b"hello world, this is text") is None
    for head in (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", b"%PDF-1.7\n", b"8BPS\x00\x01"):
        with pytest.raises(DecodeError) as info:
            decode.identify(head)
        assert info.value.reason == "unsupported-format"


# ---------------------------------------------------------------------------------------------------
# pixel modes -> RGB
# ---------------------------------------------------------------------------------------------------


def test_grayscale_jpeg_and_png(tmp_path):
    grey = scene().convert("L")
    grey.save(tmp_path / "g.jpg", quality=95)
    grey.save(tmp_path / "g.png")
    for p in (tmp_path / "g.jpg", tmp_path / "g.png"):
        out = decode_for_model(p, SPEC)
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
        assert psnr_vs(p, grey) >= 40


def test_one_bit_image(tmp_path):
    im = Image.new("1", (64, 64), 0)
    im.paste(1, (0, 0, 32, 64))
    im.save(tmp_path / "bw.png")
    out = decode_for_model(tmp_path / "bw.png", SQUASH)
    assert out[:, :12].min() > 240 and out[:, -12:].max() < 15


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    for p in (tmp_path / "g16.png", tmp_path / "g16.tif"):
        out = decode_for_model(p, PreprocessSpec(64, MEAN, STD))[..., 0].astype(int)
        assert abs(out - (ramp.astype(int) * 255 // 65535)).max() <= 2, p.name
        assert out.max() >= 250 and out.min() <= 3


def _tiff_rgb16(path: Path, rgb16: np.ndarray) -> None:
    """An uncompressed little-endian 16-bit-per-channel RGB TIFF (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    data = rgb16.astype("<u2").tobytes()
    entries = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 3, None),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, None),
        (277, 3, 1, 3),
        (278, 4, 1, h),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    bps_at = 8 + ifd_size
    data_at = bps_at + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 258:
            out += struct.pack("<HHII", tag, typ, count, bps_at)
        elif tag == 273:
            out += struct.pack("<HHII", tag, typ, count, data_at)
        elif typ == 3:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data
    path.write_bytes(bytes(out))


def test_sixteen_bit_rgb_tiff(tmp_path):
    rgb8 = np.asarray(scene(96, 64))
    _tiff_rgb16(tmp_path / "rgb16.tif", rgb8.astype(np.uint16) * 257)
    assert psnr_vs(tmp_path / "rgb16.tif", Image.fromarray(rgb8)) >= 45


def test_float_tiff(tmp_path):
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(ramp, "F").save(tmp_path / "f.tif")
    out = decode_for_model(tmp_path / "f.tif", PreprocessSpec(64, MEAN, STD))[..., 0].astype(int)
    assert abs(out - np.round(ramp * 255)).max() <= 2


def test_cmyk_jpeg_and_tiff(tmp_path):
    cmyk = scene().convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=95)
    cmyk.save(tmp_path / "c.tif")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    for p in (tmp_path / "c.jpg", tmp_path / "c.tif"):
        assert psnr_vs(p, Image.open(p).convert("RGB")) >= 40  # no profile: Pillow's formula
    # a profile that does not fit CMYK must not lose the picture
    cmyk.save(tmp_path / "c_badicc.tif", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    assert psnr_vs(tmp_path / "c_badicc.tif", cmyk.convert("RGB")) >= 40


def test_alpha_is_composited_on_neutral_grey(tmp_path):
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 32, 64))  # opaque blue left half
    rgba.save(tmp_path / "a.png")
    rgba.save(tmp_path / "a.webp", lossless=True)
    rgba.save(tmp_path / "a.tif")
    for p in (tmp_path / "a.png", tmp_path / "a.webp", tmp_path / "a.tif"):
        out = decode_for_model(p, SQUASH).astype(int)
        assert np.abs(out[:, -10:] - GREY).max() <= 1, p.name  # transparent -> grey, not red
        assert np.abs(out[:, :10] - (0, 0, 255)).max() <= 1, p.name
    half = Image.new("RGBA", (32, 32), (255, 255, 255, 128))
    half.save(tmp_path / "half.png")
    assert np.allclose(mean_rgb(tmp_path / "half.png"), [255 * 128 / 255 + GREY[0] * 127 / 255] * 3, atol=2)


def test_la_and_palette_transparency(tmp_path):
    la = Image.new("LA", (40, 40), (255, 0))
    la.paste((0, 255), (0, 0, 20, 40))
    la.save(tmp_path / "la.png")
    out = decode_for_model(tmp_path / "la.png", SQUASH).astype(int)
    assert np.abs(out[:, -6:] - GREY).max() <= 1 and out[:, :6].max() <= 1

    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 20, 40))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    pal.save(tmp_path / "p.gif", transparency=0)
    for p in (tmp_path / "p.png", tmp_path / "p.gif"):
        out = decode_for_model(p, SQUASH).astype(int)
        assert np.abs(out[:, :6] - (0, 255, 0)).max() <= 1, p.name
        assert np.abs(out[:, -6:] - GREY).max() <= 1, p.name


def test_palette_is_resampled_smoothly_not_nearest(tmp_path):
    original = scene(400, 300)
    pal = original.quantize(256)
    pal.save(tmp_path / "q.png")
    assert psnr_vs(tmp_path / "q.png", pal.convert("RGB")) >= 50


# ---------------------------------------------------------------------------------------------------
# colour profiles
# ---------------------------------------------------------------------------------------------------


def test_icc_profile_is_respected(samples_dir):
    tagged = samples_dir / "jpg" / "orientation" / "landscape_3.jpg"  # Apple "Generic RGB Profile"
    assert Image.open(tagged).info.get("icc_profile")
    managed = decode_for_model(tagged, SPEC).astype(int)
    raw = decode_for_model(tagged, SPEC, respect_icc=False).astype(int)
    assert np.abs(managed - raw).mean() > 5  # the profile really changes colours
    upright = samples_dir / "jpg" / "orientation" / "landscape_1.jpg"  # untagged: sRGB
    plain = decode_for_model(upright, SPEC).astype(int)
    assert np.abs(managed - plain).mean() < np.abs(raw - plain).mean() / 2


def test_srgb_profile_changes_nothing(tmp_path):
    original = scene()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    original.save(tmp_path / "s.png", icc_profile=srgb)
    original.save(tmp_path / "n.png")
    assert np.array_equal(decode_for_model(tmp_path / "s.png", SPEC), decode_for_model(tmp_path / "n.png", SPEC))


def test_open_rgb_full_resolution(tmp_path):
    original = scene(300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    original.save(tmp_path / "r.png", exif=exif)
    full = decode.open_rgb(tmp_path / "r.png")
    assert full.mode == "RGB" and full.size == (200, 300)
    assert np.array_equal(np.asarray(full), np.asarray(original.transpose(Image.Transpose.ROTATE_270)))


# ---------------------------------------------------------------------------------------------------
# RAW (rawpy / LibRaw), with synthetic DNG files
# ---------------------------------------------------------------------------------------------------


def make_dng(path: Path, rgb: Image.Image, *, orientation: int = 1, preview: Image.Image | None = None) -> None:
    """A minimal valid DNG: a 12-bit RGGB mosaic of ``rgb`` (camera space = linear sRGB), and
    optionally a baseline-JPEG preview in IFD0 with the raw image in a SubIFD, as cameras write."""
    a = (np.asarray(rgb.convert("RGB"), dtype=np.float64) / 255.0) ** 2.2 * 4000
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    mosaic = np.empty((h, w), np.uint16)
    mosaic[0::2, 0::2] = a[0:h:2, 0:w:2, 0]
    mosaic[0::2, 1::2] = a[0:h:2, 1:w:2, 1]
    mosaic[1::2, 0::2] = a[1:h:2, 0:w:2, 1]
    mosaic[1::2, 1::2] = a[1:h:2, 1:w:2, 2]
    raw_bytes = mosaic.astype("<u2").tobytes()
    # XYZ(D65) -> linear sRGB, as SRATIONAL x 10000
    m = [32406, -15372, -4986, -9689, 18758, 415, 557, -2040, 10570]

    def ifd(entries: list[tuple[int, int, int, object]], base: int) -> tuple[bytes, bytes]:
        """Serialise one IFD at offset ``base``; values that do not fit go in an area after it."""
        entries = sorted(entries)
        head = struct.pack("<H", len(entries))
        extra = b""
        extra_at = base + 2 + 12 * len(entries) + 4
        for tag, typ, count, value in entries:
            if isinstance(value, bytes):
                payload = value
            elif typ == 3:
                payload = struct.pack(f"<{count}H", *(value if isinstance(value, (list, tuple)) else [value]))
            elif typ == 4:
                payload = struct.pack(f"<{count}I", *(value if isinstance(value, (list, tuple)) else [value]))
            elif typ in (5, 10):
                payload = b"".join(struct.pack("<ii" if typ == 10 else "<II", n, d) for n, d in value)
            else:
                payload = bytes(value)
            if len(payload) <= 4:
                head += struct.pack("<HHI", tag, typ, count) + payload.ljust(4, b"\0")
            else:
                head += struct.pack("<HHII", tag, typ, count, extra_at + len(extra))
                extra += payload + (b"\0" if len(payload) % 2 else b"")
        return head + struct.pack("<I", 0), extra

    dng_tags = [
        (271, 2, 6, b"rtagx\0"),
        (272, 2, 5, b"test\0"),
        (274, 3, 1, orientation),
        (50706, 1, 4, b"\x01\x04\x00\x00"),
        (50707, 1, 4, b"\x01\x01\x00\x00"),
        (50708, 2, 11, b"rtagx test\0"),
        (50721, 10, 9, [(v, 10000) for v in m]),
        (50778, 3, 1, 21),
        (50728, 5, 3, [(1, 1), (1, 1), (1, 1)]),
    ]

    def raw_entries(data_at: int) -> list:
        return [
            (254, 4, 1, 0),
            (256, 4, 1, w),
            (257, 4, 1, h),
            (258, 3, 1, 16),
            (259, 3, 1, 1),
            (262, 3, 1, 32803),
            (273, 4, 1, data_at),
            (277, 3, 1, 1),
            (278, 4, 1, h),
            (279, 4, 1, len(raw_bytes)),
            (284, 3, 1, 1),
            (33421, 3, 2, [2, 2]),
            (33422, 1, 4, b"\x00\x01\x01\x02"),
            (50717, 4, 1, 4000),
        ]

    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    if preview is None:
        # pass 1 to size the IFD, pass 2 with the real data offset
        probe, extra = ifd(raw_entries(0) + dng_tags, 8)
        data_at = 8 + len(probe) + len(extra)
        body, extra = ifd(raw_entries(data_at) + dng_tags, 8)
        out += body + extra + raw_bytes
    else:
        buf = io.BytesIO()
        preview.convert("RGB").save(buf, "JPEG", quality=92)
        jpeg = buf.getvalue()
        pw, ph = preview.size

        def ifd0(jpeg_at: int, sub_at: int) -> list:
            return [
                (254, 4, 1, 1),
                (256, 4, 1, pw),
                (257, 4, 1, ph),
                (258, 3, 3, [8, 8, 8]),
                (259, 3, 1, 7),
                (262, 3, 1, 6),
                (273, 4, 1, jpeg_at),
                (277, 3, 1, 3),
                (278, 4, 1, ph),
                (279, 4, 1, len(jpeg)),
                (284, 3, 1, 1),
                (330, 4, 1, sub_at),
                *dng_tags,
            ]

        probe, extra = ifd(ifd0(0, 0), 8)
        jpeg_at = 8 + len(probe) + len(extra)
        sub_at = jpeg_at + len(jpeg) + (len(jpeg) % 2)
        body, extra = ifd(ifd0(jpeg_at, sub_at), 8)
        probe_raw, extra_raw = ifd(raw_entries(0), sub_at)
        raw_at = sub_at + len(probe_raw) + len(extra_raw)
        body_raw, extra_raw = ifd(raw_entries(raw_at), sub_at)
        out += body + extra + jpeg + (b"\0" if len(jpeg) % 2 else b"") + body_raw + extra_raw + raw_bytes
    path.write_bytes(bytes(out))


@pytest.fixture
def rawpy_mod():
    return pytest.importorskip("rawpy")


def test_dng_half_size_demosaic(tmp_path, rawpy_mod):
    original = scene(320, 240)
    make_dng(tmp_path / "plain.dng", original)
    out = decode_for_model(tmp_path / "plain.dng", SQUASH).astype(int)
    assert out[1, 1, 0] > 150 and out[1, 1, 1] < 90  # the red marker survives, top-left
    # colours follow the scene (demosaic + camera white balance are not a pixel-exact reference)
    small = np.asarray(original.resize((32, 32), Image.BICUBIC)).astype(int)
    assert np.abs(out - small).mean() < 30


def test_dng_uses_a_large_enough_preview_with_raw_orientation(tmp_path, rawpy_mod):
    original = scene(320, 240)
    preview = Image.new("RGB", (320, 240), (10, 200, 10))  # unlike the mosaic: shows which was used
    make_dng(tmp_path / "pv.dng", original, preview=preview, orientation=6)
    out = decode_for_model(tmp_path / "pv.dng", PreprocessSpec(64, MEAN, STD))
    assert np.abs(out.reshape(-1, 3).mean(0) - (10, 200, 10)).max() < 4
    tiny_preview = Image.new("RGB", (32, 24), (10, 200, 10))
    make_dng(tmp_path / "small_pv.dng", original, preview=tiny_preview)
    out = decode_for_model(tmp_path / "small_pv.dng", PreprocessSpec(64, MEAN, STD))
    assert out[..., 1].mean() < 150  # too small for 64 px: demosaic instead


def test_dng_orientation(tmp_path, rawpy_mod):
    original = scene(320, 240)
    make_dng(tmp_path / "rot.dng", original, orientation=6)  # rotate 90 CW for display
    out = decode_for_model(tmp_path / "rot.dng", SQUASH).astype(int)
    assert out[1, -2, 0] > 150 and out[1, -2, 1] < 90  # marker now top-right


def test_raw_without_the_extra_is_needs_extra(tmp_path, monkeypatch):
    make_dng(tmp_path / "x.dng", scene(64, 48))
    monkeypatch.setitem(sys.modules, "rawpy", None)
    with pytest.raises(DecodeError) as info:
        decode_for_model(tmp_path / "x.dng", SPEC)
    assert info.value.reason == "needs-extra" and "pip install 'rtagx[raw]'" in info.value.detail


def test_unreadable_raw_is_a_decode_error(tmp_path, rawpy_mod):
    (tmp_path / "junk.nef").write_bytes(b"II*\x00\x08\x00\x00\x00" + b"\x00" * 200)
    with pytest.raises(DecodeError) as info:
        decode_for_model(tmp_path / "junk.nef", SPEC)
    assert info.value.reason in ("unsupported-format", "corrupt", "truncated")
