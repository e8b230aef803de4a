"""The embed executor's scheduling, old against new, interleaved in one process (issue 16 profile).

    python bench/executor_ab.py --set small --count 96 --rounds 3
    python bench/executor_ab.py --set large --count 32 --rounds 2

One model is loaded once and shared (``LoadedModels``); a template cache holds the prompt vectors so
that no run re-encodes them. Each round: the warm encoder alone on pre-decoded arrays, then
``run_tag`` (cold image cache, ``--write embed``) with each executor configuration, then the encoder
alone again. Per run it prints the embed-stage steady state (after the first batch is written) over
the mean of the encoder-only rates around it, the process CPU per image in that window against the
encoder alone, and the profile: how much decode and write time fell *inside* an encode call
(intervals recorded by wrapping ``decode_file``, ``encode_batch`` and ``Tagger.handle``).

Configurations: ``old`` = gate off, GIL switch interval 5 ms (the executor before issue 16);
``new`` = ``run/local.py``'s defaults (``EncodeGate`` with ``GATE_SHARE``, ``SWITCH_INTERVAL``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
os.environ["RTAGX_CONFIG"] = os.devnull
os.environ.setdefault("RTAGX_OFFLINE", "1")

import numpy as np  # noqa: E402

Interval = tuple[float, float]


def overlap(a: list[Interval], b: list[Interval]) -> float:
    """Seconds of ``a`` that fall inside ``b`` (``b``'s intervals do not overlap each other)."""
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", choices=["small", "large"], default="small")
    ap.add_argument("--count", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default="old,new")
    ap.add_argument("--model", choices=["vit-b-16", "tiny"], default="vit-b-16")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rtagx-bench-throughput")
    args = ap.parse_args(argv)
    import throughput

    import rtagx.run.local as local
    import rtagx.run.tagger as tagger_mod
    from rtagx.imaging import decode
    from rtagx.model.loaded import LoadedModels
    from rtagx.run.events import RunEvents
    from rtagx.run.tag import run_tag
    from rtagx.settings import load_settings

    wd: Path = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    model, pretrained = throughput.make_model(args.model, wd)
    size = (500, 375) if args.set == "small" else (4000, 3000)
    files = throughput.make_images(wd / args.set, args.count, size)
    tags = wd / "bench-tags.txt"
    tags.write_text(throughput.BENCH_TAGS)
    models = LoadedModels()

    def settings(cache: Path) -> Any:
        options = {"cache": str(cache), "model": model, "pretrained": pretrained, "write": "embed"}
        options |= {"threshold": -1.0, "top_k": 5, "tags": str(tags), "offline": True}
        return load_settings(options, environ={})

    s0 = settings(wd / "ab-template.sqlite3")
    resolved = models.resolve(model, pretrained, offline=True)
    enc = models.load(resolved, device=s0.device, precision=s0.precision, threads=None, cpu_bf16=s0.cpu_bf16)
    batch = s0.batch_size or 16
    spec = decode.PreprocessSpec.from_model(enc.model)
    with ThreadPoolExecutor(2) as pool:
        arrays = list(pool.map(lambda p: decode.decode_for_model(p, spec), files))
    template = wd / "ab-template.sqlite3"
    empty = wd / "ab-empty"
    empty.mkdir(exist_ok=True)
    if not template.exists():  # prompt vectors once: copied into every run's fresh cache
        run_tag([empty], s0, models=models)

    def encoder_only() -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        for i in range(0, len(arrays), batch):
            enc.encode_images(decode.to_model_batch(arrays[i : i + batch], spec))
        return len(arrays) / (time.perf_counter() - t), (time.process_time() - c) / len(arrays)

    spans: dict[str, list[Interval]] = {"decode": [], "encode": [], "write": []}

    def wrap(owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)

        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                spans[key].append((t, time.perf_counter()))

        setattr(owner, name, timed)

    wrap(local, "decode_file", "decode")
    wrap(local, "encode_batch", "encode")
    wrap(tagger_mod.Tagger, "handle", "write")
    defaults = (local.GATE_SHARE, local.SWITCH_INTERVAL)

    def pipeline(config: str) -> dict[str, float]:
        local.GATE_SHARE, local.SWITCH_INTERVAL = defaults if config == "new" else (0.0, 0.005)
        folder = throughput.copy_folder(files, wd / f"ab-run-{args.set}")
        cache = wd / f"ab-cache-{args.set}.sqlite3"
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(str(cache) + suffix).unlink(missing_ok=True)
        shutil.copy(template, cache)
        marks: dict[str, float] = {}
        done = [0]

        def on_file(outcome: Any) -> None:
            marks["last"] = time.perf_counter()
            done[0] += 1
            if done[0] == batch:
                marks["first"], marks["cpu"] = marks["last"], time.process_time()

        for v in spans.values():
            v.clear()
        summary = run_tag([folder], settings(cache), events=RunEvents(on_file=on_file), models=models)
        cpu_end = time.process_time()
        rest = summary.embedded - batch
        return {
            "steady": rest / (marks["last"] - marks["first"]),
            "cpu": (cpu_end - marks["cpu"]) / rest,
            "decode": sum(e - s for s, e in spans["decode"]),
            "decode_in": overlap(spans["decode"], spans["encode"]),
            "write": sum(e - s for s, e in spans["write"]),
            "write_in": overlap(spans["write"], spans["encode"]),
            "wait_decode": summary.timings.get("wait-decode", 0.0),
        }

    configs = args.configs.split(",")
    ratios: dict[str, list[float]] = {c: [] for c in configs}
    encoder_only()  # warm-up
    print(f"{args.count} {args.set} JPEGs, {enc.precision}, batch {batch}; load {os.getloadavg()[0]:.1f}", flush=True)
    before = encoder_only()
    for r in range(args.rounds):
        for c in configs:
            p = pipeline(c)
            after = encoder_only()
            ratio = p["steady"] / ((before[0] + after[0]) / 2)
            ratios[c].append(ratio)
            print(
                f"  round {r + 1} {c:4}: steady {p['steady']:.2f} img/s = {ratio:.0%} of the encoder alone "
                f"({before[0]:.2f}/{after[0]:.2f}); CPU {p['cpu'] * 1000:.0f} ms/img vs {after[1] * 1000:.0f} alone; "
                f"decode {p['decode']:.2f} s, {p['decode_in']:.2f} s of it inside encode calls; write "
                f"{p['write']:.2f} s, {p['write_in']:.2f} s inside; encoder waited {p['wait_decode']:.2f} s "
                f"for decoding; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            before = after
    print("median steady / encoder alone:", ", ".join(f"{c} {np.median(v):.0%}" for c, v in ratios.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
