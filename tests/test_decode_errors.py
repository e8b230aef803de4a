"""decode: every kind of bad input is a DecodeError with a precise reason and a detail; nothing hangs."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from rtagx.imaging import decode
from rtagx.imaging.decode import DecodeError, PreprocessSpec, decode_for_model

SPEC = PreprocessSpec(64, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def photo(width: int = 640, height: int = 480) -> Image.Image:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([128 + 90 * np.sin(x / 40), 128 + 90 * np.cos(y / 30), 128 + 60 * np.sin((x + y) / 50)], -1)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def encoded(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    photo().save(buf, fmt, **kw)
    return buf.getvalue()


def reason_of(path: Path, **kw) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_for_model(path, SPEC, **kw)
    err = info.value
    assert err.detail and isinstance(err.detail, str)
    return err


# ---------------------------------------------------------------------------------------------------
# damaged files
# ---------------------------------------------------------------------------------------------------


def test_real_corrupted_camera_file(samples_dir):
    err = reason_of(samples_dir / "jpg" / "corrupted.jpg")
    assert err.reason == "corrupt"
    assert "restart" in err.detail


def test_all_other_camera_samples_pass_the_stream_checks(samples_dir):
    """No false alarms from the JPEG restart-marker and PNG checksum checks on real files."""
    for p in sorted((samples_dir / "jpg").rglob("*.jpg")):
        if p.name != "corrupted.jpg":
            decode_for_model(p, SPEC)


@pytest.mark.parametrize(
    "fmt,ext,kw",
    [
        ("JPEG", ".jpg", {"quality": 90}),
        ("JPEG", ".jpg", {"quality": 90, "progressive": True}),
        ("PNG", ".png", {}),
        ("GIF", ".gif", {}),
        ("TIFF", ".tif", {}),
        ("BMP", ".bmp", {}),
        ("WEBP", ".webp", {"quality": 80}),
    ],
)
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated(tmp_path, fmt, ext, kw, keep):
    data = encoded(fmt, **kw)
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[: int(len(data) * keep)])
    assert reason_of(path).reason == "truncated"


def test_truncated_heif(tmp_path, samples_dir):
    pytest.importorskip("pillow_heif")
    data = (samples_dir / "heic" / "samplefilehub.heif").read_bytes()
    (tmp_path / "cut.heic").write_bytes(data[: len(data) // 2])
    assert reason_of(tmp_path / "cut.heic").reason == "truncated"


@pytest.fixture
def jxl_photo() -> dict[str, bytes]:
    pytest.importorskip("pillow_jxl")
    out = {}
    for name, kw in {"bare": {"quality": 80}, "container": {"quality": 80, "use_container": True}}.items():
        buf = io.BytesIO()
        photo(96, 64).save(buf, "JXL", **kw)
        out[name] = buf.getvalue()
    return out


def test_truncated_and_damaged_jxl(tmp_path, jxl_photo):
    path = tmp_path / "x.jxl"
    container = jxl_photo["container"]
    path.write_bytes(container[: len(container) // 2])
    assert reason_of(path).reason == "truncated"  # the container's box sizes say so
    bare = jxl_photo["bare"]
    path.write_bytes(bare[:40] + bytes(b ^ 0x5A for b in bare[40:]))
    assert reason_of(path).reason == "corrupt"
    path.write_bytes(bare[: len(bare) // 2])  # a bare codestream has no sizes to tell truncation by
    assert reason_of(path).reason in ("corrupt", "truncated")


def test_fuzzed_jxl_fails_cleanly(tmp_path, jxl_photo):
    rng = np.random.default_rng(3)
    path = tmp_path / "f.jxl"
    for i in range(60):
        data = bytearray(jxl_photo["container" if i % 2 else "bare"])
        for _ in range(int(rng.integers(0, 6))):
            data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data[: max(1, int(len(data) * rng.uniform(0.3, 1.0)))]))
        try:
            assert decode_for_model(path, SPEC).shape == (64, 64, 3)
        except DecodeError as e:
            assert e.reason in {"corrupt", "truncated", "not-an-image", "too-large"}, e


def test_truncated_jpeg_with_restart_markers(tmp_path):
    buf = io.BytesIO()
    photo().save(buf, "JPEG", quality=90)
    data = _with_restart_interval(buf.getvalue())
    (tmp_path / "ok.jpg").write_bytes(data)
    decode_for_model(tmp_path / "ok.jpg", SPEC)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    assert reason_of(tmp_path / "cut.jpg").reason == "truncated"


def _with_restart_interval(jpeg: bytes) -> bytes:
    """Re-encode through Pillow with a restart interval (camera JPEGs have one)."""
    im = Image.open(io.BytesIO(jpeg))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, restart_marker_blocks=4)
    assert b"\xff\xdd" in buf.getvalue()
    return buf.getvalue()


def test_jpeg_with_lost_restart_interval_is_corrupt(tmp_path):
    """A scan missing a chunk between two restart markers decodes silently in libjpeg: caught here."""
    data = _with_restart_interval(encoded("JPEG", quality=90))
    rsts = [i for i in range(len(data) - 1) if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7]
    a, b = rsts[10], rsts[12]  # drop two whole restart intervals
    broken = data[:a] + data[b:]
    (tmp_path / "gap.jpg").write_bytes(broken)
    Image.open(tmp_path / "gap.jpg").load()  # Pillow alone does not notice
    err = reason_of(tmp_path / "gap.jpg")
    assert err.reason == "corrupt" and "restart" in err.detail


def test_png_with_damaged_data_is_corrupt(tmp_path):
    data = bytearray(encoded("PNG"))
    mid = len(data) // 2
    data[mid : mid + 40] = bytes(b ^ 0x5A for b in data[mid : mid + 40])
    (tmp_path / "flip.png").write_bytes(bytes(data))
    err = reason_of(tmp_path / "flip.png")
    assert err.reason == "corrupt" and "checksum" in err.detail


@pytest.mark.parametrize("fmt,ext", [("JPEG", ".jpg"), ("PNG", ".png"), ("GIF", ".gif"), ("WEBP", ".webp")])
def test_garbage_after_the_magic_is_corrupt(tmp_path, fmt, ext):
    data = encoded(fmt)
    rng = np.random.default_rng(1)
    head = {"JPEG": 3, "PNG": 8, "GIF": 6, "WEBP": 12}[fmt]
    (tmp_path / f"g{ext}").write_bytes(data[:head] + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    assert reason_of(tmp_path / f"g{ext}").reason in ("corrupt", "truncated", "too-large")  # a random header size


# ---------------------------------------------------------------------------------------------------
# not images, empty, missing, unreadable
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content,name",
    [
        (b"just some notes about the holiday\n", "notes.jpg"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "download.jpeg"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "logo.png"),
        (bytes(range(256)) * 8, "blob.tif"),
    ],
)
def test_not_an_image(tmp_path, content, name):
    (tmp_path / name).write_bytes(content)
    err = reason_of(tmp_path / name)
    assert err.reason == "not-an-image"


@pytest.mark.parametrize("content", [b"%PDF-1.7\n%...", b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2mp41"])
def test_other_media_is_unsupported(tmp_path, content):
    (tmp_path / "x.jpg").write_bytes(content + b"\x00" * 64)
    assert reason_of(tmp_path / "x.jpg").reason == "unsupported-format"


def test_empty(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert reason_of(tmp_path / "zero.jpg").reason == "empty"


def test_missing(tmp_path):
    assert reason_of(tmp_path / "gone.jpg").reason == "missing"


def test_broken_symlink_and_loop(tmp_path):
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert reason_of(tmp_path / "dangling.jpg").reason == "broken-symlink"
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    assert reason_of(tmp_path / "loop.jpg").reason == "broken-symlink"


def test_symlink_to_a_good_file_works(tmp_path):
    photo().save(tmp_path / "real.jpg")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "real.jpg")
    assert decode_for_model(tmp_path / "link.jpg", SPEC).shape == (64, 64, 3)


def test_directory_and_fifo_are_not_files(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    assert reason_of(tmp_path / "folder.jpg").reason == "not-a-file"
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")
        t = time.perf_counter()
        assert reason_of(tmp_path / "pipe.jpg").reason == "not-a-file"  # and no hang waiting for a writer
        assert time.perf_counter() - t < 2


def test_permission_denied(tmp_path):
    """chmod 000 as a normal user; as root (CI containers) drop privileges in a forked child."""
    path = tmp_path / "secret.jpg"
    photo().save(path)
    path.chmod(0)
    if os.geteuid() != 0:
        assert reason_of(path).reason == "permission-denied"
        return
    if not hasattr(os, "fork"):
        pytest.skip("needs fork to drop root privileges")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, try, report the reason through the pipe
        code = 0
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                decode_for_model(path, SPEC)
                msg = b"decoded"
            except DecodeError as e:
                msg = e.reason.encode()
            os.write(write_fd, msg)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    got = os.read(read_fd, 100).decode()
    os.close(read_fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert got == "permission-denied"


def test_vanishing_file(tmp_path, monkeypatch):
    """Deleted between the scan and the decode."""
    path = tmp_path / "soon_gone.jpg"
    photo().save(path)
    path.unlink()
    assert reason_of(path).reason == "missing"


# ---------------------------------------------------------------------------------------------------
# decompression bombs and the megapixel guard
# ---------------------------------------------------------------------------------------------------


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (the data is a few bytes): a classic bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(encoded("JPEG", quality=50))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("make,ext", [(_png_with_header, ".png"), (_jpeg_with_size, ".jpg")])
def test_bomb_is_too_large_before_decoding(tmp_path, make, ext):
    path = tmp_path / f"bomb{ext}"
    path.write_bytes(make(60000, 60000))  # 3600 MP
    t = time.perf_counter()
    err = reason_of(path)
    assert err.reason == "too-large" and "3600 MP" in err.detail
    assert time.perf_counter() - t < 1  # refused from the header, nothing decoded


def test_max_megapixels_is_the_one_knob(tmp_path):
    photo(640, 480).save(tmp_path / "p.jpg")  # 0.3 MP
    assert reason_of(tmp_path / "p.jpg", max_megapixels=0.2).reason == "too-large"
    assert decode_for_model(tmp_path / "p.jpg", SPEC, max_megapixels=0.5).shape == (64, 64, 3)
    # above Pillow's own global bomb limit (2 x MAX_IMAGE_PIXELS), our limit decides alone
    big = _png_with_header(20000, 10000)  # 200 MP declared
    (tmp_path / "big.png").write_bytes(big)
    err = reason_of(tmp_path / "big.png", max_megapixels=150)
    assert err.reason == "too-large"
    err = reason_of(tmp_path / "big.png", max_megapixels=250)
    assert err.reason != "too-large" or "Pillow" not in err.detail  # not stopped by Pillow's limit


def test_pillow_bomb_error_maps_to_too_large():
    err = decode._map_load_error(Image.DecompressionBombError("Image size (1 pixels) exceeds limit"), "PNG")
    assert err.reason == "too-large"


def test_load_truncated_images_stays_off(tmp_path):
    data = encoded("JPEG")
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    reason_of(tmp_path / "t.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ---------------------------------------------------------------------------------------------------
# never crash, never hang: arbitrary damage gives an array or a DecodeError, quickly
# ---------------------------------------------------------------------------------------------------

_SEEDS = {}


def _seed(fmt: str) -> bytes:
    if fmt not in _SEEDS:
        buf = io.BytesIO()
        kw = {"JPEG": {"quality": 70, "restart_marker_blocks": 2}, "WEBP": {"quality": 60}}.get(fmt, {})
        photo(96, 64).save(buf, fmt, **kw)
        _SEEDS[fmt] = buf.getvalue()
    return _SEEDS[fmt]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=6),
)
def test_fuzzed_files_fail_cleanly(tmp_path_factory, fmt, cut, flips):
    data = bytearray(_seed(fmt))
    for where, xor in flips:
        i = int(where * (len(data) - 1))
        data[i] ^= xor
    data = data[: max(1, int(len(data) * (0.3 + 0.7 * cut)))]
    path = tmp_path_factory.mktemp("fuzz") / "f.img"
    path.write_bytes(bytes(data))
    t = time.perf_counter()
    try:
        out = decode_for_model(path, SPEC)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    except DecodeError as e:
        assert e.reason in {"corrupt", "truncated", "not-an-image", "unsupported-format", "too-large", "empty"}
    assert time.perf_counter() - t < 5
