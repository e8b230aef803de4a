"""Trained taggers: rtagx ``tag`` against a naive per-image loop, with random-weight models of the
real shapes (WD14 vit-tagger-v3: a ViT-B/16 at 448 px with 10,861 outputs, exported to ONNX with the
WD14 signature; JoyTag: the same ViT size with its 5,000+ outputs on torch; CLIP ViT-B-16 at 224 px
from open_clip's own config).

The naive loop is what the usual scripts do: for each image, PIL open, the reference preprocessing
(WD14/JoyTag: pad white, bicubic; CLIP: open_clip's eval transform), one ``session.run`` / forward
with batch 1, threshold, next, with onnxruntime's and torch's default settings. ``--kind both`` runs
CLIP then WD14 that way (two loops, two decodes per image) against one ``rtagx tag --model CLIP
--model WD14`` (one decode per image).

Two figures each way: the naive loop alone (model already loaded) and the naive script with its
model load; rtagx's pipeline (the command's own summary, less resolve-model, load-model and text:
a new vocabulary's prompts, encoded once) and its whole command (imports, model load, cache). Run
(minutes on 2 cores: the export is a third of it)::

    python3 bench/taggers.py --kind wd14 --images 16 --workdir /tmp/rtagx-bench-taggers

``--small`` uses the tests' tiny models instead (seconds; measures the pipeline, not the model).
"""

from __future__ import annotations

import argparse
import json
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


def naive_wd14(model_dir: Path, images: list[Path]) -> tuple[float, float]:
    """(loop seconds, seconds with the session's creation): onnxruntime's defaults, batch 1."""
    import onnxruntime as ort
    from tiny_taggers import wd14_reference_input

    begin = time.perf_counter()
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    start = time.perf_counter()
    for path in images:
        probs = session.run(None, {"input": wd14_reference_input(path, size)})[0][0]
        _ = [i for i, p in enumerate(probs) if p >= 0.35]
    end = time.perf_counter()
    return end - start, end - begin


def naive_joytag(model_dir: Path, images: list[Path]) -> tuple[float, float]:
    """(loop seconds, seconds with the model's load): torch's defaults, batch 1."""
    import torch
    from tiny_taggers import joytag_reference_input

    from rtagx.model.joytag import build_network, load_state

    begin = time.perf_counter()
    cfg = json.loads((model_dir / "config.json").read_text())
    network = build_network(cfg)
    load_state(network, str(model_dir / "model.safetensors"))
    network.eval()
    start = time.perf_counter()
    for path in images:
        with torch.inference_mode():
            probs = torch.sigmoid(network(joytag_reference_input(path, cfg["image_size"])))[0]
        _ = (probs >= 0.4).nonzero()
    end = time.perf_counter()
    return end - start, end - begin


def build_real_clip(directory: Path) -> tuple[Path, Path]:
    """open_clip's ViT-B-16 config and a checkpoint of random weights (fixed seed)."""
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    config, checkpoint = directory / "ViT-B-16-random.json", directory / "ViT-B-16-random.pt"
    if not checkpoint.is_file():
        cfg = open_clip.get_model_config("ViT-B-16")
        config.write_text(json.dumps(cfg))
        torch.manual_seed(0)
        torch.save({"state_dict": open_clip.model.CLIP(**cfg).state_dict()}, checkpoint)
    return config, checkpoint


def naive_clip(config: Path, checkpoint: Path, images: list[Path]) -> tuple[float, float]:
    """open_clip's usual script: model + eval transform, then per image open, preprocess, encode."""
    import open_clip
    import torch
    from PIL import Image

    start = time.perf_counter()
    cfg = json.loads(config.read_text())
    model = open_clip.model.CLIP(**cfg)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu")["state_dict"])
    model.eval()
    preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    text = torch.nn.functional.normalize(torch.randn(1000, cfg["embed_dim"]), dim=-1)
    loaded = time.perf_counter()
    for path in images:
        with torch.inference_mode(), Image.open(path) as im:
            x = preprocess(im.convert("RGB")).unsqueeze(0)
            v = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        _ = ((v @ text.T)[0] >= 0.2).nonzero()
    end = time.perf_counter()
    return end - loaded, end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("wd14", "joytag", "both"), default="wd14")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--small", action="store_true", help="the tests' tiny models (pipeline only)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rtagx-bench-taggers"))
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    from tiny_taggers import build_joytag, build_wd14

    tagger_kind = "joytag" if args.kind == "joytag" else "wd14"
    if args.small:
        model_dir = (build_wd14 if tagger_kind == "wd14" else build_joytag)(work / f"small-{tagger_kind}")
    else:
        model_dir = (build_real_wd14 if tagger_kind == "wd14" else build_real_joytag)(work / f"real-{tagger_kind}")
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

    models = ["--model", str(model_dir)]
    naive_loop = naive_whole = 0.0
    if args.kind == "both":
        from conftest import build_tiny_clip

        config, checkpoint = build_tiny_clip(work / "small-clip") if args.small else build_real_clip(work / "real-clip")
        loop, whole = naive_clip(config, checkpoint, images)
        naive_loop, naive_whole = naive_loop + loop, naive_whole + whole
        models = ["--model", str(config), "--pretrained", str(checkpoint), *models]
    loop, whole = (naive_wd14 if tagger_kind == "wd14" else naive_joytag)(model_dir, images)
    naive_loop, naive_whole = naive_loop + loop, naive_whole + whole
    cache = work / "cache.sqlite3"
    cache.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), RTAGX_OFFLINE="1")
    cmd = [sys.executable, "-m", "rtagx", "tag", str(photos), *models, "--cache", str(cache)]
    if args.kind == "both":  # CLIP's vocabulary (the tagger keeps its own tags): a short one, its
        vocab = work / "words.txt"  # prompts encoded once (excluded from the pipeline figure anyway)
        vocab.write_text("person\ndog\ncat\ncar\nbeach\nmountain\nfood\nbuilding\ntree\nsky\n", encoding="utf-8")
        cmd += ["--tags", str(vocab)]
    start = time.perf_counter()
    out = subprocess.run([*cmd, "--write", "none", "--yes", "--json"], capture_output=True, text=True, env=env)
    ours = time.perf_counter() - start
    if out.returncode not in (0, 3):
        raise SystemExit(out.stdout + out.stderr)
    summary = [json.loads(line) for line in out.stdout.splitlines() if '"summary"' in line][-1]
    # the pipeline: the run less its once-per-model costs (finding and loading the models, encoding
    # a new vocabulary's prompts: cached from then on), as the naive loops start with models loaded
    once = ("resolve-model", "load-model", "text")
    pipeline = summary["seconds"] - sum(summary["timings"].get(k, 0.0) for k in once)
    n = len(images)
    what = {"wd14": "WD14", "joytag": "JoyTag", "both": "CLIP ViT-B-16 + WD14"}[args.kind]
    print(f"{what}, {'tiny' if args.small else 'real-shape'} random-weight models, {n} images, {_cpu()}")
    print(
        f"naive per-image loop{'s' if args.kind == 'both' else ''}: {n / naive_loop:.3f} img/s loop alone ({naive_loop:.1f}s), "
        f"{n / naive_whole:.3f} img/s with the model load ({naive_whole:.1f}s)"
    )
    print(
        f"rtagx tag: {n / pipeline:.3f} img/s pipeline ({pipeline:.1f}s), {n / ours:.3f} img/s whole command "
        f"({ours:.1f}s: imports, model load, cache); decoded {summary.get('decoded')} for {summary['embedded']} embeddings"
    )
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings"].items()))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
