"""Keyword write speed on a 5 MB JPEG: rtagx's segment splice against exiv2 on a temporary copy.

    python bench/write_speed.py               # best and median of 15 writes each
    python bench/write_speed.py --repeat 30 --size-mb 5

The photo is 4000x3000, a colour gradient plus noise, saved by Pillow at quality 95; the noise level
is tuned so the file is about --size-mb. Each timed write changes the keywords (two keyword sets
alternate), so every call really writes: parse the header segments, build the XMP packet and the
IPTC block, write a temporary file in the same folder, fsync, rename. Also timed: a write that
changes nothing (idempotent check only), a read, and for reference the same change done by pyexiv2
on a temporary copy (the path TIFF/PNG/WebP take), which also rewrites EXIF.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtagx.keywords import metadata

KEYWORDS_A = ["dog", "beach", "café", "日本", "Zürich", "sunset", "golden retriever", "sand"]
KEYWORDS_B = ["cat", "sofa", "indoor", "Zürich", "window light"]


def make_jpeg(path: Path, size_mb: float) -> None:
    """4000x3000 gradient + noise at quality 95, noise amplitude searched to hit ``size_mb``."""
    w, h = 4000, 3000
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((h, w, 3)).astype(np.float32)
    lo, hi = 0.0, 40.0
    for _ in range(7):
        amp = (lo + hi) / 2
        img = np.clip(base + noise * amp, 0, 255).astype(np.uint8)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "BenchCam", "Model 5"
        Image.fromarray(img).save(path, quality=95, exif=exif)
        size = path.stat().st_size / 1e6
        if abs(size - size_mb) < 0.15:
            break
        lo, hi = (amp, hi) if size < size_mb else (lo, amp)


def timed(fn, repeat: int) -> list[float]:
    out = []
    for k in range(repeat):
        t0 = time.perf_counter()
        fn(k)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def exiv2_write(path: Path, keywords: list[str]) -> None:
    import pyexiv2

    tmp = path.with_name("." + path.name + ".tmp")
    shutil.copyfile(path, tmp)
    img = pyexiv2.Image(str(tmp))
    try:
        img.modify_xmp({"Xmp.dc.subject": keywords})
        img.modify_iptc({"Iptc.Envelope.CharacterSet": "\x1b%G", "Iptc.Application2.Keywords": keywords})
    finally:
        img.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--size-mb", type=float, default=5.0)
    ap.add_argument("--dir", type=Path, default=None, help="folder for the test file (default: a temp folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        photo = Path(d) / "bench.jpg"
        make_jpeg(photo, args.size_mb)
        print(f"test file: 4000x3000 JPEG q95, {photo.stat().st_size / 1e6:.2f} MB")
        sets = (KEYWORDS_A, KEYWORDS_B)
        rows = [
            ("write (keywords change)", timed(lambda k: metadata.write_keywords(photo, sets[k % 2]), args.repeat)),
        ]
        metadata.write_keywords(photo, KEYWORDS_A)
        rows.append(
            ("write (nothing changes)", timed(lambda k: metadata.write_keywords(photo, KEYWORDS_A), args.repeat))
        )
        rows.append(("read", timed(lambda k: metadata.read_keywords(photo), args.repeat)))
        ref = Path(d) / "ref.jpg"
        shutil.copyfile(photo, ref)
        rows.append(("pyexiv2 on a temp copy (reference)", timed(lambda k: exiv2_write(ref, sets[k % 2]), args.repeat)))
        print(f"{'operation':38s} {'best ms':>9s} {'median ms':>10s}")
        for name, ms in rows:
            print(f"{name:38s} {min(ms):9.1f} {statistics.median(ms):10.1f}")


if __name__ == "__main__":
    main()
