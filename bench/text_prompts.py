"""Prompt encoding: the trimmed forward (``rtagx/model/text_trim.py``) against the full 77-token one.

    python bench/text_prompts.py                 # ViT-B-16 (random weights), bf16 where the CPU has it
    python bench/text_prompts.py --rounds 5

Encodes the prompts of ``bench/throughput.py``'s 32-tag vocabulary with the default templates (224
prompts) both ways, interleaved, in one process; prints seconds per pass, the median speed-up and the
lowest cosine between the two sets of vectors.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["vit-b-16", "tiny"], default="vit-b-16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rtagx-bench-throughput")
    args = ap.parse_args(argv)
    import throughput

    import rtagx.model.encoder as enc_mod
    from rtagx.tags import prompts

    model, pretrained = throughput.make_model(args.model, args.workdir)
    enc = enc_mod.load_encoder(
        enc_mod.resolve_model(model, pretrained, offline=True), device="cpu", precision="auto", text_only=True
    )
    tags = [t for t in throughput.BENCH_TAGS.splitlines() if t and not t.startswith("#")]
    templates = prompts.template_set(prompts.DEFAULT_TEMPLATES)
    texts = [prompts.fill(t, tag) for tag in tags for t in templates]
    print(f"{len(texts)} prompts, {enc.precision}; load {os.getloadavg()[0]:.1f}", flush=True)
    trimmed = enc_mod.trimmed_text_forward
    times: dict[str, list[float]] = {"full": [], "trimmed": []}
    cos = 1.0
    for r in range(args.rounds):
        full_vectors = None
        for mode in ("full", "trimmed"):
            enc_mod.trimmed_text_forward = trimmed if mode == "trimmed" else (lambda *a: None)  # type: ignore[assignment]
            t = time.perf_counter()
            vectors = enc.encode_texts(texts)
            times[mode].append(time.perf_counter() - t)
            if full_vectors is None:
                full_vectors = vectors
            else:
                cos = min(cos, float((vectors * full_vectors).sum(axis=1).min()))
        print(
            f"  round {r + 1}: full {times['full'][-1]:.2f} s, trimmed {times['trimmed'][-1]:.2f} s; "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    enc_mod.trimmed_text_forward = trimmed
    full, short = float(np.median(times["full"])), float(np.median(times["trimmed"]))
    print(f"median: full {full:.2f} s, trimmed {short:.2f} s: {full / short:.2f}x; lowest cosine {cos:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
