"""Tiny trained taggers in the real file formats, with fixed random weights, and the reference
preprocessing from the models' published code, for tests and benchmarks.

* WD14 v3: ``model.onnx`` (input ``input`` [N, S, S, 3] float32 BGR 0-255, output ``output`` [N, T]
  sigmoid probabilities, as SmilingWolf's v3 exports) and ``selected_tags.csv`` with the real columns
  ``tag_id,name,category,count`` (category 9 rating, 0 general, 4 character).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: (name, category) rows of the tiny model's selected_tags.csv: WD14's four ratings first, as in v3.
WD14_TAGS: list[tuple[str, int]] = [
    ("general", 9),
    ("sensitive", 9),
    ("questionable", 9),
    ("explicit", 9),
    ("1girl", 0),
    ("solo", 0),
    ("long_hair", 0),
    ("short_hair", 0),
    ("outdoors", 0),
    ("indoors", 0),
    ("sky", 0),
    ("cloud", 0),
    ("tree", 0),
    ("no_humans", 0),
    ("scenery", 0),
    ("building", 0),
    ("water", 0),
    ("day", 0),
    ("night", 0),
    ("blue_sky", 0),
    ("grass", 0),
    ("car", 0),
    ("road", 0),
    ("^_^", 0),
    ("hatsune_miku", 4),
    ("kirisame_marisa", 4),
    ("hakurei_reimu", 4),
]


def build_wd14(
    directory: Path,
    *,
    size: int = 64,
    seed: int = 0,
    tags: list[tuple[str, int]] | None = None,
    batch: int | None = None,
    nchw: bool = False,
    float16: bool = False,
    input_name: str = "input",
) -> Path:
    """A folder with a WD14-v3-format ``model.onnx`` and ``selected_tags.csv``: flatten, dense, sigmoid.

    The other shapes of WD14 exports, same weights and so the same probabilities: ``batch`` fixes the
    batch axis (older exports: 1), ``nchw`` takes ``[N, 3, S, S]``, ``float16`` takes and gives float16,
    ``input_name`` renames the input (v2 exports: ``input_1:0``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tags = tags or WD14_TAGS
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    features = size * size * 3
    # inputs are 0-255 pixels: centre them (-127.5) and scale so the logits spread over about [-3, 3]
    w = (rng.standard_normal((features, len(tags))) / (127.5 * np.sqrt(features)) * 3).astype(np.float32)
    b = rng.uniform(-1.5, 0.5, len(tags)).astype(np.float32)
    centre = np.full((1,), 127.5, dtype=np.float32)
    pixels = "pixels"
    nodes = [helper.make_node("Cast", [input_name], ["as_float"], to=TensorProto.FLOAT)]
    if nchw:
        nodes.append(helper.make_node("Transpose", ["as_float"], [pixels], perm=[0, 2, 3, 1]))
    else:
        nodes.append(helper.make_node("Identity", ["as_float"], [pixels]))
    nodes += [
        helper.make_node("Sub", [pixels, "centre"], ["centred"]),
        helper.make_node("Flatten", ["centred"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
    ]
    element = TensorProto.FLOAT16 if float16 else TensorProto.FLOAT
    nodes.append(helper.make_node("Cast", ["probs"], ["output"], to=element))
    n = batch if batch is not None else "batch"
    shape = [n, 3, size, size] if nchw else [n, size, size, 3]
    graph = helper.make_graph(
        nodes,
        "tiny-wd14",
        [helper.make_tensor_value_info(input_name, element, shape)],
        [helper.make_tensor_value_info("output", element, [n, len(tags)])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(centre, "centre")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))
    with open(directory / "selected_tags.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category) in enumerate(tags):
            out.writerow([100000 + i, name, category, 1000 - i])
    return directory


def wd14_reference_input(path: Path, target_size: int) -> np.ndarray:
    """SmilingWolf's wd-tagger ``prepare_image`` (alpha over white, pad to a white square, bicubic
    resize, RGB -> BGR, float32 0-255, NHWC with a batch axis), on the image upright (EXIF)."""
    image = ImageOps.exif_transpose(Image.open(path))
    image = image.convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    max_dim = max(image.size)
    pad_left = (max_dim - image.size[0]) // 2
    pad_top = (max_dim - image.size[1]) // 2
    padded = Image.new("RGB", (max_dim, max_dim), (255, 255, 255))
    padded.paste(image, (pad_left, pad_top))
    if max_dim != target_size:
        padded = padded.resize((target_size, target_size), Image.BICUBIC)
    array = np.asarray(padded, dtype=np.float32)[:, :, ::-1]
    return np.expand_dims(array, axis=0)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


#: A JoyTag-architecture ViT with small dimensions (the published one: 448 px, 12 blocks, d_model 768).
JOYTAG_CONFIG = {
    "class": "ViT",
    "image_size": 64,
    "num_blocks": 2,
    "patch_size": 16,
    "d_model": 32,
    "mlp_dim": 64,
    "num_heads": 2,
    "stochdepth_rate": 0.0,
    "use_sine": False,
    "loss_type": "focal",
    "layerscale_init": 0.5,
    "head_mean_after": False,
    "cnn_stem": None,
    "patch_dropout": 0.0,
}

JOYTAG_TAGS = ["1girl", "solo", "long_hair", "outdoors", "sky", "tree", "no_humans", "scenery", "water", "car", "^_^"]


def build_joytag(directory: Path, *, seed: int = 0, config: dict | None = None) -> Path:
    """A folder with ``config.json``, ``model.safetensors`` (fixed random weights) and ``top_tags.txt``."""
    import json

    import torch
    from safetensors.torch import save_file

    from rtagx.model.joytag import build_network

    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(config or JOYTAG_CONFIG, n_tags=len(JOYTAG_TAGS))
    network = build_network(cfg)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in network.state_dict().items():
        if value.dtype.is_floating_point:
            scale = 1.0 if "norm" in name and name.endswith("weight") else 0.2
            base = 1.0 if scale == 1.0 else 0.0
            value = base + scale * torch.randn(value.shape, generator=generator)
        state[name] = value.contiguous()
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    (directory / "top_tags.txt").write_text("\n".join(JOYTAG_TAGS) + "\n", encoding="utf-8")
    return directory


def joytag_reference_input(path: Path, target_size: int):
    """fancyfeast/joytag's ``prepare_image``: pad to a white square, bicubic resize, /255, CLIP
    mean/std (NCHW with a batch axis), on the image upright (EXIF) and in RGB."""
    import torch

    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    max_dim = max(image.size)
    pad_left = (max_dim - image.size[0]) // 2
    pad_top = (max_dim - image.size[1]) // 2
    padded = Image.new("RGB", (max_dim, max_dim), (255, 255, 255))
    padded.paste(image, (pad_left, pad_top))
    if max_dim != target_size:
        padded = padded.resize((target_size, target_size), Image.BICUBIC)
    tensor = torch.from_numpy(np.asarray(padded).copy()).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    return ((tensor - mean) / std).unsqueeze(0)


def joytag_reference_forward(state: dict, cfg: dict, x):
    """The published JoyTag ViT forward (conv patch embedding, learned positions, pre-norm blocks
    with layer scales, final norm, token mean, head), in plain torch functional ops on the state
    dict, then sigmoid: the oracle for rtagx's module."""
    import torch
    from torch.nn import functional as F

    d, heads, p = cfg["d_model"], cfg["num_heads"], cfg["patch_size"]
    x = F.conv2d(x, state["patch_embeddings.weight"], state["patch_embeddings.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2) + state["pos_embedding.embedding.weight"]
    n, length, _ = x.shape
    for i in range(cfg["num_blocks"]):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (d,), state[b + "norm1.weight"], state[b + "norm1.bias"])
        q, k, v = F.linear(h, state[b + "qkv_proj.weight"], state[b + "qkv_proj.bias"]).split(d, dim=-1)
        q, k, v = (t.view(n, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
        a = (weights @ v).transpose(1, 2).reshape(n, length, d)
        x = x + F.linear(a, state[b + "out_proj.weight"], state[b + "out_proj.bias"]) * state[b + "skip_init1.skip"]
        h = F.layer_norm(x, (d,), state[b + "norm2.weight"], state[b + "norm2.bias"])
        h = F.linear(
            F.gelu(F.linear(h, state[b + "mlp.linear1.weight"], state[b + "mlp.linear1.bias"])),
            state[b + "mlp.linear2.weight"],
            state[b + "mlp.linear2.bias"],
        )
        x = x + h * state[b + "skip_init2.skip"]
    x = F.layer_norm(x, (d,), state["norm.weight"], state["norm.bias"]).mean(dim=1)
    return torch.sigmoid(F.linear(x, state["head.weight"], state["head.bias"]))
