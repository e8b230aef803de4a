"""The GPU run, prepared: one table that says where a GPU machine's time goes. Started by ``bench/gpu.sh``.

    bash bench/gpu.sh                          # on a GPU machine: 2,000 + 2,000 images, ViT-B-16, fp16
    COUNT=8 DEVICE=cpu MODEL=tiny bash bench/gpu.sh   # the same steps on the CPU in seconds (tested)

Rows, all in one process and one run:

* encoder alone, images/s at batch 64/128/256 (``--precision auto``: fp16 autocast on CUDA), from
  pre-made input tensors: the encoder-only limit;
* per image set (2,000 generated 12-MP camera-like JPEGs, 2,000 web-size 500x375 JPEGs):
  decode only, with rtagx's decode thread pool at its default size on this device (every core on a
  GPU machine): the decode-bound limit; ``rtagx tag`` end to end (library ``run_tag``, cold cache,
  ``--write embed`` into hard-linked copies, whole call including model load, and its embed stage
  from first decode to last file written); the share of the GPU kept busy (``nvidia-smi`` sampled
  every 100 ms during the embed stage, and the encoder's own encode time / embed-stage wall);
  the goal ratio embed stage / min(decode-bound, encoder-only at the run's batch);
* keywords written into the files alone, on one thread as rtagx's writer does (a third bound:
  writing into a 12-MP JPEG rewrites the file, about 25 ms);
* GPU JPEG decoding (``torchvision.io.decode_jpeg`` on the device, batched, resize on the device):
  decode-only images/s, to tell whether moving decoding to the GPU would lift a decode-bound run.
  It is measured here only; rtagx decodes on the CPU (orientation, ICC and odd JPEGs go through one
  fidelity-checked path).

Random weights (seed 0) of the real ViT-B-16 shape, as ``bench/throughput.py`` builds them: speed does
not depend on the weights, and a bare GPU machine has no network to fetch real ones.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("RTAGX_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["RTAGX_CONFIG"] = os.devnull  # a user's config file must not change the run

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIZES = {"12-MP": (4000, 3000), "web": (500, 375)}
_BASES: dict[tuple[int, int, int], np.ndarray] = {}


def _make_one(args: tuple[str, int, int, int]) -> None:
    """One JPEG: rolled / mirrored variants of a few generated bases (distinct bytes, no dedupe)."""
    from test_decode import camera_like
    from throughput import variant

    path, w, h, i = args
    nb = 4 if w * h > 4e6 else 64
    key = (w, h, i % nb)
    if key not in _BASES:
        _BASES[key] = np.asarray(camera_like(w, h, seed=i % nb, detail=0.85))
    Image.fromarray(variant(_BASES[key], i // nb)).save(path, quality=90)


def make_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` JPEGs of ``size`` in ``folder`` (kept between runs), generated on every core."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:05d}.jpg" for i in range(count)]
    todo = [(str(p), size[0], size[1], i) for i, p in enumerate(paths) if not p.exists()]
    if todo:
        t = time.perf_counter()
        todo.sort(key=lambda x: x[3] % 4)  # each worker mostly reuses one base
        with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
            list(pool.map(_make_one, todo, chunksize=max(1, len(todo) // (4 * (os.cpu_count() or 2)))))
        print(f"(generated {len(todo)} {size[0]}x{size[1]} JPEGs in {time.perf_counter() - t:.0f} s)", flush=True)
    return paths


def link_copy(files: list[Path], dest: Path) -> Path:
    """A folder of hard links: rtagx replaces a file atomically (new inode), so the sources stay as
    they were, and a 7 GB set is copied in a moment."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in files:
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copy2(f, dest / f.name)
    return dest


class GpuSampler:
    """``nvidia-smi`` utilization, sampled every 100 ms between start() and stop() (None: no GPU)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not shutil.which("nvidia-smi"):
            return
        self.samples = []
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        proc = self._proc

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                with contextlib.suppress(ValueError):
                    self.samples.append(float(line.split(",")[0]))

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        if self._proc is None:
            return None
        self._proc.terminate()
        self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._proc = None
        return float(np.mean(self.samples)) / 100 if self.samples else None


def encoder_only(encoder, spec, batch: int, seconds: float) -> float:
    """Images/s of the encoder on pre-made inputs (the host-to-device copy included, as in a run)."""
    from rtagx.imaging import decode

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (spec.size, spec.size, 3), dtype=np.uint8) for _ in range(batch)]
    x = decode.to_model_batch(arrays, spec)
    encoder.encode_images(x)  # warm-up: kernels, cuDNN/oneDNN plans
    n, t = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t < seconds:
        encoder.encode_images(x)  # returns numpy: synchronised
        n += 1
    return n * batch / (time.perf_counter() - t)


def decode_only(files: list[Path], spec, workers: int) -> float:
    from rtagx.imaging import decode

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda p: decode.decode_for_model(p, spec), files):
            pass
    return len(files) / (time.perf_counter() - t)


def device_decode_only(files: list[Path], spec, device: str, batch: int = 64) -> float | None:
    """torchvision's JPEG decoder on ``device`` (nvJPEG on CUDA), batched, resized there: images/s
    from file bytes to model-size tensors (reading the files included)."""
    try:
        import torch
        import torch.nn.functional as F
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def run(chunk: list[Path]) -> None:
        datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in chunk]
        images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        for img in images:
            x = img[None].float()
            scale = spec.size / min(x.shape[-2:])
            hw = (max(spec.size, round(x.shape[-2] * scale)), max(spec.size, round(x.shape[-1] * scale)))
            F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
        if device == "cuda":
            torch.cuda.synchronize()

    run(files[: min(len(files), 4)])  # warm-up (nvJPEG handles, allocator)
    t = time.perf_counter()
    for i in range(0, len(files), batch):
        run(files[i : i + batch])
    return len(files) / (time.perf_counter() - t)


def write_only(files: list[Path], workdir: Path, limit: int = 200) -> float:
    """Keywords written into the files (``--write embed``), one thread as rtagx's writer: images/s."""
    from rtagx.keywords import metadata

    sample = files[:limit]
    folder = link_copy(sample, workdir / "write-only")
    t = time.perf_counter()
    for p in sorted(folder.glob("*.jpg")):
        metadata.write_keywords(p, ["dog", "beach", "sky", "sea", "person"], target="embed")
    rate = len(sample) / (time.perf_counter() - t)
    shutil.rmtree(folder, ignore_errors=True)
    return rate


def tag_run(files: list[Path], workdir: Path, label: str, model: str, pretrained: str, device: str) -> dict:
    """``run_tag`` end to end on a fresh hard-linked copy with a cold cache and a fresh model load."""
    import throughput

    from rtagx.run.events import RunEvents
    from rtagx.run.tag import run_tag

    folder = link_copy(files, workdir / f"run-{label}")
    settings = throughput.cold_settings(workdir, label, model, pretrained, {"device": device})
    marks: dict[str, float] = {}
    sampler = GpuSampler()

    def on_stage(name: str, total: int) -> None:
        if name == "embed" and "embed" not in marks:
            marks["embed"] = time.perf_counter()
            sampler.start()

    def on_file(outcome) -> None:
        marks["last"] = time.perf_counter()

    t0 = time.perf_counter()
    try:
        summary = run_tag([folder], settings, events=RunEvents(on_file=on_file, on_stage=on_stage))
    finally:
        busy = sampler.stop()
    wall = time.perf_counter() - t0
    shutil.rmtree(folder, ignore_errors=True)
    embed_wall = marks.get("last", t0) - marks.get("embed", t0)
    return {
        "whole": summary.embedded / wall,
        "embed": summary.embedded / embed_wall if embed_wall > 0 else 0.0,
        "embedded": summary.embedded,
        "skipped": summary.skipped,
        "encode_share": summary.timings.get("encode", 0.0) / embed_wall if embed_wall > 0 else 0.0,
        "gpu_busy": busy,
        "timings": dict(summary.timings),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cpu, mps or auto")
    ap.add_argument("--count", type=int, default=2000, help="images per set (default 2000)")
    ap.add_argument("--model", choices=["vit-b-16", "tiny"], default="vit-b-16")
    ap.add_argument("--batches", default="64,128,256", help="encoder-only batch sizes")
    ap.add_argument("--seconds", type=float, default=4.0, help="time per encoder-only measurement")
    ap.add_argument("--sets", default="12-MP,web")
    ap.add_argument("--large-size", default="4000x3000", help="size of the '12-MP' set (smaller for a CPU check)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rtagx-bench-gpu")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)

    import throughput
    import torch

    from rtagx.imaging import decode
    from rtagx.model.encoder import load_encoder, resolve_device, resolve_model
    from rtagx.run.local import default_workers
    from rtagx.settings import Settings

    SIZES["12-MP"] = tuple(int(v) for v in args.large_size.split("x"))  # type: ignore[assignment]
    device = resolve_device(args.device)
    model, pretrained = throughput.make_model(args.model, args.workdir)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none"
    print(
        f"device {device} ({gpu}); {os.cpu_count()} CPUs; torch {torch.__version__}; model {args.model}; "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    encoder = load_encoder(resolve_model(model, pretrained, offline=True), device=device, precision="auto")
    spec = decode.PreprocessSpec.from_model(encoder.model)
    rows: list[tuple[str, str, str]] = []
    enc_rates: dict[int, float] = {}
    for b in (int(x) for x in args.batches.split(",")):
        enc_rates[b] = encoder_only(encoder, spec, b, args.seconds)
        rows.append(("encoder only", f"batch {b}, {encoder.precision}", f"{enc_rates[b]:.1f}"))
        print(f"  encoder only, batch {b}: {enc_rates[b]:.1f} images/s", flush=True)
    run_batch = Settings().batch_size or (16 if device == "cpu" else 128)
    enc_at_run = enc_rates.get(run_batch) or encoder_only(encoder, spec, run_batch, args.seconds)
    del encoder
    if device == "cuda":
        torch.cuda.empty_cache()
    workers = default_workers(device)
    for name in args.sets.split(","):
        w, h = SIZES[name]
        files = make_images(args.workdir / f"{name}-{w}x{h}", args.count, (w, h))
        dec = decode_only(files, spec, workers)
        print(f"  {name}: decode only {dec:.1f} images/s", flush=True)
        gdec = device_decode_only(files, spec, device)
        print(f"  {name}: decode_jpeg on {device} {gdec or 0:.1f} images/s", flush=True)
        wr = write_only(files, args.workdir)
        print(f"  {name}: keywords written alone {wr:.1f} images/s", flush=True)
        run = tag_run(files, args.workdir, name, model, pretrained, device)
        bound = min(dec, enc_at_run)
        busy = "n/a" if run["gpu_busy"] is None else f"{run['gpu_busy']:.0%}"
        rows += [
            (name, f"decode only, {workers} workers (decode-bound limit)", f"{dec:.1f}"),
            (name, f"torchvision decode_jpeg on {device}, batch 64 (not used by rtagx)", f"{gdec or 0:.1f}"),
            (name, "keywords written into the files alone, 1 thread (rtagx's writer)", f"{wr:.1f}"),
            (name, "rtagx tag, whole call (model load, prompts, scan, embed, write)", f"{run['whole']:.1f}"),
            (name, "rtagx tag, embed stage (first decode to last file written)", f"{run['embed']:.1f}"),
            (name, f"GPU busy (nvidia-smi) / encoder busy share of the stage: {busy} / {run['encode_share']:.0%}", ""),
            (
                name,
                f"embed stage / min(decode-bound, encoder-only at batch {run_batch}) (goal >= 80%)",
                f"{run['embed'] / bound:.0%}",
            ),
        ]
        print(
            f"  {name}: rtagx tag {run['embed']:.1f} images/s (embed stage), {run['whole']:.1f} (whole call); "
            f"{run['embedded']} embedded, {run['skipped']} skipped; timings "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(run["timings"].items())),
            flush=True,
        )
    print("\n| set | measure | images/s |\n| --- | --- | --- |")
    for name, what, value in rows:
        print(f"| {name} | {what} | {value} |")
    print(f"\n{time.perf_counter() - started:.0f} s in all; load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
