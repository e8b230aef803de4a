"""CPU speed options of the image tower: speed-up over fp32 and fidelity to the fp32 vectors.

    python bench/cpu_options.py                       # ViT-B-16 (random weights), all options
    python bench/cpu_options.py --model tiny          # quick run with the tests' tiny CLIP
    python bench/cpu_options.py --compile             # also torch.compile (about 30 s to compile)
    python bench/cpu_options.py --backends --no-extras --repeat 4   # the CPU backends vs eager bf16
    ONEDNN_MAX_CPU_ISA=AVX2 RTAGX_CPU_BF16=0 python bench/cpu_options.py --backends --no-extras
                                                      # a CPU without bf16, emulated (torch's oneDNN only)

Every option is loaded through rtagx's own ``load_encoder`` (the path ``rtagx tag`` takes), except
"bf16 autocast", which is torch.autocast around the fp32 model (what rtagx did before) for
comparison. Speed: images/s encoding pre-decoded batches (best of --repeat round-robin passes over
--speed-images images, batch --batch). Fidelity, against the fp32 vectors of the same images (the camera samples
in tests/data/camera-samples plus generated photos, decoded by rtagx): mean and min cosine, and the share of
(image, tag) decisions that flip at a fixed threshold: the 90th percentile of the fp32 scores against
a 80-tag vocabulary (COCO class names, "a photo of a {}.") encoded by the fp32 text tower. Random
weights give an odd score distribution; the percentile threshold makes the flip count meaningful
anyway. Goals: cosine >= 0.999 for a default, >= 0.99 for an opt-in.

``--backends`` adds rtagx's CPU backends (``--cpu-backend openvino`` / ``compile``, through
``load_encoder`` and its background preparation, waited for), in bf16 where the CPU has bf16, and
OpenVINO fp32; and their startup: the preparation time in a fresh process with an empty compiled-model
folder (first run on a machine) and again with the folder the first left (every later run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("RTAGX_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rtagx.imaging import decode  # noqa: E402
from rtagx.model.encoder import cpu_has_native_bf16, load_encoder, resolve_model  # noqa: E402


def images(spec: decode.PreprocessSpec, workdir: Path, extra: int) -> list[np.ndarray]:
    from throughput import make_images

    samples = REPO / "tests" / "data" / "camera-samples" / "jpg"
    files = [p for p in sorted(samples.rglob("*.jpg")) if p.name != "corrupted.jpg"] if samples.is_dir() else []
    files += make_images(workdir / "small", extra, (500, 375))
    out = []
    for f in files:
        with contextlib.suppress(Exception):
            out.append(decode.decode_for_model(f, spec))
    return out


def encode_all(fn, arrays: list[np.ndarray], spec: decode.PreprocessSpec, batch: int) -> np.ndarray:
    out = []
    for i in range(0, len(arrays), batch):
        out.append(fn(decode.to_model_batch(arrays[i : i + batch], spec)))
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["vit-b-16", "tiny"], default="vit-b-16")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rtagx-bench-throughput")
    ap.add_argument("--extra-images", type=int, default=24, help="generated 500x375 photos besides the samples")
    ap.add_argument("--speed-images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    ap.add_argument("--batches", default="1,4,8,16,32", help="batch sizes to time at the default precision")
    ap.add_argument("--backends", action="store_true", help="also rtagx's CPU backends (openvino, compile)")
    ap.add_argument("--no-extras", action="store_true", help="skip bf16 autocast, channels-last and the batch table")
    ap.add_argument("--startup", help=argparse.SUPPRESS)  # internal: time one backend's preparation
    ap.add_argument("--compile-dir", type=Path, help="keep compiled backends here (default: a new folder)")
    ap.add_argument("--speed-only", action="store_true", help="skip the fidelity columns")
    ap.add_argument("--no-startup", action="store_true", help="skip timing the backends' startup")
    ap.add_argument("--backend-list", default="openvino,compile", help="which backends --backends measures")
    ap.add_argument("--no-fp32", action="store_true", help="leave out fp32 rows (fp32 stays the fidelity reference)")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from throughput import make_model

    model_name, pretrained = make_model(args.model, args.workdir)
    resolved = resolve_model(model_name, pretrained, offline=True)
    if args.startup:
        return startup(resolved, args.startup, args.compile_dir, args.batch)
    threads = torch.get_num_threads()
    print(
        f"model {args.model}; torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs; "
        f"CPU bf16 instructions: {cpu_has_native_bf16()}; load {os.getloadavg()}"
    )

    ref = load_encoder(resolved, device="cpu", precision="fp32")
    spec = decode.PreprocessSpec.from_model(ref.model)
    arrays = images(spec, args.workdir, args.extra_images)
    speed_arrays = (arrays * (1 + args.speed_images // max(1, len(arrays))))[: args.speed_images]
    print(
        f"fidelity on {len(arrays)} images; speed on {len(speed_arrays)} images, batch {args.batch}, "
        f"best of {args.repeat}"
    )

    from rtagx.tags.vocab import load_vocabulary

    coco = [t.keyword for t in load_vocabulary("coco").tags]
    texts = ref.encode_texts([f"a photo of a {c}." for c in coco])
    if not args.speed_only:
        ref_vecs = encode_all(ref.encode_images, arrays, spec, args.batch)
        ref_scores = ref_vecs @ texts.T
        threshold = float(np.percentile(ref_scores, 90))

    def autocast_bf16(batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            f = ref.model.encode_image(batch)
        return torch.nn.functional.normalize(f.float(), dim=-1).numpy()

    options: list[tuple[str, object]] = [("fp32 (reference)", ref.encode_images)]
    options.append(
        (
            "bf16 weights (rtagx --precision bf16; auto here)",
            load_encoder(resolved, device="cpu", precision="bf16").encode_images,
        )
    )
    if not args.no_extras:
        options.append(("bf16 autocast (torch.autocast around fp32)", autocast_bf16))
    options.append(
        ("int8 dynamic linear (--precision int8)", load_encoder(resolved, device="cpu", precision="int8").encode_images)
    )
    if not args.no_extras:
        options.append(
            (
                "fp32 channels-last",
                load_encoder(resolved, device="cpu", precision="fp32", channels_last=True).encode_images,
            )
        )
    if args.backends:
        options += backends(resolved, decode.to_model_batch(arrays[: args.batch], spec), args)
    if args.compile:
        compiled = load_encoder(resolved, device="cpu", precision="fp32")
        t = time.perf_counter()
        compiled.model.visual = torch.compile(compiled.model.visual)
        compiled.encode_images(decode.to_model_batch(arrays[: args.batch], spec))
        print(f"torch.compile: first call (compile) {time.perf_counter() - t:.1f} s")
        options.append(("fp32 torch.compile (inductor)", compiled.encode_images))
        cb = load_encoder(resolved, device="cpu", precision="bf16")
        t = time.perf_counter()
        cb.model.visual = torch.compile(cb.model.visual)
        cb.encode_images(decode.to_model_batch(arrays[: args.batch], spec))
        print(f"torch.compile bf16: first call (compile) {time.perf_counter() - t:.1f} s")
        options.append(("bf16 weights + torch.compile", cb.encode_images))

    if args.no_fp32:  # eager bf16 is the base row
        options = [o for o in options if not o[0].startswith(("fp32", "int8"))]
    # speed: round-robin over the options, best pass of each (a shared machine's load drifts; timing
    # the options one after another would credit whichever ran in a quiet minute)
    for _, fn in options:
        fn(decode.to_model_batch(arrays[: args.batch], spec))  # warm-up
    best = {name: float("inf") for name, _ in options}
    for _ in range(args.repeat):
        for name, fn in options:
            t = time.perf_counter()
            encode_all(fn, speed_arrays, spec, args.batch)
            best[name] = min(best[name], time.perf_counter() - t)
    header = f"{'option':52} {'img/s':>7} {'speed-up':>8} {'cos mean':>9} {'cos min':>9} {'flips':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    base_rate = None
    for name, fn in options:
        r = len(speed_arrays) / best[name]
        base_rate = base_rate or r
        if args.speed_only:
            print(f"{name:52} {r:7.2f} {r / base_rate:7.2f}x", flush=True)
            continue
        vecs = ref_vecs if fn is ref.encode_images else encode_all(fn, arrays, spec, args.batch)
        cos = (vecs * ref_vecs).sum(-1)
        flips = float(((vecs @ texts.T >= threshold) != (ref_scores >= threshold)).mean())
        print(f"{name:52} {r:7.2f} {r / base_rate:7.2f}x {cos.mean():9.6f} {cos.min():9.6f} {flips:7.2%}", flush=True)

    if args.no_extras:
        print(f"\nload average after the run: {os.getloadavg()}")
        return 0
    bf = load_encoder(resolved, device="cpu", precision="bf16")
    sizes = [int(x) for x in args.batches.split(",")]

    def with_threads(n: int):
        def go() -> None:
            torch.set_num_threads(n)
            try:
                encode_all(bf.encode_images, speed_arrays, spec, args.batch)
            finally:
                torch.set_num_threads(threads)

        return go

    cases = {
        f"bf16, batch {b:>3}, {threads} threads": (lambda b=b: encode_all(bf.encode_images, speed_arrays, spec, b))
        for b in sizes
    }
    cases[f"bf16, batch {args.batch:>3}, 1 thread"] = with_threads(1)
    cases[f"fp32, batch   1, {threads} threads"] = lambda: encode_all(ref.encode_images, speed_arrays, spec, 1)
    cases[f"fp32, batch {args.batch:>3}, {threads} threads"] = lambda: encode_all(
        ref.encode_images, speed_arrays, spec, args.batch
    )
    best = {k: float("inf") for k in cases}
    for _ in range(args.repeat):
        for k, go in cases.items():
            t = time.perf_counter()
            go()
            best[k] = min(best[k], time.perf_counter() - t)
    print(f"\nbatch size and torch threads (round-robin, best of {args.repeat}; first pass includes oneDNN warm-up):")
    for k in cases:
        print(f"  {k:36} {len(speed_arrays) / best[k]:7.2f} img/s")
    print(f"\nload average after the run: {os.getloadavg()}")
    with contextlib.suppress(Exception):
        torch._dynamo.reset()
    return 0


def backends(resolved, example: torch.Tensor, args: argparse.Namespace) -> list[tuple[str, object]]:
    """rtagx's CPU backends as options, each prepared (and waited for) as a run prepares it; their
    startup measured in fresh processes, first with an empty compiled-model folder, then cached."""
    import subprocess

    flag = os.environ.get("RTAGX_CPU_BF16")  # RTAGX_CPU_BF16=0: as on a CPU without bf16
    bf16 = cpu_has_native_bf16() if flag is None else flag.strip().lower() in ("1", "true", "yes", "on")
    precision = "bf16" if bf16 else "fp32"
    names = args.backend_list.split(",")
    wanted = [(b, precision) for b in names]
    if precision == "bf16" and "openvino" in names and not args.no_fp32:
        wanted.append(("openvino", "fp32"))
    out: list[tuple[str, object]] = []
    for backend, prec in wanted:
        folder = args.compile_dir or Path(tempfile.mkdtemp(prefix=f"rtagx-{backend}-", dir=args.workdir))
        times = []
        for _ in () if args.no_startup else ("first", "cached"):
            cmd = [sys.executable, __file__, "--model", args.model, "--workdir", str(args.workdir)]
            cmd += ["--startup", f"{backend}:{prec}", "--compile-dir", str(folder), "--batch", str(args.batch)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = [x for x in done.stdout.splitlines() if x.startswith("startup ")]
            times.append(line[-1].split()[-1] if line else "failed: " + done.stderr.strip()[-200:])
        if times:
            print(
                f"{backend} {prec}: preparation {times[0]} s on the first run, {times[1]} s when cached (in {folder})"
            )
        enc = load_encoder(resolved, device="cpu", precision=prec, cpu_backend=backend, compile_dir=folder)
        enc.start_backend(example.to(enc.input_dtype) if enc.input_dtype is not None else example)
        used = enc.wait_backend()
        if used != backend:
            print(f"{backend} {prec}: not used ({enc.backend_note})")
            continue
        out.append((f"{prec} --cpu-backend {backend}", enc.encode_images))
    return out


def startup(resolved, which: str, folder: Path, batch: int) -> int:
    """Time one backend's preparation in this fresh process (what a run pays before it switches)."""
    backend, precision = which.split(":")
    enc = load_encoder(resolved, device="cpu", precision=precision, cpu_backend=backend, compile_dir=folder)
    size = resolved.identity.image_size
    example = torch.randn(batch, 3, size, size)
    enc.start_backend(example.to(enc.input_dtype) if enc.input_dtype is not None else example)
    used = enc.wait_backend()
    print(f"used {used} {enc.backend_note}")
    print(f"startup {enc.backend_seconds:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
