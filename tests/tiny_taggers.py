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


def build_wd14(directory: Path, *, size: int = 64, seed: int = 0, tags: list[tuple[str, int]] | None = None) -> Path:
    """A folder with a WD14-v3-format ``model.onnx`` and ``selected_tags.csv``: flatten, dense, sigmoid."""
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
    nodes = [
        helper.make_node("Sub", ["input", "centre"], ["centred"]),
        helper.make_node("Flatten", ["centred"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-wd14",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(tags)])],
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
