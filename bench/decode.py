"""Decode benchmark: rtagx's fast path against open_clip's reference preprocessing.

    python bench/decode.py                 # all cases, best of 5, then the fidelity suite
    python bench/decode.py --repeat 9 --margin 2.0
    python bench/decode.py --suite-only    # only the fidelity suite's minimum PSNR

Reference = Image.open + full decode + ImageOps.exif_transpose + ICC->sRGB (when tagged) +
open_clip.image_transform(size, is_train=False) (resize shorter side, bicubic antialias, centre crop,
ToTensor, Normalize). Fast = rtagx.imaging.decode.decode_for_model + to_model_batch (JPEG draft mode, box
resize of the crop only, orientation and colour on the small result).

Per case: ms per image for each (best of --repeat, single thread), speed-up, PSNR of the
preprocessed tensor in 8-bit pixel terms, and the cosine between the image vectors of the tiny CLIP
the tests use (tests/conftest.py build_tiny_clip, 64 px input) -- and of the same tiny architecture
at 224 px input for the 224 rows.

Last, the decoding-fidelity suite of tests/test_decode_fidelity.py (every case of issue 20: TIFF
orientations and compressions, PNG transparency, DNG previews under all eight flips, HEIC with
thumbnails, JPEG XL, and the cases that were right already): its minimum PSNR per model size, the
figure the tests hold at >= 40 dB.

The 12-MP test image is synthetic but camera-like: a noise pyramid with a natural-image (about 1/f)
spectrum and hard edges, saved at JPEG quality 92 at about 1.7 bits per pixel, the bit rate of the
real full-resolution camera frames in the samples (1.1-1.6 bpp). JPEG decode time is dominated by
entropy decoding, which draft mode cannot skip, so the speed-up falls as bits per pixel rise: the
"detailed" case (about 3 bpp) shows that end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from test_decode import OPENAI_MEAN as MEAN  # noqa: E402
from test_decode import OPENAI_STD as STD  # noqa: E402
from test_decode import reference_of_file as reference  # noqa: E402  (open_clip's own eval transform)

from rtagx.imaging import decode  # noqa: E402


def fast(path: Path, spec: decode.PreprocessSpec) -> torch.Tensor:
    return decode.to_model_batch([decode.decode_for_model(path, spec)], spec)[0]


def best_ms(fn, repeat: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000, out


def psnr(a: torch.Tensor, b: torch.Tensor, spec: decode.PreprocessSpec) -> float:
    std = torch.tensor(spec.std).view(-1, 3, 1, 1)
    mse = float((((a - b) * std) ** 2).mean())
    return 99.0 if mse == 0 else 10 * float(np.log10(1 / mse))


def tiny_models(workdir: Path) -> dict[int, torch.nn.Module]:
    """The tests' tiny CLIP (64 px) and the same architecture and seed at 224 px."""
    import conftest
    import open_clip

    models = {}
    for size in (64, 224):
        saved = json.loads(json.dumps(conftest.TINY_CONFIG))
        try:
            conftest.TINY_CONFIG["vision_cfg"]["image_size"] = size
            cfg, ckpt = conftest.build_tiny_clip(workdir / f"tiny{size}")
        finally:
            conftest.TINY_CONFIG.clear()
            conftest.TINY_CONFIG.update(saved)
        open_clip.add_model_config(cfg)
        models[size] = open_clip.create_model(cfg.stem, pretrained=str(ckpt)).eval()
        open_clip.factory._MODEL_CONFIGS.pop(cfg.stem, None)
    return models


def cosine(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
    with torch.no_grad():
        va = torch.nn.functional.normalize(model.encode_image(a), dim=-1)
        vb = torch.nn.functional.normalize(model.encode_image(b), dim=-1)
    return float((va * vb).sum(-1).min())


def make_cases(workdir: Path) -> list[tuple[str, Path]]:
    from test_decode import camera_like

    cases = []
    t = time.perf_counter()
    im = camera_like(4000, 3000)
    im.save(workdir / "cam12.jpg", quality=92)
    cases.append(("12MP JPEG q92", workdir / "cam12.jpg"))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.transpose(Image.Transpose.ROTATE_90).save(workdir / "cam12_rot.jpg", quality=92, exif=exif)
    cases.append(("12MP JPEG q92, EXIF orientation 6", workdir / "cam12_rot.jpg"))
    camera_like(4000, 3000, seed=1, detail=0.86).save(workdir / "cam12_detail.jpg", quality=92)
    cases.append(("12MP JPEG q92, detailed", workdir / "cam12_detail.jpg"))
    camera_like(6000, 4000, seed=2).save(workdir / "cam24.jpg", quality=92)
    cases.append(("24MP JPEG q92", workdir / "cam24.jpg"))
    im.save(workdir / "cam12.png", compress_level=1)
    cases.append(("12MP PNG", workdir / "cam12.png"))
    print(f"(generated test images in {time.perf_counter() - t:.1f} s)", file=sys.stderr)
    return cases


def fidelity_suite(workdir: Path) -> None:
    """Build every case of the fidelity suite and print the minimum PSNR per model size."""
    import pytest
    from test_decode_fidelity import CASES, MIN_PSNR_DB, SIZES, fidelity_psnr

    folder = workdir / "fidelity"
    folder.mkdir()
    worst = {size: (float("inf"), "") for size in SIZES}
    skipped = []
    for name, build in sorted(CASES.items()):
        try:
            built = build(folder)
        except pytest.skip.Exception:
            skipped.append(name)
            continue
        for size in SIZES:
            worst[size] = min(worst[size], (fidelity_psnr(built, size), name))
    print(f"\ndecoding-fidelity suite: {len(CASES) - len(skipped)} cases (tests/test_decode_fidelity.py)")
    for size, (db, name) in worst.items():
        verdict = "ok" if db >= MIN_PSNR_DB else f"BELOW {MIN_PSNR_DB:g} dB"
        print(f"  {size:>3} px: PSNR min {db:.2f} dB ({name}) {verdict}")
    if skipped:
        print(f"  skipped (extra not installed): {', '.join(skipped)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="best of N timings per case (default 5)")
    ap.add_argument("--margin", type=float, default=None, help=f"override decode.DRAFT_MARGIN ({decode.DRAFT_MARGIN})")
    ap.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="camera samples folder (jpg/**/*.jpg); default: the ones the tests carry",
    )
    ap.add_argument("--suite-only", action="store_true", help="only the decoding-fidelity suite's minimum PSNR")
    args = ap.parse_args(argv)
    if args.samples is None:
        import conftest

        args.samples = conftest.SAMPLES
    if args.margin is not None:
        decode.DRAFT_MARGIN = args.margin
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="rtagx-bench-") as tmp:
        workdir = Path(tmp)
        if args.suite_only:
            fidelity_suite(workdir)
            return 0
        models = tiny_models(workdir)
        cases = make_cases(workdir)
        print(f"draft margin {decode.DRAFT_MARGIN}, reducing gap {decode.REDUCING_GAP}, best of {args.repeat}\n")
        header = (
            f"{'case':38} {'size':>4} {'MB':>5} {'bpp':>4} {'ref ms':>8} {'fast ms':>8} {'speed-up':>8} "
            f"{'PSNR dB':>8} {'cosine':>9}"
        )
        print(header)
        print("-" * len(header))
        for name, path in cases:
            w, h = Image.open(path).size
            mb = path.stat().st_size / 1e6
            for size in (224, 64):
                spec = decode.PreprocessSpec(size, MEAN, STD)
                t_ref, ref = best_ms(lambda path=path, spec=spec: reference(path, spec), max(2, args.repeat // 2))
                t_fast, ours = best_ms(lambda path=path, spec=spec: fast(path, spec), args.repeat)
                cos = cosine(models[size], ref[None], ours[None])
                print(
                    f"{name:38} {size:>4} {mb:>5.1f} {mb * 8e6 / (w * h):>4.1f} {t_ref:>8.1f} {t_fast:>8.1f} "
                    f"{t_ref / t_fast:>7.1f}x {psnr(ours[None], ref[None], spec):>8.2f} {cos:>9.6f}"
                )

        files = [p for p in sorted((args.samples / "jpg").rglob("*.jpg")) if p.name != "corrupted.jpg"]
        if files:
            print(f"\ncamera samples: {len(files)} real JPEGs from {args.samples}")
            for size in (64, 224):
                spec = decode.PreprocessSpec(size, MEAN, STD)
                refs = torch.stack([reference(p, spec) for p in files])
                ours = torch.stack([fast(p, spec) for p in files])
                ps = [psnr(o[None], r[None], spec) for o, r in zip(ours, refs)]
                worst = files[int(np.argmin(ps))].name
                print(
                    f"  {size:>3} px: PSNR min {min(ps):.2f} dB ({worst}), median {statistics.median(ps):.2f} dB; "
                    f"tiny-CLIP cosine min {cosine(models[size], refs, ours):.6f}"
                )
        fidelity_suite(workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
