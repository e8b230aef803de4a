"""Trained taggers: rtagx ``tag`` against a naive per-image loop, with random-weight models of the
real shapes (WD14 vit-tagger-v3: a ViT-B/16 at 448 px with 10,861 outputs, exported to ONNX with the
WD14 signature; or JoyTag: the same ViT size with its 5,000+ outputs on torch).

The naive loop is what the usual scripts do: for each image, PIL open, the reference
``prepare_image`` (pad white, bicubic), one ``session.run`` / forward with batch 1, threshold, next.
rtagx: ``python -m rtagx tag DIR --write none`` into a fresh cache (decode threads overlapping
batched inference, results stored), timed as the whole command. Both use every core.

Run (about 5 minutes on 2 cores: the export is most of it)::

    python3 bench/taggers.py --kind wd14 --images 16 --workdir /tmp/rtagx-bench-taggers

``--small`` uses the tests' tiny models instead (seconds; measures the pipeline, not the model).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

WD14_TAGS = 10861  # wd-vit-tagger-v3's selected_tags.csv rows
JOYTAG_TAGS = 5271


def build_real_wd14(directory: Path) -> Path:
    """A ViT-B/16 at 448 px (timm), random weights, exported with the WD14 v3 signature."""
    import timm
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "model.onnx").is_file():
        return directory
    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", img_size=448, num_classes=WD14_TAGS, pretrained=False).eval()

    class Wd14(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, x):  # NHWC BGR 0-255 -> NCHW RGB [-1, 1] -> sigmoid
            x = x.flip(-1).permute(0, 3, 1, 2) / 127.5 - 1.0
            return torch.sigmoid(self.vit(x))

    torch.onnx.export(
        Wd14(),
        torch.zeros(1, 448, 448, 3),
        str(directory / "model.onnx"),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    rows = ["tag_id,name,category,count"]
    rows += [f"{i},{'rating_' if i < 4 else 'tag_'}{i},{9 if i < 4 else 0},{WD14_TAGS - i}" for i in range(WD14_TAGS)]
    (directory / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return directory


def build_real_joytag(directory: Path) -> Path:
    from tiny_taggers import build_joytag

    if (directory / "model.safetensors").is_file():
        return directory
    import tiny_taggers

    cfg = {
        "class": "ViT",
        "image_size": 448,
        "num_blocks": 12,
        "patch_size": 16,
        "d_model": 768,
        "mlp_dim": 3072,
        "num_heads": 12,
        "stochdepth_rate": 0.0,
        "use_sine": False,
        "loss_type": "focal",
        "layerscale_init": None,
        "head_mean_after": False,
        "cnn_stem": "conv:c=64;ln;relu;conv:c=128;ln;relu;conv:c=256;ln;relu;conv:c=512;ln;relu;conv:c=768,s=1,k=1,p=0",
        "patch_dropout": 0.0,
    }
    tiny_taggers.JOYTAG_TAGS = [f"tag_{i}" for i in range(JOYTAG_TAGS)]
    return build_joytag(directory, config=cfg)


def naive_wd14(model_dir: Path, images: list[Path]) -> float:
    import onnxruntime as ort
    from tiny_taggers import wd14_reference_input

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    start = time.perf_counter()
    for path in images:
        probs = session.run(None, {"input": wd14_reference_input(path, size)})[0][0]
        _ = [i for i, p in enumerate(probs) if p >= 0.35]
    return time.perf_counter() - start


def naive_joytag(model_dir: Path, images: list[Path]) -> float:
    import json

    import torch
    from tiny_taggers import joytag_reference_input

    from rtagx.model.joytag import build_network, load_state

    cfg = json.loads((model_dir / "config.json").read_text())
    network = build_network(cfg)
    load_state(network, str(model_dir / "model.safetensors"))
    network.eval()
    start = time.perf_counter()
    for path in images:
        with torch.inference_mode():
            probs = torch.sigmoid(network(joytag_reference_input(path, cfg["image_size"])))[0]
        _ = (probs >= 0.4).nonzero()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("wd14", "joytag"), default="wd14")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--small", action="store_true", help="the tests' tiny models (pipeline only)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rtagx-bench-taggers"))
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    from tiny_taggers import build_joytag, build_wd14

    if args.small:
        model_dir = (build_wd14 if args.kind == "wd14" else build_joytag)(work / f"small-{args.kind}")
    else:
        model_dir = (build_real_wd14 if args.kind == "wd14" else build_real_joytag)(work / f"real-{args.kind}")
    samples = sorted(p for p in (REPO / "tests/data/camera-samples/jpg").glob("*.jpg") if p.name != "corrupted.jpg")
    photos = work / "photos"
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir()
    images = []
    for i in range(args.images):
        src = samples[i % len(samples)]
        dest = photos / f"{i:04d}-{src.name}"
        # unique image data per copy, so the cache cannot share vectors between copies
        from PIL import Image

        with Image.open(src) as im:
            arr = np.asarray(im.convert("RGB")).copy()
        arr[0, 0] = (i % 256, i // 256 % 256, 7)
        Image.fromarray(arr).save(dest, quality=95)
        images.append(dest)

    naive = (naive_wd14 if args.kind == "wd14" else naive_joytag)(model_dir, images)
    cache = work / "cache.sqlite3"
    cache.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), RTAGX_OFFLINE="1")
    cmd = [sys.executable, "-m", "rtagx", "tag", str(photos), "--model", str(model_dir), "--cache", str(cache)]
    start = time.perf_counter()
    out = subprocess.run([*cmd, "--write", "none", "--yes"], capture_output=True, text=True, env=env)
    ours = time.perf_counter() - start
    if out.returncode not in (0, 3):
        raise SystemExit(out.stdout + out.stderr)
    n = len(images)
    print(f"{args.kind} {'tiny' if args.small else 'real-shape'} model, {n} images")
    print(f"naive per-image loop (model loaded, not counted): {naive:.2f}s, {n / naive:.2f} img/s")
    print(f"rtagx tag (whole command, imports and model load included): {ours:.2f}s, {n / ours:.2f} img/s")
    print(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip())


if __name__ == "__main__":
    main()
